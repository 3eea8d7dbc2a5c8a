"""Student definitions, the model registry and service configuration."""
import pytest
import torch

from ams.config import ConfigError, load_config
from ams.device import resolve_device
from ams.models import build_student
from services.trainer.config import TrainerConfig


def test_deeplab_mnv2_has_about_2_1m_parameters_at_19_classes():
    model = build_student("deeplabv3_mnv2", {"num_classes": 19})
    n = sum(p.numel() for p in model.parameters())
    assert 2.0e6 < n < 2.2e6


def test_student_output_shape():
    model = build_student("deeplabv3_mnv2", {"num_classes": 3, "width_mult": 0.25, "aspp_channels": 16}).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 40, 56)).shape == (2, 3, 40, 56)


def test_unknown_architecture_or_field_is_refused():
    with pytest.raises(ValueError, match="unknown student architecture"):
        build_student("resnet9000", {})
    with pytest.raises(ValueError, match="unknown config fields"):
        build_student("deeplabv3_mnv2", {"depth": 3})


def test_config_from_env_and_flags():
    cfg = load_config(TrainerConfig, "AMS_", ["--k-iters", "7"],
                      env={"AMS_INSECURE": "true", "AMS_GAMMA": "0.1", "AMS_TRAINER_PORT": "1234"})
    assert (cfg.gamma, cfg.port, cfg.k_iters) == (0.1, 1234, 7)


def test_invalid_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="AMS_GAMMA"):
        load_config(TrainerConfig, "AMS_", [], env={"AMS_INSECURE": "true", "AMS_GAMMA": "2"})
    with pytest.raises(ConfigError, match="not a valid"):
        load_config(TrainerConfig, "AMS_", [], env={"AMS_INSECURE": "true", "AMS_K_ITERS": "many"})


def test_device_setting_and_checkpoint_cadence_are_validated():
    cfg = load_config(TrainerConfig, "AMS_", [], env={"AMS_INSECURE": "true", "AMS_DEVICE": "cpu", "AMS_TRAIN_WORKERS": "2"})
    assert resolve_device(cfg.device) == torch.device("cpu") and cfg.train_workers == 2
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="AMS_DEVICE"):
        load_config(TrainerConfig, "AMS_", [], env={"AMS_INSECURE": "true", "AMS_DEVICE": "tpu"})
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA"):
            load_config(TrainerConfig, "AMS_", [], env={"AMS_INSECURE": "true", "AMS_DEVICE": "cuda"})
    with pytest.raises(ConfigError, match="AMS_CHECKPOINT_EVERY"):   # restore replays the kept chain
        load_config(TrainerConfig, "AMS_", [],
                    env={"AMS_INSECURE": "true", "AMS_CHECKPOINT_EVERY": "40", "AMS_UPDATES_KEPT": "32"})


def test_the_trainer_does_not_import_the_edge_client():
    import subprocess
    import sys
    code = ("import sys, services.trainer.service, services.trainer.__main__; "
            "leaked = sorted(m for m in sys.modules if m.split('.')[0] == 'edge_client'); assert not leaked, leaked")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_services_serve_tls_unless_plain_text_is_asked_for(tmp_path):
    with pytest.raises(ConfigError, match="AMS_TLS_CA is not set"):
        load_config(TrainerConfig, "AMS_", [], env={})
    with pytest.raises(ConfigError, match="no such file"):
        load_config(TrainerConfig, "AMS_", [], env={"AMS_TLS_CA": str(tmp_path / "ca.pem"),
                                                    "AMS_TLS_CERT": "x", "AMS_TLS_KEY": "y"})
    assert load_config(TrainerConfig, "AMS_", ["--insecure", "true"], env={}).insecure
