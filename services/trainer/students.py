"""Student admission at OpenSession: an installed checkpoint by name, or (when the operator allows it) a
device's own architecture and config within the operator's bounds; and the teacher's class count."""
from __future__ import annotations

import os

import torch

from ams import errors
from ams.models import build_student, student_config_dict
from ams.models.checkpoints import load_checkpoint
from services.trainer.config import TrainerConfig
from services.trainer.serde import StudentSpec


def build_model(cfg: TrainerConfig, spec: StudentSpec) -> tuple[str, dict, torch.nn.Module]:
    """(architecture, config, model) of the student a device asks for (blocking: loads or builds it).
    NOT_FOUND for a checkpoint this trainer does not have; INVALID_ARGUMENT for a spec that contradicts it."""
    config = spec.config or {}
    if spec.checkpoint:
        name = os.path.basename(spec.checkpoint)
        path = os.path.join(cfg.checkpoint_dir, name + ".pt")
        if not os.path.isfile(path):
            raise errors.NotFound(f"no pretrained student checkpoint {name!r} on this trainer")
        architecture, ckpt_config, model = load_checkpoint(path)
        if spec.architecture and spec.architecture != architecture:
            raise errors.InvalidArgument(f"checkpoint {name!r} is a {architecture}, not {spec.architecture}")
        if config and config != ckpt_config:
            raise errors.InvalidArgument(f"checkpoint {name!r} was trained with config {ckpt_config}")
        return architecture, ckpt_config, model
    check_custom_student(cfg, spec.architecture, config)
    torch.manual_seed(cfg.seed)
    model = build_student(spec.architecture, config)
    return spec.architecture, student_config_dict(model), model


def check_custom_student(cfg: TrainerConfig, architecture: str, config: dict) -> None:
    """A device's own student only when the operator allows it, and within the operator's limits.
    The model is first built on the `meta` device (shapes, no memory), so a client cannot make the
    trainer allocate a huge model; any config the student rejects is INVALID_ARGUMENT."""
    if not cfg.allow_custom_students:
        raise errors.PermissionDenied("this trainer serves only its installed checkpoints (StudentSpec.checkpoint)")
    try:
        with torch.device("meta"):
            probe = build_student(architecture, config)
    except (ValueError, TypeError, RuntimeError, ZeroDivisionError, OverflowError) as exc:
        raise errors.InvalidArgument(f"invalid student config: {exc}") from exc
    params = sum(p.numel() for p in probe.parameters())
    if params > cfg.max_student_params:
        raise errors.InvalidArgument(f"student has {params} parameters; this trainer allows {cfg.max_student_params}")
    shape = student_config_dict(probe)
    h, w = shape.get("input_height", 0), shape.get("input_width", 0)
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 and h * w <= cfg.max_student_pixels):
        raise errors.InvalidArgument(f"student input {h}×{w} is not within 1..{cfg.max_student_pixels} pixels")


def check_classes(teacher_classes: list[str] | None, config: dict) -> None:
    """A student must have an output for every class the teacher labels, and no more: a session whose
    counts differ is refused at once (FAILED_PRECONDITION, both counts), not by failing every phase."""
    student = config.get("num_classes")
    if teacher_classes and isinstance(student, int) and student != len(teacher_classes):
        raise errors.FailedPrecondition(
            f"the teacher labels {len(teacher_classes)} classes ({', '.join(teacher_classes)}); this student has "
            f"{student}: open the session with a student of {len(teacher_classes)} classes, or run the teacher it "
            "was made for")
