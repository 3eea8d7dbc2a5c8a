"""Bring your own student: the LR-ASPP MobileNetV3-Large student is torchvision's model (names, shapes, count;
its checkpoint's ONNX export is checked in test_export.py), and an installed package's student is found by its
entry point (a broken one is skipped)."""
import json
import logging
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ams.models import architectures, build_student, installed_students

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "torchvision_lraspp_mobilenet_v3_large_21.json"
SMALL = {"num_classes": 2, "width_mult": 0.25, "inter_channels": 16, "input_height": 36, "input_width": 64}


def test_lraspp_has_torchvision_parameter_names_and_shapes_so_its_checkpoints_load():
    reference = json.loads(FIXTURE.read_text())     # recorded from torchvision's own lraspp_mobilenet_v3_large
    model = build_student("lraspp_mnv3", {"num_classes": 21})
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == reference["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == reference["parameters"] == 3_221_538
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, 21, 64, 96) and torch.isfinite(out).all()
    saved = {k: torch.rand(v) if v else torch.tensor(7) for k, v in reference["state_dict"].items()}
    model.load_state_dict(saved, strict=True)      # a state_dict of torchvision's names loads as it is
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())


def _install(site: Path, name: str, entry_points: str, module: str) -> None:
    """A package as pip leaves it: the module, and a dist-info with its entry points."""
    (site / f"{name}.py").write_text(textwrap.dedent(module))
    info = site / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def test_an_installed_packages_student_is_found_by_its_entry_point_and_a_broken_one_is_skipped(
        tmp_path, monkeypatch, caplog):
    _install(tmp_path, "acme_students", """
        [ams.students]
        acme_tiny = acme_students:TINY
        acme_broken = acme_students:MISSING
        acme_wrong = acme_students:NOT_A_PAIR
        deeplabv3_mnv2 = acme_students:TINY
        """, """
        from dataclasses import dataclass
        import torch.nn as nn

        @dataclass(frozen=True)
        class TinyConfig:
            num_classes: int = 2
            input_height: int = 8
            input_width: int = 8

        class Tiny(nn.Module):
            def __init__(self, config):
                super().__init__()
                self.config = config
                self.head = nn.Conv2d(3, config.num_classes, 1)

            def forward(self, x):
                return self.head(x)

        TINY = (TinyConfig, Tiny)
        NOT_A_PAIR = Tiny
        """)
    installed_students.cache_clear()
    try:
        with monkeypatch.context() as patch:
            patch.syspath_prepend(str(tmp_path))
            with caplog.at_level(logging.WARNING, logger="ams.models"):
                students = architectures()
            assert "acme_tiny" in students and {"acme_broken", "acme_wrong"}.isdisjoint(students)
            assert students["deeplabv3_mnv2"][1].__module__ == "ams.models.deeplab_mnv2"   # a built-in's name stays
            assert {"acme_broken", "acme_wrong", "deeplabv3_mnv2"} <= {r.args[0] for r in caplog.records}
            model = build_student("acme_tiny", {"num_classes": 3})
            assert type(model).__module__ == "acme_students" and model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)
            with pytest.raises(ValueError, match="unknown config fields"):
                build_student("acme_tiny", {"depth": 3})
        installed_students.cache_clear()
        assert "acme_tiny" not in architectures()        # gone with the package
    finally:
        installed_students.cache_clear()
        sys.modules.pop("acme_students", None)
