"""What the trainer pushes to a device's update stream (downlink.py), as the core hands it over."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.trainer import serde

if TYPE_CHECKING:
    from services.trainer.session import Control


@dataclass(frozen=True)
class Event:
    """Something to push to a device: an update, a snapshot, a control change or a label hint. Updates,
    snapshots and hints are held serialized (serde.py frames them into the ServerMessage)."""

    kind: str                                   # "update" | "control" | "snapshot" | "hint"
    processed_clip_seq: int
    update: bytes = b""                         # a serialized ModelUpdate from base_version to new_version
    base_version: int = 0
    new_version: int = 0
    control: Control | None = None
    snapshot: bytes = b""                       # a serialized ModelSnapshot (shared: never copied per stream)
    hint: bytes = b""                           # a serialized LabelHint

    @classmethod
    def of_update(cls, processed_clip_seq: int, raw: bytes) -> Event:
        base, new = serde.update_versions(raw)
        return cls("update", processed_clip_seq, update=raw, base_version=base, new_version=new)
