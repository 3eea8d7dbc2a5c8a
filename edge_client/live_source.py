"""Live sources: network streams (RTSP, RTMP, HTTP(S), UDP, SRT) and V4L2 cameras, read with PyAV's FFmpeg.

A reader thread decodes the stream as fast as it arrives and keeps only the newest frame: when the
segmenter is behind, older frames are dropped (counted), never queued, so the device always works
on what the camera sees now. Timestamps are capture times on the device's clock: the stream's own
presentation times, anchored to the wall clock when the connection delivers its first frame (the
wall clock alone where a stream has none), strictly increasing across reconnects. When the stream
drops (the server restarts, the camera is unplugged, the network fails) the reader reconnects with
exponential backoff and jitter; each gap is counted and logged, and the runtime meanwhile waits for
the next frame without busy-looping. The caller stops it with `close()` (or the `stop` event it was given).
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator

import av
import cv2
import numpy as np

from edge_client import metrics
from edge_client.video_source import Frame

log = logging.getLogger(__name__)

STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "http://", "https://", "udp://", "tcp://", "srt://")
REANCHOR_S = 2.0          # a stream clock drifting this far from the wall clock is re-anchored (a pts jump)


def is_live(spec: str) -> bool:
    """A network stream URL or a V4L2 device node (/dev/videoN)."""
    return spec.startswith(STREAM_PREFIXES) or spec.startswith("/dev/video")


def default_options(url: str) -> tuple[str | None, dict[str, str]]:
    """(FFmpeg input format, input options) for a live source; the caller's options override these."""
    if url.startswith("/dev/video"):
        return "v4l2", {}
    if url.startswith(("rtsp://", "rtsps://")):
        return None, {"rtsp_transport": "tcp"}   # interleaved RTP: through NAT and firewalls, no lost packets
    return None, {}


@dataclass
class Backoff:
    """Reconnect delays: first_s, doubling up to max_s, each with up to 50 % jitter."""

    first_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int) -> float:
        return min(self.first_s * 2 ** attempt, self.max_s) * (1 + 0.5 * random.random())


@dataclass
class StreamStats:
    connects: int = 0
    failed_connects: int = 0
    frames_decoded: int = 0
    frames_dropped: int = 0                  # decoded, then replaced by a newer frame before the runtime took it
    gaps_s: deque = field(default_factory=lambda: deque(maxlen=1000))   # the last 1000 outages, in seconds
    last_error: str = ""

    def as_dict(self) -> dict:
        return {"connects": self.connects, "reconnects": max(self.connects - 1, 0),
                "failed_connects": self.failed_connects, "frames_decoded": self.frames_decoded,
                "frames_dropped": self.frames_dropped, "gaps_s": [round(g, 3) for g in self.gaps_s],
                "last_error": self.last_error}


class _Newest:
    """A one-frame slot: put replaces what the reader has not taken yet (a dropped frame)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item: tuple[float, av.VideoFrame] | None = None

    def put(self, item: tuple[float, av.VideoFrame]) -> bool:
        """True when an untaken frame was replaced."""
        with self._cond:
            dropped = self._item is not None
            self._item = item
            self._cond.notify_all()
            return dropped

    def take(self, timeout_s: float) -> tuple[float, av.VideoFrame] | None:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
            return item


class StreamSource:
    """Frames of a live source at the model's input size; iterate once. `paced`: frames arrive at capture
    pace, so the runtime neither sleeps for them nor drops them by its own clock."""

    paced = True

    def __init__(self, url: str, size_hw: tuple[int, int], options: dict[str, str] | None = None,
                 max_seconds: float | None = None, backoff: Backoff | None = None,
                 open_timeout_s: float = 10.0, read_timeout_s: float = 10.0, stop: threading.Event | None = None,
                 clock=time.monotonic):
        fmt, defaults = default_options(url)
        self.url, self.size_hw, self.format, self.options = url, size_hw, fmt, {**defaults, **(options or {})}
        self.max_seconds, self.backoff = max_seconds, backoff or Backoff()
        self.timeouts = (open_timeout_s, read_timeout_s)
        self.stop = stop or threading.Event()
        self.stats = StreamStats()
        self._clock = clock
        self._slot = _Newest()
        self._reader: threading.Thread | None = None
        self._t0 = 0.0
        self._last_ts = -1.0
        self._last_frame_at: float | None = None

    def close(self) -> None:
        self.stop.set()
        if self._reader is not None:
            self._reader.join(timeout=sum(self.timeouts) + 1)

    def __iter__(self) -> Iterator[Frame]:
        self._t0 = self._clock()
        self._reader = threading.Thread(target=self._read, name="ams-source", daemon=True)
        self._reader.start()
        index = 0
        try:
            while not self.stop.is_set():
                item = self._slot.take(0.25)
                if item is None:
                    continue
                ts, frame = item
                if self.max_seconds is not None and ts >= self.max_seconds:
                    return
                yield Frame(index, ts, self._convert(frame), self.url)
                index += 1
        finally:
            self.close()

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        h, w = self.size_hw
        if (frame.height, frame.width) == (h, w):
            return frame.to_ndarray(format="rgb24")
        # FFmpeg's scaler shrinks with area averaging in one pass, colour conversion included
        rgb = frame.to_ndarray(format="rgb24", width=w, height=h, interpolation="AREA")
        return rgb if rgb.shape[:2] == (h, w) else cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)

    # --- the reader thread ------------------------------------------------------------------------
    def _read(self) -> None:
        attempt = 0
        while not self.stop.is_set():
            try:
                container = av.open(self.url, format=self.format, options=self.options, timeout=self.timeouts)
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                self.stats.failed_connects += 1
                self.stats.last_error = str(exc)
                delay = self.backoff.delay(attempt)
                log.warning("source %s: cannot open (%s); retrying in %.1f s", self.url, exc, delay)
                attempt += 1
                self.stop.wait(delay)
                continue
            try:
                got = self._decode(container)
            finally:
                container.close()
            if got:
                attempt = 0
            if not self.stop.is_set():
                delay = self.backoff.delay(attempt)
                log.warning("source %s: stream lost (%s); reconnecting in %.1f s", self.url,
                            self.stats.last_error or "end of stream", delay)
                attempt += 1
                self.stop.wait(delay)

    def _decode(self, container) -> bool:
        """Decode until the stream ends or fails; True when it delivered a frame."""
        connected, anchor = False, None    # anchor: (stream time, device time) the stream's clock is read from
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if self.stop.is_set():
                    return True
                now = self._clock() - self._t0
                if not connected:
                    connected = True
                    self.stats.connects += 1
                    self.stats.last_error = ""
                    if self._last_frame_at is not None:   # a reconnect: the gap since the last frame
                        gap = self._clock() - self._last_frame_at
                        self.stats.gaps_s.append(gap)
                        metrics.SOURCE_RECONNECTS.inc()
                        log.info("source %s: back after a %.1f s gap", self.url, gap)
                ts = now
                if frame.time is not None:
                    if anchor is None or abs(anchor[1] + frame.time - anchor[0] - now) > REANCHOR_S:
                        anchor = (frame.time, now)
                    ts = anchor[1] + frame.time - anchor[0]
                ts = max(ts, self._last_ts + 1e-3)
                self._last_ts = ts
                self.stats.frames_decoded += 1
                self._last_frame_at = self._clock()
                if self._slot.put((ts, frame)):
                    self.stats.frames_dropped += 1
        except (av.error.FFmpegError, OSError) as exc:
            self.stats.last_error = str(exc)
        return connected
