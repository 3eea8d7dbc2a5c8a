"""bench-codec's summary: the issue's row schema, paired mIoU differences and Kbps at T_update 10 s."""
from benchmarks.codec import VARIANTS, readme_table, runs, summarise

ROW_KEYS = {"codec", "bytes_per_update", "kbps_at_10s", "index_bits_per_coord", "floor_bits_per_coord", "miou",
            "miou_delta_vs_f16", "uplink_kbps"}


def _record(playlist, seed, miou, sizes, index, k=105_408, uplink=100_000, seconds=80.0):
    return {"spec": {"playlist": playlist, "student": "deeplabv3_mnv2", "trainer": [["seed", seed]]},
            "result": {"miou": miou, "video_seconds": seconds,
                       "traffic": {"update_bytes": sizes, "update_index_bytes": index, "update_values": [k] * len(sizes),
                                   "uplink": uplink, "downlink": sum(sizes), "updates": len(sizes)}}}


def test_rows_pair_each_run_with_its_float16_twin():
    f16 = [_record("a", 0, 0.60, [280_000, 290_000], [70_000, 72_000]), _record("b", 0, 0.70, [285_000], [71_000])]
    int4 = [_record("a", 0, 0.61, [120_000, 118_000], [66_000, 65_000]), _record("b", 0, 0.68, [119_000], [65_500])]
    row = summarise("int4", int4, f16)
    assert ROW_KEYS <= set(row)
    assert row["bytes_per_update"] == 119_000 and row["kbps_at_10s"] == 95.2      # 119 000 B · 8 / 10 s
    assert row["miou_delta_vs_f16"] == -0.5 and row["miou_delta_per_run"] == [1.0, -2.0]   # points, paired
    assert row["miou_delta_by_playlist"] == {"a": 1.0, "b": -2.0}
    assert row["index_bits_per_coord"] == round(8 * (66_000 + 65_000 + 65_500) / (3 * 105_408), 3)
    assert 5.7 < row["floor_bits_per_coord"] < 5.8                               # γ = 5 % of 2.11 M
    assert row["uplink_kbps"] == 10.0
    result = {"default": "int4", "playlists": ["a", "b"], "seeds": [0], "rows": [summarise("float16", f16, f16), row]}
    table = readme_table(result)
    assert "| int4 (default) | 119,000 | 95.2 |" in table and "| -0.50 ± 2.12 | +1.00 | -2.00 | 10.0 |" in table


def test_every_variant_runs_ams_at_the_papers_settings_with_its_own_codec():
    for name, settings in VARIANTS.items():
        planned = runs(name, ("real_people",), (0, 1))
        assert [r.scheme for r in planned] == ["ams", "ams"]
        trainer = [dict(r.trainer) for r in planned]
        assert all(t["update_codecs"] == settings["update_codecs"] for t in trainer)
        assert [t["seed"] for t in trainer] == [0, 1]
