"""The edge main loop: segment every frame, sample and upload, hot-swap updates (DESIGN §1, §8).

replay: frames as fast as possible; at each T_update boundary the edge uploads the interval's clip
        and waits for the update trained on it, so runs are deterministic and comparable.
live:   frames paced at capture time; frames the model cannot keep up with are dropped (counted);
        encoding and upload run on a background thread, overlapping the trainer's work.
"""
from __future__ import annotations

import itertools
import logging
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ams.video import CLIP_CRF, encode_clip
from edge_client import metrics
from edge_client.evaluation import Confusion, TeacherLabeler, frame_miou
from edge_client.link import TrainerLink
from edge_client.model_holder import ModelHolder
from edge_client.overlay import OverlayWriter
from edge_client.label_carrier import HINT_TTL_S, HintJudge, LabelCarrier
from edge_client.sampler import IntervalSampler
from edge_client.segmenters import make_segmenter
from edge_client.video_source import VideoSource

log = logging.getLogger(__name__)


@dataclass
class EdgeOptions:
    mode: str = "replay"                 # replay | live
    eval_every: int = 1                  # evaluate every n-th frame (0 = off)
    clip_bitrate: int = 0             # > 0: an average bit rate instead of constant quality
    clip_crf: int = CLIP_CRF
    progress: bool = True
    overlay_path: str | None = None
    baseline: bool = True                # also run the never-updated w0 on evaluated frames
    segmenter: str = "auto"              # auto | frame | streamdeq | lowlatency
    update_delay_s: float = 0.0          # replay: video seconds from a clip's interval end to its update applying
    hint_delay_s: float = 0.0            # replay: video seconds from a clip's upload to its label hint arriving
    hint_ttl_s: float = HINT_TTL_S       # a carried label hint is shown while at most this old (0: never shown)
    hint_judge: bool = True              # show the student over a fresh hint while it scores better (HintJudge)
    segmenter_options: dict = field(default_factory=dict)   # StreamDEQ: iters, solver, budget_ms, cut_threshold;
                                                            # low-latency: scheme, threshold, interval


FRAMES_KEPT = 100_000   # per-frame records kept: a device that runs forever (--loops 0) keeps bounded state
UPLOAD_RETRY_S = 30.0   # how long a clip upload is retried: longer than a trainer replica's fail-over (lease TTL)


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
    def __init__(self, link: TrainerLink, source: VideoSource, options: EdgeOptions, labeler: TeacherLabeler | None = None):
        self.link, self.source, self.opt, self.labeler = link, source, options, labeler
        self.latencies_ms: deque = _recent(10_000)    # the last 10 000 frames' latencies (p50 / p99)
        self.dropped = 0
        self.series = EvalSeries()
        self._uploads: queue.Queue = queue.Queue()
        self._clip_seq = 0

    # --- uplink -----------------------------------------------------------------------------------
    def _upload_worker(self) -> None:
        while (item := self._uploads.get()) is not None:
            self._send_clip(*item)

    def _send_clip(self, seq: int, frames: list[np.ndarray], timestamps: list[float]) -> None:
        data = encode_clip(frames, bit_rate=self.opt.clip_bitrate, crf=self.opt.clip_crf)
        h, w = frames[0].shape[:2]
        deadline = time.monotonic() + UPLOAD_RETRY_S
        attempt = 0
        while True:   # gRPC already retried UNAVAILABLE; this covers longer outages (a replica's fail-over)
            if self.link.upload(seq, data, timestamps, w, h):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(min(1.0 + attempt, 5.0))
            attempt += 1
        log.error("clip %d dropped after %.0f s of retries", seq, UPLOAD_RETRY_S)

    def _flush_interval(self, sampler: IntervalSampler) -> None:
        frames, timestamps = sampler.take(self.link.sampling_rate_fps, self.link.update_interval_s)
        if not frames:
            return
        self._clip_seq += 1
        if self.opt.mode == "replay":
            self._send_clip(self._clip_seq, frames, timestamps)
            self.link.wait_processed(self._clip_seq)
        else:
            self._uploads.put((self._clip_seq, frames, timestamps))

    # --- main loop --------------------------------------------------------------------------------
    def _segment(self, segmenter, carrier: LabelCarrier | None, video_t: float, rgb: np.ndarray,
                 uploaded: bool) -> np.ndarray:
        """The frame's output: the trainer's label hint carried to this frame while it is fresh and
        the judge does not find the student better (a stateful student still sees the frame), else
        the student's. `uploaded`: the frame goes up to the trainer (its label will judge)."""
        if carrier is None:
            return segmenter.segment(rgb)
        pred, hinted = carrier.output(segmenter, video_t, rgb, self.link.due_hints(video_t), self.opt.hint_ttl_s,
                                      probe=uploaded)
        if hinted:
            self.frames_shown_hint += 1
            metrics.FRAMES_SHOWN_HINT.inc()
        return pred

    def run(self) -> dict:
        holder = self.link.holder
        segmenter = make_segmenter(holder, self.opt.segmenter, **self.opt.segmenter_options)
        baseline = (ModelHolder(self.link.initial_snapshot, self.link.inference_device)
                    if (self.labeler and self.opt.baseline) else None)
        # the baseline runs the same way (for StreamDEQ: streaming on every frame), so it sees every frame
        base_segmenter = make_segmenter(baseline, self.opt.segmenter, **self.opt.segmenter_options) if baseline else None
        num_classes = len(self.labeler.classes) if self.labeler else 0
        # per pass kind: "first" (a clip's first pass: the headline) and "seen" (repeated passes of a looped clip,
        # whose frames the model may have been trained on)
        conf_ams = {k: Confusion(max(num_classes, 2)) for k in ("first", "seen")}
        conf_base = {k: Confusion(max(num_classes, 2)) for k in ("first", "seen")}
        # in fast start the first frame is a clip of its own, uploaded at once (sampler.py)
        sampler = IntervalSampler(self.link.sampling_rate_fps, self.link.update_interval_s)
        if self.opt.mode == "replay" and self.opt.update_delay_s > 0:
            self.link.update_delay_s = self.opt.update_delay_s
        if self.opt.mode == "replay":
            self.link.hint_delay_s = self.opt.hint_delay_s
        carrier = (LabelCarrier(hold_s=self.opt.hint_ttl_s, judge=HintJudge() if self.opt.hint_judge else None)
                   if self.link.label_hints and self.opt.hint_ttl_s > 0 else None)
        self.frames_shown_hint = 0
        uploader = threading.Thread(target=self._upload_worker, daemon=True) if self.opt.mode == "live" else None
        if uploader:
            uploader.start()
        overlay = None
        wall0, t0, frames, last_print, video_t = time.perf_counter(), None, 0, 0.0, 0.0
        for frame in self.source:
            video_t = frame.timestamp_s
            self.link.video_time_s = video_t
            self.link.apply_due(video_t)
            if t0 is None:
                t0 = video_t
            if self.opt.mode == "live":
                ahead = (video_t - t0) - (time.perf_counter() - wall0)
                if ahead > 0:
                    time.sleep(ahead)
                elif -ahead > 0.1:   # more than 100 ms behind capture: drop the frame
                    self.dropped += 1
                    metrics.FRAMES_DROPPED.inc()
                    continue
            started = time.perf_counter()
            pred = self._segment(segmenter, carrier, video_t, frame.rgb, sampler.due(video_t))
            seconds = time.perf_counter() - started
            self.latencies_ms.append(seconds * 1000)
            metrics.FRAMES.inc()
            metrics.FRAME_SECONDS.observe(seconds)
            frames += 1
            if frames % 10 == 0:
                recent = list(itertools.islice(reversed(self.latencies_ms), 50))
                metrics.FPS.set(1000 / max(float(np.mean(recent)), 1e-6))
            evaluate = self.labeler and self.opt.eval_every and frame.index % self.opt.eval_every == 0
            base_pred = base_segmenter.segment(frame.rgb) if base_segmenter and (evaluate or base_segmenter.stateful) else None
            if evaluate:
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
                overlay.write(frame.rgb, pred, f"t={video_t:5.1f}s v{holder.version}")
            sampler.offer(video_t, frame.rgb)
            if sampler.interval_done(video_t):
                self._flush_interval(sampler)
            if self.opt.progress and time.perf_counter() - last_print > (0.5 if sys.stderr.isatty() else 10.0):
                last_print = time.perf_counter()
                self._print_progress(frames, video_t - t0, holder.version)
        if uploader:
            self._uploads.put(None)
            uploader.join()
        if overlay:
            overlay.close()
        for seg in (segmenter, base_segmenter):
            if seg is not None:
                seg.close()
        if self.opt.progress:
            self._print_progress(frames, video_t - (t0 or 0), holder.version)
            sys.stderr.write("\n")
        summary = self._summary(frames, video_t - (t0 or 0), conf_ams, conf_base if baseline else None,
                                time.perf_counter() - wall0)
        summary["segmenter"] = type(segmenter).__name__
        summary.update(segmenter.summary())
        return summary

    def _print_progress(self, frames: int, video_s: float, version: int) -> None:
        s = self.link.stats
        lat = np.mean(list(itertools.islice(reversed(self.latencies_ms), 50))) if self.latencies_ms else 0.0
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
        return {"miou": first.miou() if first.matrix.sum() else None,
                "miou_seen": seen.miou() if seen.matrix.sum() else None,
                "iou_per_class": dict(zip(self.labeler.classes, first.iou().tolist()))}

    def _summary(self, frames: int, video_s: float, conf_ams: dict[str, Confusion], conf_base: dict[str, Confusion] | None,
                 wall_s: float) -> dict:
        s, lat = self.link.stats, np.array(list(self.latencies_ms) or [0.0])
        dur = max(video_s, 1e-6)
        out = {
            "mode": self.opt.mode, "frames": frames, "dropped_frames": self.dropped, "video_seconds": round(video_s, 3),
            "wall_seconds": round(wall_s, 2), "updates": s.updates, "updates_rejected": self.link.holder.updates_rejected,
            "final_version": self.link.holder.version, "clips_uploaded": s.clips,
            "frames_shown_hint": self.frames_shown_hint, "hints_refused": self.link.hints_refused,
            "uplink_kbps": s.uplink_bytes * 8 / 1000 / dur, "downlink_kbps": s.downlink_bytes * 8 / 1000 / dur,
            "uplink_bytes": s.uplink_bytes, "downlink_bytes": s.downlink_bytes, "snapshot_bytes": s.snapshot_bytes,
            "mean_update_bytes": float(np.mean(s.update_bytes)) if s.update_bytes else 0.0,
            "update_times_s": list(s.update_times), "update_bytes": list(s.update_bytes),
            "update_codec": self.link.update_codec,
            "update_index_bytes": list(s.update_index_bytes), "update_values": list(s.update_values),
            "num_params": int(self.link.holder.flat.size),
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
