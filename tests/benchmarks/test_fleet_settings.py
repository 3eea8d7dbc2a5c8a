"""bench-fleet's GPU settings and the student it serves at another size; bench-train-step's A/B runs."""
import json

import torch

from benchmarks import fleet, train_step
from ams.device import native_bf16
from ams.models.checkpoints import load_checkpoint


def test_the_fleet_student_at_the_paper_s_size_is_the_shipped_weights_with_that_input(tmp_path):
    config, directory = fleet.student_at("256x512", str(tmp_path / "students"))
    assert (config["input_height"], config["input_width"]) == (256, 512)
    _, copied_config, copied = load_checkpoint(f"{directory}/{fleet.CHECKPOINT}.pt")
    _, shipped_config, shipped = load_checkpoint(f"assets/students/{fleet.CHECKPOINT}.pt")
    assert copied_config == {**shipped_config, "input_height": 256, "input_width": 512}
    assert all(torch.equal(a, b) for a, b in zip(copied.state_dict().values(), shipped.state_dict().values()))
    assert fleet.student_at(None, str(tmp_path / "unused")) == (shipped_config, "assets/students")
    assert fleet.CUDA_ENV["AMS_DEVICE"] == "cuda" and int(fleet.CUDA_ENV["AMS_BATCH_SESSIONS"]) > 1


def test_the_train_step_bench_times_every_variant(tmp_path):
    out = tmp_path / "train_step.json"
    assert train_step.main(["--sizes", "36x64", "--rounds", "1", "--reps", "1", "--batched", "2",
                            "--out", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    bf16 = {"module, bf16 autocast", "graph, bf16 autocast (AMS_TRAIN_PRECISION=bf16)", "batched ×2, bf16"}
    assert set(result["per_session_s"]) == {"module", "graph: BN folded", "+ 1×1 as GEMM", "+ space-to-batch",
                                            "batched ×2"} | (bf16 if native_bf16(torch.device("cpu")) else set())
    assert all(v["min"] > 0 for v in result["per_session_s"].values())
