"""The edge's run over a frame source (docs/design.md §1, §8): each frame through the client's AMS loop, scored
against a teacher when one is given, drawn into an overlay, progress on stderr.

replay: frames as fast as possible; at each T_update boundary the edge uploads the interval's clip
        and waits for the update trained on it, so runs are deterministic and comparable.
live:   frames paced at capture time: a file is played at its own pace, frames the model cannot keep up
        with dropped (counted); a live source (a stream, a camera) paces itself and drops for itself.
        Uploads run on a background thread, overlapping the trainer's work.
A `stop` event ends the run after the current frame (SIGTERM / SIGINT in `ams-edge`): the summary is
complete and the overlay playable.
"""
from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_client import metrics
from edge_client.client import EdgeClient, EdgeOptions, Result
from edge_client.evaluation import Confusion, TeacherLabeler, frame_miou
from edge_client.model_holder import ModelHolder
from edge_client.overlay import OverlayWriter

log = logging.getLogger(__name__)

__all__ = ["EdgeOptions", "EdgeRuntime"]

FRAMES_KEPT = 100_000   # per-frame records kept: a device that runs forever (--loops 0) keeps bounded state
BEHIND_S = 0.1          # live playback of a file: a frame more than this behind capture time is dropped


def _recent(n: int | None = None) -> deque:
    return deque(maxlen=n or FRAMES_KEPT)


@dataclass
class EvalSeries:
    """The last FRAMES_KEPT evaluated frames (the confusion matrices count every frame)."""

    t: deque = field(default_factory=_recent)
    ams: deque = field(default_factory=_recent)
    baseline: deque = field(default_factory=_recent)
    repeat: deque = field(default_factory=_recent)   # the frame belongs to a repeated pass of its clip


class EdgeRuntime:
    def __init__(self, client: EdgeClient, source, labeler: TeacherLabeler | None = None, on_result=None,
                 stop: threading.Event | None = None):
        self.client, self.link, self.source, self.opt, self.labeler = client, client.link, source, client.opt, labeler
        self.on_result, self.stop = on_result, stop or threading.Event()
        self.dropped = 0
        self.series = EvalSeries()

    def _paced(self, video_t: float, t0: float, wall0: float) -> bool:
        """Live playback of a file: wait for the frame's capture time; False to drop a frame already behind."""
        ahead = (video_t - t0) - (time.perf_counter() - wall0)
        if ahead > 0:
            self.stop.wait(ahead)
        elif -ahead > BEHIND_S:
            self.dropped += 1
            metrics.FRAMES_DROPPED.inc()
            return False
        return True

    def run(self) -> dict:
        client, holder = self.client, self.client.holder
        baseline = (ModelHolder(self.link.initial_snapshot, self.link.inference_device)
                    if (self.labeler and self.opt.baseline) else None)
        # the baseline runs the same way (for StreamDEQ: streaming on every frame), so it sees every frame
        base_segmenter = self.opt.segmenter_for(baseline) if baseline else None
        num_classes = len(self.labeler.classes) if self.labeler else 0
        # per pass kind: "first" (a clip's first pass: the headline) and "seen" (repeated passes of a looped clip,
        # whose frames the model may have been trained on)
        conf_ams = {k: Confusion(max(num_classes, 2)) for k in ("first", "seen")}
        conf_base = {k: Confusion(max(num_classes, 2)) for k in ("first", "seen")}
        pace = self.opt.mode == "live" and not getattr(self.source, "paced", False)
        overlay = None
        wall0, t0, frames, last_print, video_t = time.perf_counter(), None, 0, 0.0, 0.0
        try:
            for frame in self.source:
                video_t = frame.timestamp_s
                if t0 is None:
                    t0 = video_t
                if pace and not self._paced(video_t, t0, wall0):
                    continue
                if self.stop.is_set():
                    break
                result: Result = client.process(frame.rgb, video_t)
                pred = result.mask
                frames += 1
                evaluate = self.labeler and self.opt.eval_every and frame.index % self.opt.eval_every == 0
                base_pred = (base_segmenter.segment(frame.rgb)
                             if base_segmenter and (evaluate or base_segmenter.stateful) else None)
                if evaluate and self.labeler is not None:
                    label = self.labeler.label(frame.rgb, video_t)
                    kind = "seen" if frame.repeat else "first"
                    conf_ams[kind].add(pred, label)
                    self.series.repeat.append(frame.repeat)
                    self.series.t.append(video_t)
                    self.series.ams.append(frame_miou(pred, label, num_classes))
                    if base_pred is not None:
                        conf_base[kind].add(base_pred, label)
                        self.series.baseline.append(frame_miou(base_pred, label, num_classes))
                if self.opt.overlay_path:
                    if overlay is None:
                        overlay = OverlayWriter(self.opt.overlay_path, frame.rgb.shape[1], frame.rgb.shape[0])
                    overlay.write(frame.rgb, pred, f"t={video_t:5.1f}s v{result.model_version}")
                if self.on_result is not None:
                    self.on_result(frame, result)
                if self.opt.progress and time.perf_counter() - last_print > (0.5 if sys.stderr.isatty() else 10.0):
                    last_print = time.perf_counter()
                    self._print_progress(frames, video_t - t0, holder.version)
                if self.stop.is_set():
                    break
        finally:
            if overlay:
                overlay.close()
            if base_segmenter is not None:
                base_segmenter.close()
            close = getattr(self.source, "close", None)
            if close is not None:
                close()
        if self.opt.mode == "live" and not self.stop.is_set():   # stopped (SIGTERM): no waiting on the uplink
            client.drain()
        if self.opt.progress:
            self._print_progress(frames, video_t - (t0 or 0), holder.version)
            sys.stderr.write("\n")
        summary = self._summary(frames, video_t - (t0 or 0), conf_ams, conf_base if baseline else None,
                                time.perf_counter() - wall0)
        summary["segmenter"] = type(client.segmenter).__name__
        summary.update(client.segmenter.summary())
        summary["stopped"] = self.stop.is_set()
        stats = getattr(self.source, "stats", None)
        if stats is not None:
            summary["source"] = stats.as_dict()
            summary["dropped_frames"] += stats.frames_dropped
        return summary

    def _print_progress(self, frames: int, video_s: float, version: int) -> None:
        s = self.link.stats
        recent = list(itertools.islice(reversed(self.client.latencies_ms), 50))
        lat = np.mean(recent) if recent else 0.0
        dur = max(video_s, 1.0)
        lead = "\r" if sys.stderr.isatty() else "\n"   # one updating line on a terminal, plain lines in a log
        sys.stderr.write(f"{lead}frame {frames:5d}  t={video_s:6.1f}s  {1000 / max(lat, 1e-6):5.1f} fps  model v{version:<3d} "
                         f"up {s.uplink_bytes * 8 / 1000 / dur:6.1f} Kbps  down {s.downlink_bytes * 8 / 1000 / dur:6.1f} Kbps"
                         f"  dropped {self.dropped}")
        sys.stderr.flush()

    def _scores(self, conf: dict[str, Confusion]) -> dict:
        """mIoU over the first pass of each clip (the headline: each frame scored once, as it arrives,
        by a model trained only on earlier frames) and, separately, over repeated passes of looped clips."""
        first, seen = conf["first"], conf["seen"]
        assert self.labeler is not None
        return {"miou": first.miou() if first.matrix.sum() else None,
                "miou_seen": seen.miou() if seen.matrix.sum() else None,
                "iou_per_class": dict(zip(self.labeler.classes, first.iou().tolist()))}

    def _summary(self, frames: int, video_s: float, conf_ams: dict[str, Confusion], conf_base: dict[str, Confusion] | None,
                 wall_s: float) -> dict:
        s, lat = self.link.stats, np.array(list(self.client.latencies_ms) or [0.0])
        dur = max(video_s, 1e-6)
        out: dict[str, Any] = {
            "mode": self.opt.mode, "frames": frames, "dropped_frames": self.dropped, "video_seconds": round(video_s, 3),
            "wall_seconds": round(wall_s, 2), "updates": s.updates, "updates_rejected": self.link.held.updates_rejected,
            "final_version": self.link.held.version, "clips_uploaded": s.clips,
            "clips_dropped": self.client.clips_dropped, "frames_shown_hint": self.client.frames_shown_hint,
            "hints_refused": self.link.hints_refused,
            "uplink_kbps": s.uplink_bytes * 8 / 1000 / dur, "downlink_kbps": s.downlink_bytes * 8 / 1000 / dur,
            "uplink_bytes": s.uplink_bytes, "downlink_bytes": s.downlink_bytes, "snapshot_bytes": s.snapshot_bytes,
            "mean_update_bytes": float(np.mean(s.update_bytes)) if s.update_bytes else 0.0,
            "update_times_s": list(s.update_times), "update_bytes": list(s.update_bytes),
            "update_codec": self.link.update_codec,
            "update_index_bytes": list(s.update_index_bytes), "update_values": list(s.update_values),
            "num_params": int(self.link.held.flat.size),
            "edge_latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                                "mean": float(lat.mean())},
            "edge_fps": 1000.0 / float(lat.mean()) if lat.mean() > 0 else 0.0,
            "sampling_rate_fps": self.link.sampling_rate_fps, "update_interval_s": self.link.update_interval_s,
        }
        if self.labeler:
            out["ams"] = self._scores(conf_ams)
            out["series"] = {"t": list(self.series.t), "ams": list(self.series.ams), "repeat": list(self.series.repeat)}
            if conf_base is not None:
                out["no_customization"] = self._scores(conf_base)
                out["series"]["no_customization"] = list(self.series.baseline)
        return out
