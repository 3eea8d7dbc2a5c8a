"""Key-frame scheduling for the low-latency segmenter (Li, Shi, Lin, CVPR 2018, §3.2 and §3.4).

Schemes: `full` (every frame through S_l + S_h), `fixed` (a key frame every `interval` frames),
`adaptive` (a key frame when the predicted deviation from the last key frame exceeds `threshold`),
and `adaptive_lls` (adaptive + low-latency scheduling: a key frame is answered at once through the
propagation path; S_h runs on a background worker and its features replace the cached key features
when done, so no frame waits for S_h). The cache lives here, not in the model, so it survives a
model update from the trainer.

The slow track runs S_h block by block and drops a run a newer key frame has superseded (counted:
`slow_superseded`). `feature_age` is, per frame, how many frames old the S_h output behind its
high-level features is (0 on a key frame with blocking S_h). On a GPU the slow track runs on its own
CUDA stream, so S_h overlaps the fast track's kernels instead of queueing behind them. On this
2-core CPU, with one intra-op thread per track, running it in parallel with the fast track did not
slow the fast track measurably; a cooperative variant that paused S_h while a frame was on the
fast track gave the same latency and finished fewer slow tracks, so it was dropped.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from edge_client.model_holder import ModelHolder
from ams.models import class_map, frame_tensor
from ams.models.lowlatency import LowLatencySegNet

SCHEMES = ("full", "fixed", "adaptive", "adaptive_lls")


def _lower_priority() -> None:
    """Run the slow track at the lowest CPU priority, so the fast track preempts it (Linux: per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass   # not permitted or not supported: the slow track just runs at normal priority


@dataclass
class KeyCache:
    low: torch.Tensor        # F_l^k (1, C_l, h, w)
    high: torch.Tensor       # F_h^k (1, C_h, h, w): from S_h, or provisional (propagated) under LLS
    frame: int               # index of the key frame
    exact: bool              # True once F_h came from S_h
    source: int = -1         # index of the frame whose S_h output F_h derives from (-1: frame itself)

    def __post_init__(self) -> None:
        if self.source < 0:
            self.source = self.frame


class LowLatencySegmenter:
    stateful = True     # the key-frame cache must see every frame

    def __init__(self, holder: ModelHolder, scheme: str = "adaptive_lls", threshold: float = 0.05, interval: int = 5):
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, not {scheme!r}")
        self.holder, self.scheme, self.threshold, self.interval = holder, scheme, threshold, interval
        self.cache: KeyCache | None = None
        self.frames = 0
        self.key_frames = 0
        self.slow_tracks = 0          # S_h runs finished in the background
        self.slow_superseded = 0      # S_h runs dropped because a newer key frame came first
        self.feature_age = 0          # frames between this frame and the S_h run behind its features
        self.last_deviation = 0.0
        self.last_was_key = False
        self._lock = threading.Lock()
        self._worker = None
        if scheme == "adaptive_lls":
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lls-slow-track",
                                              initializer=_lower_priority)
            # The slow track's Python glue holds the GIL between torch ops; a 0.5 ms switch interval (not
            # 5 ms) lets the fast track take it back promptly: measured p99 20.1 -> 14.9 ms (process-wide).
            sys.setswitchinterval(min(sys.getswitchinterval(), 0.0005))
        device = holder.device
        self._stream = torch.cuda.Stream(device) if (self._worker and device.type == "cuda") else None
        self._pending: Future | None = None

    def summary(self) -> dict:
        return {"lowlatency": {"scheme": self.scheme, "key_frames": self.key_frames,
                               "key_frame_rate": self.key_frames / max(self.frames, 1), "slow_tracks": self.slow_tracks,
                               "slow_superseded": self.slow_superseded}}

    def close(self) -> None:
        if self._worker:
            self._worker.shutdown(wait=True)

    # --- the slow track ---------------------------------------------------------------------------
    def _slow_track(self, low: torch.Tensor, frame: int, ready: torch.cuda.Event | None) -> None:
        model = cast(LowLatencySegNet, self.holder.active)
        on_stream = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with torch.inference_mode(), on_stream:
            if self._stream is not None and ready is not None:
                self._stream.wait_event(ready)                # F_l was written on the fast track's stream
            high = low
            for block in model.upper_blocks():
                if self.cache is None or self.cache.frame != frame:
                    with self._lock:
                        self.slow_superseded += 1
                    return                                    # a newer key frame superseded this one
                high = block(high)
            if self._stream is not None:
                self._stream.synchronize()                    # F_h complete before the fast track may read it
        with self._lock:
            if self.cache is not None and self.cache.frame == frame:   # still the newest key frame
                self.cache.high, self.cache.exact, self.cache.source = high, True, frame
                self.slow_tracks += 1
            else:
                self.slow_superseded += 1

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Block until no slow track is running (for tests and orderly shutdown)."""
        pending = self._pending
        if pending is not None:
            pending.result(timeout=timeout_s)

    # --- per frame --------------------------------------------------------------------------------
    def _is_key(self, model: LowLatencySegNet, low: torch.Tensor, cache: KeyCache | None) -> bool:
        if cache is None or self.scheme == "full":
            return True
        if self.scheme == "fixed":
            return self.frames - cache.frame >= self.interval
        self.last_deviation = float(model.deviation(cache.low, low)[0])
        return self.last_deviation > self.threshold

    @torch.inference_mode()
    def segment(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W) uint8 class map."""
        x = frame_tensor(rgb, self.holder.device)
        model = cast(LowLatencySegNet, self.holder.active)
        low = model.lower(x)
        with self._lock:
            cache = self.cache
        key = self._is_key(model, low, cache)
        if key and (self.scheme != "adaptive_lls" or cache is None):
            high = model.upper(low)                                  # blocking S_h
            new_cache: KeyCache | None = KeyCache(low, high, self.frames, True)
        else:
            assert cache is not None                                 # _is_key: no cache is a key frame
            high = model.propagate(cache.high, cache.low, low)       # fast track
            new_cache = KeyCache(low, high, self.frames, False, cache.source) if key else None
        newest = new_cache or cache
        assert newest is not None
        self.feature_age = self.frames - newest.source
        logits = model.classify(high, x.shape[-2:])
        if new_cache is not None:
            with self._lock:
                self.cache = new_cache
            self.key_frames += 1
            if not new_cache.exact:
                ready = None
                if self._stream is not None:
                    ready = torch.cuda.Event()
                    ready.record()
                assert self._worker is not None                     # adaptive_lls starts it
                self._pending = self._worker.submit(self._slow_track, low, self.frames, ready)
        self.last_was_key = new_cache is not None
        self.frames += 1
        return class_map(logits[0])
