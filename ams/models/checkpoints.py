"""Pretrained student checkpoints (`assets/students/NAME.pt`): the one loader the trainer, the edge and the
evaluation share. A checkpoint is a dict with `architecture`, `config` and `state_dict` (`make pretrain`)."""
from __future__ import annotations

import os

import torch

from ams.models import build_student, student_config_dict

# the repository's checkpoints; a deployment points AMS_STUDENT_DIR (trainer: AMS_CHECKPOINT_DIR) elsewhere
DEFAULT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "assets", "students")


def checkpoint_file(name: str, directory: str | None = None) -> str:
    """The path of checkpoint `name` (a bare name: no directories) in `directory`."""
    return os.path.join(directory or os.environ.get("AMS_STUDENT_DIR") or DEFAULT_DIR, os.path.basename(name) + ".pt")


def load_checkpoint(path: str) -> tuple[str, dict, torch.nn.Module]:
    """(architecture, config, model) of a checkpoint file; ValueError when it is not one."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not {"architecture", "config", "state_dict"} <= ckpt.keys():
        raise ValueError(f"{path} is not a student checkpoint (architecture, config, state_dict)")
    model = build_student(ckpt["architecture"], ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return ckpt["architecture"], student_config_dict(model), model
