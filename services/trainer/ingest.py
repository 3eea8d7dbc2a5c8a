"""Uplink ingest (Algorithm 1 lines 5-9): an uploaded clip decoded at the student's input size, labelled by
the teacher a chunk at a time, buffered, and the session's phase scheduled. The servicer's UploadClip and
the evaluation harness both run clips through here."""
from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

import cv2
import numpy as np

from ams import errors
from ams.video import decode_clip
from services.trainer import metrics, quotas, serde
from services.trainer.config import TrainerConfig
from services.trainer.events import Event
from services.trainer.quotas import TokenBuckets
from services.trainer.redis_client import StoreFull

if TYPE_CHECKING:
    from services.trainer.session import Session
    from services.trainer.teacher_client import LocalTeacher, TeacherClient

log = logging.getLogger(__name__)
INGEST_CHUNK = 32                           # frames of a clip labelled and buffered at a time


class Publisher(Protocol):
    """Where ingest's events for the device go: the servicer's `Downlink`, or the harness's list."""

    def publish(self, sid: str, event: Event) -> None: ...


class Ingest:
    """Uploads of every session: checks before any decoding, then decode → label → buffer off the loop."""

    def __init__(self, cfg: TrainerConfig, teacher: TeacherClient | LocalTeacher, downlink: Publisher, pool: Executor,
                 run_redis: Callable[..., Awaitable], frame_keys: Callable[[str], list[str]],
                 schedule: Callable[[Session], None]):
        self.cfg, self.teacher, self.downlink, self.pool = cfg, teacher, downlink, pool
        self.run_redis, self.frame_keys, self.schedule = run_redis, frame_keys, schedule
        self.upload_budget = TokenBuckets(cfg.max_upload_fps, cfg.max_clip_frames, "device uploads frames too fast")

    async def _off_loop(self, fn, *args):
        """`fn(*args)` (decoding, resizing, PNG-encoding and buffering a clip) on the ingest threads."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))

    async def upload(self, session: Session, clip_seq: int, codec: str, data: bytes,
                     timestamps: list[float]) -> tuple[int, int]:
        """Decode, label and buffer one clip; schedule a training phase. Returns (accepted, buffered).
        Refused before any decoding: timestamps that do not follow the session's (OUT_OF_RANGE), a
        second upload of the session while one is in flight, or frames beyond the device's upload
        budget (RESOURCE_EXHAUSTED)."""
        if codec.lower() != "h264":
            raise errors.InvalidArgument(f"unsupported clip codec {codec!r} (want h264)")
        if clip_seq < 1:
            raise errors.InvalidArgument("clip_seq starts at 1")
        if not timestamps or len(timestamps) > self.cfg.max_clip_frames:
            raise errors.InvalidArgument(f"a clip needs 1..{self.cfg.max_clip_frames} timestamps, got {len(timestamps)}")
        if clip_seq <= session.last_clip_seq:  # re-delivery after a retry: already buffered
            return 0, len(await self.run_redis(self.frame_keys, session.sid))
        try:
            check_timestamps(timestamps, session.latest_ts)
        except errors.OutOfRange as exc:
            quotas.refused("timestamps", session.device_id, str(exc))
            raise
        if session.uploading:
            quotas.refused("upload_in_flight", session.device_id, "an upload already in flight")
            raise errors.ResourceExhausted("this session has an upload in flight: one at a time")
        try:
            self.upload_budget.acquire(session.device_id, len(timestamps))
        except errors.ResourceExhausted as exc:
            quotas.refused("upload_rate", session.device_id, str(exc))
            raise
        session.uploading = True
        try:
            return await self._upload(session, clip_seq, data, timestamps)
        finally:
            session.uploading = False

    async def _upload(self, session: Session, clip_seq: int, data: bytes, timestamps: list[float]) -> tuple[int, int]:
        """Decode the clip, then label and buffer it INGEST_CHUNK frames at a time: what one upload
        holds is its decoded frames and one chunk's labels, never the whole clip's probabilities."""
        metrics.UPLOAD_BYTES.inc(len(data))
        frames: list = await self._off_loop(self._decode, session, data, len(timestamps))
        metrics.FRAMES_RECEIVED.inc(len(frames))
        before, accepted, buffered, labelling_s = session.control(), 0, 0, 0.0
        newest: tuple[float, Any] | None = None    # the clip's newest labelled frame: (capture time, class map)
        for start in range(0, len(frames), INGEST_CHUNK):
            part, times = frames[start:start + INGEST_CHUNK], timestamps[start:start + INGEST_CHUNK]
            frames[start:start + INGEST_CHUNK] = [None] * len(part)        # released as soon as buffered
            started = time.perf_counter()
            labelled = await self.teacher.label(part, times)
            labelling_s += time.perf_counter() - started
            keep = [i for i, item in enumerate(labelled) if item is not None]
            if not keep:
                continue
            pairs = [item for item in labelled if item is not None]
            last = max(range(len(keep)), key=lambda i: times[keep[i]])
            if newest is None or times[keep[last]] > newest[0]:
                newest = (times[keep[last]], pairs[last][0])
            try:
                buffered = await self._off_loop(session.ingest_part, [times[i] for i in keep], [part[i] for i in keep],
                                              [pair[0] for pair in pairs], [pair[1] for pair in pairs])
            except StoreFull:
                metrics.QUOTA_REFUSALS.labels("store_full").inc()
                log.error("session %s: clip %d refused, Redis is at its maxmemory", session.sid, clip_seq)
                raise
            accepted += len(keep)
        metrics.TEACHER_SECONDS.observe(labelling_s)
        if not accepted:
            raise errors.InvalidArgument("the teacher could not label any frame of this clip")
        await self._off_loop(session.end_clip, clip_seq, timestamps)
        metrics.BUFFERED_FRAMES.observe(buffered)
        if session.control() != before:
            self.downlink.publish(session.sid, Event("control", session.trained_clip_seq, control=session.control()))
        if newest is not None and session.accepts_hints and session.wants_hint():
            hint = await self._off_loop(serde.hint_bytes, clip_seq, *newest)
            self.downlink.publish(session.sid, Event("hint", session.trained_clip_seq, hint=hint))
        session.upload_times.setdefault(clip_seq, time.monotonic())
        self.schedule(session)
        return accepted, buffered

    def _decode(self, session: Session, data: bytes, count: int) -> list:
        """Decode a clip, bringing each frame to the student's input size as it is decoded: the
        teacher labels, the buffer keeps and the phase trains on what the student sees, and no more
        than one clip at that size is ever held. A frame larger than `max_clip_scale` × the student's
        input, or more frames than timestamps, stops the decoder at once (INVALID_ARGUMENT)."""
        size = session.input_size()
        if size is None:
            return decode_clip(data, count)
        max_pixels = int(self.cfg.max_clip_scale * size[0] * size[1])
        return decode_clip(data, count, max_pixels=max_pixels, transform=lambda f: resize_frame(f, size))

def check_timestamps(timestamps: list[float], after: float) -> None:
    """A clip's capture timestamps: finite video seconds ≥ 0, strictly increasing, and all after
    `after` (the newest timestamp of the session's earlier clips): OUT_OF_RANGE otherwise, so a
    device cannot stack frames on one instant or rewind its clock to keep frames in its buffer."""
    if not all(math.isfinite(t) and t >= 0 for t in timestamps):
        raise errors.InvalidArgument("timestamps must be finite, non-negative video seconds")
    if any(b <= a for a, b in zip(timestamps, timestamps[1:])):
        raise errors.OutOfRange("a clip's timestamps must strictly increase")
    if timestamps and timestamps[0] <= after:
        raise errors.OutOfRange(f"clip starts at {timestamps[0]:.3f} s, not after the session's last frame at {after:.3f} s")


def resize_frame(frame: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A frame brought to the student's (H, W), area-averaged (a no-op at that size)."""
    h, w = size_hw
    return frame if frame.shape[:2] == (h, w) else cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)


def resize_pair(frame: np.ndarray, label: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A frame (area-averaged) and its label map (nearest class) brought to the student's (H, W)."""
    h, w = size_hw
    if label.shape[:2] != (h, w):
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return resize_frame(frame, size_hw), label
