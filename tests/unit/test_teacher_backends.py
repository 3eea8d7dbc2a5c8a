"""Teacher backends behind one interface: per-item errors, and the ONNX backend on an exported model."""
import numpy as np
import pytest
import torch

from services.teacher.backends import TeacherInput, make_backend


def test_litert_backend_reports_bad_items_without_failing_the_batch():
    backend = make_backend("litert", "assets/teacher/selfie_segmentation_landscape.tflite")
    backend.load()
    assert backend.input_size == (144, 256) and backend.classes == ["background", "person"]
    good = TeacherInput(np.zeros((72, 128, 3), np.uint8), 0.0)
    bad = TeacherInput(np.zeros((72, 128), np.uint8), 0.0)
    results = backend.infer_batch([good, bad, good])
    assert results[0].class_map.shape == (72, 128) and isinstance(results[1], ValueError)
    assert results[2].probabilities.shape == (2, 72, 128)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_backend_matches_the_exported_model(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)).eval()
    path = str(tmp_path / "teacher.onnx")
    torch.onnx.export(model, (torch.rand(1, 3, 32, 48),), path, dynamo=False, input_names=["x"])
    backend = make_backend("onnx", path, classes="a,b,c")
    backend.load()
    assert backend.input_size == (32, 48) and backend.classes == ["a", "b", "c"]
    rgb = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    out = backend.infer_batch([TeacherInput(rgb, 0.0)])[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0].argmax(0).numpy()
    assert (out.class_map == expected).mean() > 0.99
    np.testing.assert_allclose(out.probabilities.sum(0), 1.0, atol=1e-5)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown teacher backend"):
        make_backend("magic")
