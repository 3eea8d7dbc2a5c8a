"""The evaluation loop: play a playlist through a scheme and score every frame once, as it arrives.

A scheme is the device side (what it predicts for each frame) plus whatever it does at the server;
`play` feeds it frames in capture order, asks for its prediction first and only then lets it see the
frame (sample, upload, train, update), so a prediction comes from a model trained only on earlier
frames. `InProcessTrainer` is the trainer's own code without the network: a real `Session` over a
real Redis store, the trainer's `Ingest` (clip codec, teacher backend, buffering), the update codec;
the device applies the very update and hint messages the service would stream.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import json
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ams.models.checkpoints import load_checkpoint
from ams.update_codec import decode_update
from ams.v1 import streaming_pb2
from ams.video import encode_clip
from edge_client.evaluation import Confusion, frame_miou
from edge_client.model_holder import ModelHolder
from ams.eval.playlists import Labels, Playlist
from ams.ops.procs import ROOT
from services.teacher.backends import TeacherBackend
from services.trainer.config import TrainerConfig
from services.trainer.events import Event
from services.trainer.ingest import Ingest
from services.trainer.serde import snapshot_bytes
from services.trainer.session import Session
from services.trainer.store import SessionStore
from services.trainer.teacher_client import LocalTeacher

DEVICE_ID = "eval-edge"     # the session's RNG is seeded by it: the services row uses the same id
# name -> (checkpoint, segmenter options, the same as ams-edge flags). The low-latency student runs its
# adaptive key frames with S_h inline ("adaptive"): under "adaptive_lls" (ams-edge's default) S_h runs on
# a background thread and which features a frame gets depends on CPU timing, so two runs of the same
# model sequence differ (1.1 mIoU points measured between the in-process and the services run).
STUDENTS = {
    "deeplabv3_mnv2": ("deeplabv3_mnv2_selfie", {}, []),
    "deeplabv3_mnv2_parts": ("deeplabv3_mnv2_parts", {}, []),   # five classes, for the parts teacher's playlists
    "lraspp_mnv3": ("lraspp_mnv3_selfie", {}, []),             # torchvision's LR-ASPP MobileNetV3 (not in make eval)
    "streamdeq": ("streamdeq_selfie", {"iters": 2, "solver": "unroll", "budget_ms": None, "cut_threshold": 0.15},
                  ["--deq-iters", "2", "--deq-solver", "unroll", "--deq-cut-threshold", "0.15"]),
    "lowlatency": ("lowlatency_selfie", {"scheme": "adaptive", "threshold": 0.02, "interval": 5},
                   ["--ll-scheme", "adaptive", "--ll-threshold", "0.02", "--ll-interval", "5"]),
}


def checkpoint_path(name: str) -> str:
    return os.path.join(ROOT, "assets/students", STUDENTS[name][0] + ".pt")


@functools.cache
def checkpoint_digest(name: str) -> str:
    """SHA-256 of a student's w0 checkpoint: a remade w0 invalidates the runs that started from the old one."""
    with open(checkpoint_path(name), "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_student(name: str) -> tuple[str, dict, torch.nn.Module]:
    """(architecture, config, model) of a student's pretrained w0, as the trainer serves it."""
    return load_checkpoint(checkpoint_path(name))


def student_size(name: str) -> tuple[int, int]:
    config = load_student(name)[1]
    return int(config["input_height"]), int(config["input_width"])


@dataclass
class Traffic:
    """What crossed the network, in bytes, and when the device's model changed (video seconds)."""

    uplink: int = 0
    downlink: int = 0
    updates: int = 0
    update_times: list[float] = field(default_factory=list)
    update_values: list[int] = field(default_factory=list)     # coordinates each update carried
    update_bytes: list[int] = field(default_factory=list)      # each update's ServerMessage
    update_index_bytes: list[int] = field(default_factory=list)   # its index set (gzip'd bitmask or ANS gaps)
    control: list[tuple[float, float, float]] = field(default_factory=list)   # (t, fps, T_update) after each clip


class _Events:
    """The downlink of an in-process session: what ingest publishes for the device (hints, control)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, sid: str, event: Event) -> None:
        self.events.append(event)


async def _call(fn, *args):
    return fn(*args)


class InProcessTrainer:
    """One device's AMS session, driven directly: upload a clip, run a phase, hand back the update.
    A clip goes through the trainer's own `Ingest` (checks, decode at the student's size, the teacher
    in chunks, buffering, φ/ASR/ATR, the label hint) with the teacher backend in this process; only
    the device's upload rate limit is lifted: the harness plays video faster than real time."""

    def __init__(self, store: SessionStore, teacher: TeacherBackend, cfg: TrainerConfig, student: str,
                 clip_bitrate: int = 0):
        architecture, config, model = load_student(student)
        self.sid, self.teacher, self.clip_bitrate = uuid.uuid4().hex, teacher, clip_bitrate
        self.session = Session(self.sid, DEVICE_ID, architecture, config, model, store, cfg,
                               codec=cfg.codec_preference()[0])   # an edge that decodes every codec
        store.create(self.sid, {**self.session.ingest_meta(), "config_json": json.dumps(config)}, model.state_dict(),
                     self.session.adam)
        self.store, self.clip_seq = store, 0
        self._loop = asyncio.new_event_loop()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="eval-ingest")
        self._downlink = _Events()
        self.ingest = Ingest(dataclasses.replace(cfg, max_upload_fps=math.inf), LocalTeacher(teacher), self._downlink,
                             self._pool, _call, store.frame_keys, schedule=lambda session: None)
        self.hint: streaming_pb2.LabelHint | None = None   # the last clip's label hint, when the trainer sent one

    def snapshot(self) -> streaming_pb2.ModelSnapshot:
        return streaming_pb2.ModelSnapshot.FromString(snapshot_bytes(self.session)[1])

    def upload(self, frames: list[np.ndarray], timestamps: list[float]) -> int:
        """Encode the clip as the edge does; the trainer's ingest decodes, labels and buffers it.
        Returns the bytes that crossed the uplink."""
        data = encode_clip(frames, bit_rate=self.clip_bitrate)
        self.clip_seq += 1
        self._downlink.events.clear()
        self._loop.run_until_complete(self.ingest.upload(self.session, self.clip_seq, "h264", data, list(timestamps)))
        self.hint = next((streaming_pb2.LabelHint.FromString(e.hint) for e in self._downlink.events
                          if e.kind == "hint" and e.hint), None)
        request = streaming_pb2.UploadClipRequest(session_id=self.sid, clip_seq=self.clip_seq)
        return len(data) + request.ByteSize() + 16   # clip + envelope (codec, timestamps, size: ≈ 16 bytes)

    def train(self) -> streaming_pb2.ServerMessage | None:
        """One phase; the update as the device receives it (None when there was nothing to train on)."""
        outcome = self.session.run_phase()
        if outcome is None:
            return None
        return streaming_pb2.ServerMessage(update=streaming_pb2.ModelUpdate.FromString(outcome.message),
                                          processed_clip_seq=outcome.seq_seen)

    def close(self) -> None:
        self.store.delete(self.sid)
        self._pool.shutdown()
        self._loop.close()


def apply(holder: ModelHolder, message: streaming_pb2.ServerMessage) -> None:
    if not holder.apply(decode_update(message.update, holder.flat.size)):
        raise RuntimeError("the device refused an update of the in-process trainer")


@dataclass
class RunResult:
    """One scheme on one playlist: scores of first passes (headline) and of repeated passes apart."""

    miou: float | None
    miou_seen: float | None
    frames_scored: int
    video_seconds: float
    series_t: list[float]
    series_miou: list[float]
    traffic: Traffic
    wall_seconds: float
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["traffic"] = dataclasses.asdict(self.traffic)
        return out


def play(playlist: Playlist, size_hw: tuple[int, int], labels: Labels, scheme) -> RunResult:
    """Feed the playlist to `scheme` frame by frame; score `scheme.predict(frame)` against the teacher
    BEFORE `scheme.observe(frame)` lets the frame reach sampling and training."""
    started = time.perf_counter()
    n = max(len(labels.classes), 2)
    conf = {False: Confusion(n), True: Confusion(n)}
    series_t, series_miou = [], []
    first_t = last_t = None
    for frame in playlist.frames(size_hw):
        first_t = frame.timestamp_s if first_t is None else first_t
        last_t = frame.timestamp_s
        scored = playlist.scored(frame)
        if scored or scheme.stateful:
            pred = scheme.predict(frame)
            if scored:
                label = labels.by_index[frame.index]
                conf[frame.repeat].add(pred, label)
                if not frame.repeat:
                    series_t.append(frame.timestamp_s)
                    series_miou.append(frame_miou(pred, label, n))
        scheme.observe(frame)
    scheme.finish()
    score = {k: (c.miou() if c.matrix.sum() else None) for k, c in conf.items()}
    return RunResult(score[False], score[True], len(series_t), (last_t or 0) - (first_t or 0), series_t, series_miou,
                     scheme.traffic, time.perf_counter() - started, scheme.extra())
