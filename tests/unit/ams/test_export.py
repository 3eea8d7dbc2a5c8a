"""A student exported for other runtimes gives the same outputs there: ONNX under onnxruntime and
TorchScript against PyTorch, on real frames, for every installed student."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from ams.models import batch_tensor
from ams.models.checkpoints import checkpoint_file, load_checkpoint
from ams.models.export import export_student
from edge_client.video_source import VideoSource


@pytest.mark.parametrize("name", ["deeplabv3_mnv2_selfie", "streamdeq_selfie", "lowlatency_selfie", "lraspp_mnv3_selfie"])
def test_an_exported_student_matches_pytorch_in_onnxruntime_and_torchscript(name, tmp_path):
    torch.set_num_threads(1)
    architecture, config, model = load_checkpoint(checkpoint_file(name))
    size = (config["input_height"], config["input_width"])
    frames = [f.rgb for f in VideoSource(["data/videos/carphone_pristine.mp4"], size) if f.index in (0, 60)]
    card = export_student(model, architecture, config, 7, str(tmp_path), session_id="s-1")
    assert json.loads((tmp_path / "student.json").read_text()) == card
    assert card["version"] == 7 and card["input"]["shape"] == [None, 3, *size] and card["architecture"] == architecture
    x = batch_tensor(frames)                                      # uint8 / 255, as the card says
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    session = ort.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": x.numpy()})[0]
    assert got.shape == expected.shape == (2, config.get("num_classes", 2), *size)
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)
    assert (got.argmax(1) == expected.argmax(1)).mean() > 0.999
    scripted = torch.jit.load(str(tmp_path / "student.ts"))
    with torch.no_grad():
        np.testing.assert_allclose(scripted(x).numpy(), expected, atol=1e-4, rtol=0)
