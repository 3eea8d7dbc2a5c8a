"""Sparse-update codec: round trip, idempotence, and refusal of corrupt or mis-based updates."""
import gzip

import numpy as np
import pytest
import torch

from ams.update_codec import (FLOAT16, INT4, INT8, UpdateRejected, apply_update, decode_snapshot, decode_update,
                              encode_snapshot, parse_codecs, pick_codec, sparse_update,
                              encode_update, flat_parameters, make_update, parameter_checksum, round_to_float16)
from edge_client.model_holder import ModelHolder
from ams.models import build_student, student_config_dict

TINY = {"num_classes": 2, "width_mult": 0.25, "aspp_channels": 16, "input_height": 32, "input_width": 48}


def _update(flat, base=3, new=4, frac=0.05, seed=0):
    rng = np.random.default_rng(seed)
    after = flat.copy()
    idx = np.sort(rng.choice(flat.size, int(frac * flat.size), replace=False))
    after[idx] += rng.normal(0, 0.1, idx.size).astype(np.float32)
    round_to_float16(after, idx)
    return after, make_update("s1", base, new, after, idx, phase=2, video_time_s=12.5)


def test_round_trip_reproduces_parameters_bit_exactly():
    flat = np.random.default_rng(1).normal(size=10_000).astype(np.float32)
    after, upd = _update(flat)
    msg = encode_update(upd)
    back = decode_update(type(msg).FromString(msg.SerializeToString()))
    assert back.base_version == 3 and back.new_version == 4 and back.phase == 2 and back.video_time_s == 12.5
    np.testing.assert_array_equal(back.indices, upd.indices)
    result = apply_update(flat, 3, back)
    assert parameter_checksum(result) == parameter_checksum(after)
    np.testing.assert_array_equal(result, after)


def test_wire_size_is_gamma_p_times_two_plus_compressed_mask():
    flat = np.zeros(200_000, dtype=np.float32)
    _, upd = _update(flat, frac=0.05)
    msg = encode_update(upd)
    assert len(msg.values_f16) == 2 * 10_000
    # a 5 % bitmask carries H(0.05) ≈ 0.29 bit per parameter; gzip gets within 2x of that
    assert len(msg.index_mask_gz) < 0.29 * 200_000 / 8 * 2
    assert len(gzip.decompress(msg.index_mask_gz)) == 200_000 // 8


def test_wrong_base_version_is_refused():
    flat = np.ones(1000, dtype=np.float32)
    _, upd = _update(flat, base=3)
    with pytest.raises(UpdateRejected, match="based on version 3"):
        apply_update(flat, 2, upd)


def test_corrupted_values_fail_the_checksum():
    flat = np.ones(1000, dtype=np.float32)
    _, upd = _update(flat, frac=0.1)
    msg = encode_update(upd)
    values = bytearray(msg.values_f16)
    values[5] ^= 0x40
    msg.values_f16 = bytes(values)
    with pytest.raises(UpdateRejected, match="checksum"):
        apply_update(flat, 3, decode_update(msg))


@pytest.mark.parametrize("field,value,match", [
    ("index_mask_gz", b"not gzip at all", "gzip"),
    ("values_f16", b"\x00\x01", "values"),
    ("params_sha256", b"short", "SHA-256"),
    ("num_params", 0, "parameter count"),
])
def test_malformed_messages_are_refused(field, value, match):
    _, upd = _update(np.ones(1000, dtype=np.float32))
    msg = encode_update(upd)
    setattr(msg, field, value)
    with pytest.raises(UpdateRejected, match=match):
        decode_update(msg)


def test_mask_of_wrong_length_is_refused():
    _, upd = _update(np.ones(1000, dtype=np.float32))
    msg = encode_update(upd)
    msg.num_params = 2000
    with pytest.raises(UpdateRejected, match="mask"):
        decode_update(msg)


def test_unrounded_values_cannot_be_sent():
    flat = np.full(100, 0.1, dtype=np.float32)   # 0.1 is not a float16 value
    with pytest.raises(ValueError, match="float16"):
        make_update("s", 0, 1, flat, np.arange(10))


def test_holder_applies_swaps_and_keeps_last_good_model():
    model = build_student("deeplabv3_mnv2", TINY)
    names = [n for n, _ in model.named_parameters()]
    holder = ModelHolder(encode_snapshot("s", 0, "deeplabv3_mnv2", student_config_dict(model), model.state_dict(), names))
    active_before = holder.active
    flat = flat_parameters(model)
    after, upd = _update(flat, base=0, new=1)
    assert holder.apply(upd) and holder.version == 1
    assert holder.active is not active_before                  # a new inference copy was published
    np.testing.assert_array_equal(flat_parameters(holder.canonical), after)
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():                                       # the published copy computes the updated model
        torch.testing.assert_close(holder.active(x), holder.canonical(x), atol=1e-4, rtol=1e-4)
    assert holder.apply(upd) and holder.version == 1            # re-delivery is harmless
    _, bad = _update(after, base=1, new=2, seed=5)
    msg = encode_update(bad)
    msg.values_f16 = bytes(len(msg.values_f16))                 # zeroed values: wrong checksum
    assert not holder.apply(decode_update(msg))
    assert holder.version == 1 and holder.updates_rejected == 1
    np.testing.assert_array_equal(flat_parameters(holder.canonical), after)
    x = np.zeros((32, 48, 3), dtype=np.uint8)
    assert holder.predict(x).shape == (32, 48)


def test_snapshot_round_trip():
    model = build_student("deeplabv3_mnv2", TINY)
    names = [n for n, _ in model.named_parameters()]
    msg = encode_snapshot("s", 7, "deeplabv3_mnv2", student_config_dict(model), model.state_dict(), names)
    arch, config, state = decode_snapshot(type(msg).FromString(msg.SerializeToString()))
    rebuilt = build_student(arch, config)
    rebuilt.load_state_dict(state)
    assert parameter_checksum(flat_parameters(rebuilt)) == msg.params_sha256
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


# --- negotiated codecs (issue 11) ---------------------------------------------------------------

def _trained(seed=0, n=20_000, frac=0.05):
    rng = np.random.default_rng(seed)
    held = rng.normal(0, 0.1, n).astype(np.float32)
    idx = np.sort(rng.choice(n, int(frac * n), replace=False))
    trained = held.copy()
    trained[idx] += rng.normal(0, 1e-3, idx.size).astype(np.float32)
    return held, trained, idx


@pytest.mark.parametrize("codec", [FLOAT16, INT8, INT4])
def test_every_codec_leaves_sender_and_receiver_bit_identical(codec):
    held, trained, idx = _trained()
    update, after = sparse_update("s", 3, 4, held, trained, idx, codec, phase=2, video_time_s=1.5)
    msg = encode_update(update)
    assert msg.codec == codec
    back = decode_update(type(msg).FromString(msg.SerializeToString()), held.size)
    assert back.codec == codec and np.array_equal(back.indices, idx)
    received = apply_update(held, 3, back)
    assert received.tobytes() == after.tobytes()                       # the very bits the trainer adopts
    untouched = np.setdiff1d(np.arange(held.size), idx)
    assert np.array_equal(after[untouched], held[untouched])           # nothing moves outside I_n
    error = np.linalg.norm(after[idx] - trained[idx]) / np.linalg.norm(trained[idx] - held[idx])
    assert error < {FLOAT16: 0.05, INT8: 0.02, INT4: 0.2}[codec]


def test_quantised_codecs_are_smaller_than_float16():
    held, trained, idx = _trained(n=200_000)
    size = {c: encode_update(sparse_update("s", 0, 1, held, trained, idx, c)[0]).ByteSize() for c in (FLOAT16, INT8, INT4)}
    assert size[INT4] < size[INT8] < size[FLOAT16]
    assert size[INT4] < 0.5 * size[FLOAT16]


def test_a_quantised_update_applied_to_another_base_fails_the_checksum():
    held, trained, idx = _trained()
    update, _ = sparse_update("s", 0, 1, held, trained, idx, INT4)
    other = held.copy()
    other[idx[0]] += 1e-3                      # a device whose copy drifted: the change lands elsewhere
    with pytest.raises(UpdateRejected, match="checksum"):
        apply_update(other, 0, update)


@pytest.mark.parametrize("corrupt,match", [
    (lambda m: setattr(m.delta, "q_ans", m.delta.q_ans[:-4] + bytes(4)), "corrupt quantised deltas"),
    (lambda m: setattr(m.delta, "q_ans", m.delta.q_ans[:200] + bytes([m.delta.q_ans[200] ^ 0x5A]) + m.delta.q_ans[201:]),
     "checksum"),                               # ANS has no redundancy: the SHA-256 catches it
    (lambda m: setattr(m.delta, "q_ans", m.delta.q_ans[:7]), "quantised deltas"),
    (lambda m: setattr(m.delta, "scales_f16", m.delta.scales_f16[:-2]), "quantised deltas"),
    (lambda m: setattr(m.delta, "bits", 8), "4-bit|8-bit"),
    (lambda m: setattr(m.delta, "block", 0), "block"),
    (lambda m: setattr(m, "index_ans", m.index_ans[:5]), "index set"),
    (lambda m: setattr(m, "num_params", m.num_params + 1), "parameters"),
    (lambda m: setattr(m, "codec", 42), "codec 42 is not one this edge decodes"),
])
def test_corrupt_quantised_updates_are_refused_with_a_clear_reason(corrupt, match):
    held, trained, idx = _trained()
    msg = encode_update(sparse_update("s", 0, 1, held, trained, idx, INT4)[0])
    corrupt(msg)
    with pytest.raises(UpdateRejected, match=match):
        apply_update(held, 0, decode_update(msg))


def test_the_receiver_checks_the_model_size_before_decoding():
    held, trained, idx = _trained()
    msg = encode_update(sparse_update("s", 0, 1, held, trained, idx, INT4)[0])
    with pytest.raises(UpdateRejected, match="model has 10"):
        decode_update(msg, num_params=10)


def test_a_gzip_bomb_mask_inflates_no_further_than_the_mask():
    msg = encode_update(_update(np.ones(1000, dtype=np.float32))[1])
    msg.index_mask_gz = gzip.compress(bytes(50_000_000))     # 50 MB of zeros in ~50 KB
    with pytest.raises(UpdateRejected, match="mask has 126 bytes"):
        decode_update(msg)


def test_an_update_from_before_codecs_decodes_as_float16():
    _, upd = _update(np.ones(1000, dtype=np.float32))
    msg = encode_update(upd)
    msg.ClearField("codec")                    # what a trainer before negotiation sent
    assert decode_update(msg).codec == FLOAT16


def test_negotiation_picks_the_trainers_first_codec_the_edge_decodes():
    assert pick_codec([INT4, INT8, FLOAT16], [FLOAT16, INT8, INT4]) == INT4
    assert pick_codec([INT4, INT8, FLOAT16], [INT8, 99]) == INT8            # unknown offers are ignored
    assert pick_codec([INT4, INT8, FLOAT16], []) == FLOAT16                 # an old edge
    assert pick_codec([INT4], []) is None and pick_codec([INT4], [INT8]) is None
    assert parse_codecs(" int4, float16 ") == [INT4, FLOAT16]
    with pytest.raises(ValueError, match="unknown update codec 'zip'"):
        parse_codecs("int4,zip")
