"""Teacher backends behind one interface: per-item errors, and the ONNX backend on an exported model."""
import cv2
import numpy as np
import pytest
import torch

from ams.config import ConfigError, load_config
from services.teacher.backends import TeacherInput, backend_from_config, make_backend
from services.teacher.config import TeacherConfig
from services.teacher.onnx_backend import OnnxSettings


def test_litert_backend_reports_bad_items_without_failing_the_batch():
    backend = make_backend("litert", "assets/teacher/selfie_segmentation_landscape.tflite")
    backend.load()
    assert backend.input_size == (144, 256) and backend.classes == ["background", "person"]
    good = TeacherInput(np.zeros((72, 128, 3), np.uint8), 0.0)
    bad = TeacherInput(np.zeros((72, 128), np.uint8), 0.0)
    results = backend.infer_batch([good, bad, good])
    assert results[0].class_map.shape == (72, 128) and isinstance(results[1], ValueError)
    assert results[2].probabilities.shape == (2, 72, 128)


# written out here, not taken from ams.tensors
IMAGENET = (torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None])


def _net(classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, classes, 1),
                               torch.nn.Upsample(scale_factor=2, mode="bilinear")).eval()


def _export(model: torch.nn.Module, path, shape=(1, 3, 32, 48), dynamic: bool = True) -> str:
    axes = {"x": {0: "n", 1 if shape[-1] == 3 else 2: "h", 2 if shape[-1] == 3 else 3: "w"}} if dynamic else None
    torch.onnx.export(model, (torch.rand(*shape),), str(path), dynamo=False, input_names=["x"], output_names=["scores"],
                      dynamic_axes=axes)
    return str(path)


def _reference(model: torch.nn.Module, rgb: np.ndarray) -> np.ndarray:
    """The PyTorch source's own pipeline: ImageNet normalisation, softmax; its (2×) output resized to the frame."""
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - IMAGENET[0]) / IMAGENET[1]
    with torch.no_grad():
        probs = model(x[None])[0].softmax(0).numpy()
    return np.stack([cv2.resize(c, rgb.shape[1::-1], interpolation=cv2.INTER_LINEAR) for c in probs])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_teacher_with_imagenet_normalisation_labels_like_its_pytorch_source(tmp_path):
    model = _net()
    path = _export(model, tmp_path / "teacher.onnx")
    frames = [np.random.default_rng(i).integers(0, 255, shape, dtype=np.uint8) for i, shape in
              enumerate([(16, 24, 3), (16, 24, 3), (20, 20, 3)])]   # two sizes: two batches
    backend = make_backend("onnx", path, onnx=OnnxSettings.parse("imagenet", "imagenet"), classes="bg,a,b")
    backend.load()
    assert backend.input_size == (0, 0) and backend.classes == ["bg", "a", "b"]
    for rgb, out in zip(frames, backend.infer_batch([TeacherInput(f, 0.0) for f in frames])):
        expected = _reference(model, rgb)
        np.testing.assert_allclose(out.probabilities, expected, atol=1e-4)
        assert (out.class_map == expected.argmax(0)).all()
    plain = make_backend("onnx", path, classes="bg,a,b")     # the same model told no normalisation is another teacher
    plain.load()
    assert not np.allclose(plain.infer_batch([TeacherInput(frames[0], 0.0)])[0].probabilities, _reference(model, frames[0]),
                           atol=1e-2)


class _NhwcBgr(torch.nn.Module):
    """A TensorFlow-style export of the same net: BGR NHWC in, NHWC probabilities out."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        rgb = x.flip(-1).permute(0, 3, 1, 2)
        return self.net(rgb).softmax(1).permute(0, 2, 3, 1)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_teacher_reads_bgr_nhwc_probabilities_of_a_fixed_size_and_a_class_file(tmp_path):
    model = _net()
    path = _export(_NhwcBgr(model).eval(), tmp_path / "tf.onnx", shape=(1, 32, 48, 3), dynamic=False)
    (tmp_path / "classes.txt").write_text("# the model's classes\nbackground\n\nperson\ncar\n")
    settings = OnnxSettings.parse("imagenet", "imagenet", channels="bgr", layout="nhwc", output="scores",
                                  output_kind="probabilities")
    backend = make_backend("onnx", path, onnx=settings, classes_file=str(tmp_path / "classes.txt"))
    backend.load()
    assert backend.input_size == (32, 48) and backend.classes == ["background", "person", "car"]
    rgb = np.random.default_rng(3).integers(0, 255, (32, 48, 3), dtype=np.uint8)
    out = backend.infer_batch([TeacherInput(rgb, 0.0)])[0]
    assert out.probabilities.shape == (3, 32, 48)          # the model's (64, 96) output, resized to the frame
    np.testing.assert_allclose(out.probabilities, _reference(model, rgb), atol=1e-4)
    bad = make_backend("onnx", path, onnx=settings, classes="background,person")
    with pytest.raises(ValueError, match="3 channels.*2 classes"):
        bad.load()
    with pytest.raises(ValueError, match="no output 'probs'"):
        make_backend("onnx", path, onnx=OnnxSettings.parse(layout="nhwc", output="probs")).load()


def test_onnx_settings_come_from_the_environment_and_bad_ones_stop_the_start(tmp_path):
    env = {"AMS_TEACHER_BACKEND": "onnx", "AMS_TEACHER_INSECURE": "true", "AMS_TEACHER_ONNX_MEAN": "imagenet",
           "AMS_TEACHER_ONNX_STD": "0.5,0.5,0.5", "AMS_TEACHER_ONNX_LAYOUT": "NHWC", "AMS_TEACHER_CLASSES": "a,b"}
    backend = backend_from_config(load_config(TeacherConfig, "AMS_TEACHER_", [], env=env))
    assert backend.settings.mean == (0.485, 0.456, 0.406) and backend.settings.std == (0.5, 0.5, 0.5)
    assert backend.settings.layout == "nhwc" and backend.classes == ["a", "b"]
    for change, message in (({"AMS_TEACHER_ONNX_STD": "1,0,1"}, "std"), ({"AMS_TEACHER_ONNX_MEAN": "0.5"}, "mean"),
                            ({"AMS_TEACHER_ONNX_LAYOUT": "chw"}, "layout"),
                            ({"AMS_TEACHER_CLASSES_FILE": "classes.txt"}, "a list or as a file, not both"),
                            ({"AMS_TEACHER_CLASSES": "", "AMS_TEACHER_CLASSES_FILE": str(tmp_path / "no.txt")}, "no.txt")):
        with pytest.raises(ConfigError, match=message):
            load_config(TeacherConfig, "AMS_TEACHER_", [], env={**env, **change})


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown teacher backend"):
        make_backend("magic")
