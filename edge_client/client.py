"""The embeddable edge client: one object a device application holds to segment frames with a student that
AMS keeps adapting (the `ams-edge` CLI is built on it).

    with EdgeClient("trainer.example:50052", tls=CertFiles(ca, cert, key)) as client:
        mask = client.segment(rgb)                      # (H, W) uint8 class per pixel, any frame size
        client.run("rtsp://camera/stream", on_result=show)

`segment` always answers with the model the device holds now: the student's pretrained w0 from a local
checkpoint until the trainer is reached, then the session's model, hot-swapped as updates arrive. Each
frame also goes through the AMS loop: the sampler keeps frames at the trainer's rate and a background
thread uploads each interval's clip (at most MAX_PENDING_CLIPS wait; older ones are dropped, counted,
while the trainer is away). An unreachable trainer is one log line per retry on an exponential
schedule, never an exception to the caller; a trainer that refuses the device (bad certificate,
unknown student, revoked) is an `EdgeError` at once: retrying would not help.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections import deque

import cv2
import grpc
import numpy as np

from ams.models.checkpoints import checkpoint_file, load_checkpoint
from ams.models.export import export_student
from ams.pki import CertFiles
from ams.update_codec import CODECS
from ams.v1 import common_pb2, streaming_pb2
from ams.video import encode_clip
from edge_client import metrics
from edge_client.label_carrier import HintJudge, LabelCarrier
from edge_client.link import TrainerLink
from edge_client.live_source import Backoff
from edge_client.model_holder import ModelHolder
from edge_client.options import DEFAULT_STUDENT, EdgeError, EdgeOptions, Result  # re-exported: the client's API
from edge_client.sampler import IntervalSampler

log = logging.getLogger(__name__)

MAX_PENDING_CLIPS = 4        # clips waiting for the uplink; a trainer away longer loses the oldest (counted)
UPLOAD_RETRY_S = 30.0        # how long a clip upload is retried: longer than a trainer replica's fail-over (lease TTL)
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.ABORTED}


class EdgeClient:
    """An edge device's AMS client. `student`: the name of a pretrained checkpoint the trainer serves (also
    loaded from `checkpoint_dir`, when there, to answer before the trainer is reached), or "" with
    `architecture` and `config` for a student the trainer builds (it must allow custom students).
    `tls`: the operator's CA and this device's certificate and key (`ams-admin issue-device`); None only
    against a plain-text local trainer, with `device_id`. `connect_timeout_s`: how long the constructor
    waits for the trainer before serving the local model (retrying in the background); with no local
    model it waits that long for the trainer's and raises EdgeError (None: wait for ever)."""

    def __init__(self, trainer: str, tls: CertFiles | None = None, student: str = DEFAULT_STUDENT, *,
                 device_id: str = "", architecture: str = "", config_json: str = "",
                 options: EdgeOptions | None = None, update_codecs: tuple[str, ...] = tuple(CODECS),
                 device: str = "cpu", connect_timeout_s: float | None = 10.0, checkpoint_dir: str | None = None,
                 link: TrainerLink | None = None):
        self.opt = options or EdgeOptions()
        if link is None:
            if tls is None and not device_id:
                raise EdgeError("a device_id is needed without TLS (with TLS it is the certificate's subject)")
            spec = streaming_pb2.StudentSpec(checkpoint=student, architecture="" if student else architecture,
                                             config_json="" if student else config_json)
            link = TrainerLink(trainer, device_id or "device", spec, tls, update_codecs=update_codecs, device=device,
                               label_hints=self.opt.hint_ttl_s > 0)
        self.link = link
        self.latencies_ms: deque = deque(maxlen=10_000)   # the last 10 000 frames' (p50 / p99)
        self.frames = self.frames_shown_hint = self.clips_dropped = 0
        self._uploads: queue.Queue = queue.Queue()
        self._clip_seq = 0
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._last_t = -1.0
        self._sampler: IntervalSampler | None = None
        self._lock = threading.Lock()         # one frame at a time through the loop
        self._closed = False
        self._uploader: threading.Thread | None = None
        self._connector: threading.Thread | None = None
        self._pending = 0                     # clips handed to the uplink and not yet sent or given up
        self._pending_lock = threading.Lock()
        try:
            self._start(student, checkpoint_dir, device, connect_timeout_s)
        except BaseException:
            self._stop.set()
            link.close()
            raise

    def _start(self, student: str, checkpoint_dir: str | None, device: str, connect_timeout_s: float | None) -> None:
        link = self.link
        if link.holder is None and not self._connect(connect_timeout_s, first=True):
            local = checkpoint_file(student, checkpoint_dir) if student else ""
            if local and os.path.isfile(local):
                architecture, _, model = load_checkpoint(local)
                link.holder = ModelHolder.of_model(architecture, model, device)
                log.warning("serving the local %s (v0) until the trainer answers", os.path.basename(local))
            elif connect_timeout_s is not None:
                raise EdgeError(f"trainer {link.address} unreachable for {connect_timeout_s:.0f} s and no local "
                                f"checkpoint of {student or 'a custom student'!r} to serve meanwhile")
            self._connector = threading.Thread(target=self._connect_loop, name="ams-connect", daemon=True)
            self._connector.start()
            if link.holder is None:
                self._connector.join()
                if link.holder is None:
                    raise EdgeError("closed before the trainer answered")
        assert isinstance(link.holder, ModelHolder)   # (the client's link runs inference)
        self.holder: ModelHolder = link.holder
        self.segmenter = self.opt.segmenter_for(self.holder)
        self.carrier = (LabelCarrier(hold_s=self.opt.hint_ttl_s, judge=HintJudge() if self.opt.hint_judge else None)
                        if link.label_hints and self.opt.hint_ttl_s > 0 else None)
        if self.opt.mode == "replay":
            link.hint_delay_s = self.opt.hint_delay_s
            if self.opt.update_delay_s > 0:
                link.update_delay_s = self.opt.update_delay_s
        else:
            self._uploads = queue.Queue(MAX_PENDING_CLIPS)
            self._uploader = threading.Thread(target=self._upload_worker, name="ams-uplink", daemon=True)
            self._uploader.start()

    @classmethod
    def on_link(cls, link: TrainerLink, options: EdgeOptions | None = None) -> "EdgeClient":
        """A client over a link already open (the evaluation harness and tests drive the link themselves)."""
        return cls(link.address, options=options, link=link)

    # --- connection ---------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return bool(self.link.session_id)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the student segments at."""
        return int(self.holder.config["input_height"]), int(self.holder.config["input_width"])

    def _connect(self, timeout_s: float | None, first: bool = False) -> bool:
        """Open the session; False (one log line) when the trainer is unreachable or busy."""
        try:
            self.link.open(timeout_s=timeout_s)
            return True
        except grpc.RpcError as exc:
            code = exc.code()
            if code not in RETRYABLE:
                raise EdgeError(f"trainer {self.link.address} refused the session: {code.name}: {exc.details()}") from None
            if first:
                log.warning("trainer %s unreachable (%s: %s)", self.link.address, code.name, exc.details())
            return False

    def _connect_loop(self) -> None:
        backoff, attempt = Backoff(first_s=1.0, max_s=60.0), 0
        while not self._stop.is_set():
            delay = backoff.delay(attempt)
            log.warning("retrying the trainer %s in %.0f s", self.link.address, delay)
            if self._stop.wait(delay):
                return
            try:
                if self._connect(timeout_s=10.0):
                    log.info("trainer %s reached: session %s", self.link.address, self.link.session_id)
                    return
            except EdgeError as exc:
                log.error("%s; the local model keeps serving, no adaptation", exc)
                return
            attempt += 1

    # --- per frame ----------------------------------------------------------------------------------
    def segment(self, rgb: np.ndarray, timestamp_s: float | None = None) -> np.ndarray:
        """(H, W) uint8 class map of an (H, W, 3) uint8 RGB frame of any size, from the current model."""
        result = self.process(rgb, timestamp_s)
        h, w = rgb.shape[:2]
        if result.mask.shape == (h, w):
            return result.mask
        return cv2.resize(result.mask, (w, h), interpolation=cv2.INTER_NEAREST)

    def process(self, rgb: np.ndarray, timestamp_s: float | None = None) -> Result:
        """Segment one frame (resized to the student's input) and feed it to the AMS loop. `timestamp_s`:
        its capture time in seconds, increasing (default: the client's clock)."""
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
            raise ValueError("a frame is an (H, W, 3) uint8 RGB array")
        h, w = self.input_size
        if rgb.shape[:2] != (h, w):
            rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
        with self._lock:
            if self._closed:
                raise EdgeError("the client is closed")
            t = time.monotonic() - self._t0 if timestamp_s is None else float(timestamp_s)
            t = self._last_t = max(t, self._last_t + 1e-6)
            return self._step(t, np.ascontiguousarray(rgb))

    def _step(self, t: float, rgb: np.ndarray) -> Result:
        link = self.link
        link.video_time_s = t
        link.apply_due(t)
        if self._sampler is None and self.connected:   # the clock of uploads starts at the first connected frame
            self._sampler = IntervalSampler(link.sampling_rate_fps, link.update_interval_s, start_s=t)
        sampler = self._sampler
        uploaded = sampler is not None and sampler.due(t)
        version = self.holder.version
        started = time.perf_counter()
        if self.carrier is None:
            pred, hinted = self.segmenter.segment(rgb), False
        else:
            pred, hinted = self.carrier.output(self.segmenter, t, rgb, link.due_hints(t), self.opt.hint_ttl_s,
                                               probe=uploaded)
        seconds = time.perf_counter() - started
        self._count(seconds, hinted)
        if sampler is not None:
            sampler.offer(t, rgb)
            if sampler.interval_done(t):
                self._flush_interval(sampler)
        return Result(pred, t, version, hinted, seconds * 1000)

    def _count(self, seconds: float, hinted: bool) -> None:
        self.frames += 1
        self.latencies_ms.append(seconds * 1000)
        metrics.FRAMES.inc()
        metrics.FRAME_SECONDS.observe(seconds)
        if hinted:
            self.frames_shown_hint += 1
            metrics.FRAMES_SHOWN_HINT.inc()
        if self.frames % 10 == 0:
            metrics.FPS.set(1000 / max(float(np.mean(list(itertools.islice(reversed(self.latencies_ms), 50)))), 1e-6))

    # --- uplink ---------------------------------------------------------------------------------------
    def _flush_interval(self, sampler: IntervalSampler) -> None:
        frames, timestamps = sampler.take(self.link.sampling_rate_fps, self.link.update_interval_s)
        if not frames:
            return
        self._clip_seq += 1
        if self.opt.mode == "replay":
            self._send_clip(self._clip_seq, frames, timestamps)
            self.link.wait_processed(self._clip_seq)
            return
        while True:   # the newest clip always goes in; the oldest waiting one is dropped while the trainer is away
            try:
                with self._pending_lock:
                    self._uploads.put_nowait((self._clip_seq, frames, timestamps))
                    self._pending += 1
                return
            except queue.Full:
                try:
                    with self._pending_lock:
                        self._uploads.get_nowait()
                        self._pending -= 1
                    self.clips_dropped += 1
                    metrics.CLIPS_DROPPED.inc()
                except queue.Empty:
                    pass

    def _upload_worker(self) -> None:
        while (item := self._uploads.get()) is not None:
            try:
                self._send_clip(*item)
            finally:
                with self._pending_lock:
                    self._pending -= 1

    def _send_clip(self, seq: int, frames: list[np.ndarray], timestamps: list[float]) -> None:
        data = encode_clip(frames, bit_rate=self.opt.clip_bitrate, crf=self.opt.clip_crf)
        h, w = frames[0].shape[:2]
        clip = common_pb2.EncodedClip(codec="h264", data=data, timestamps_s=timestamps, width=w, height=h)
        # gRPC already retried UNAVAILABLE; this covers a replica's fail-over
        if self.link.upload_clip(seq, clip, retry_s=UPLOAD_RETRY_S, stop=self._stop):
            return
        self.clips_dropped += 1
        metrics.CLIPS_DROPPED.inc()
        log.error("clip %d dropped after %.0f s of retries", seq, UPLOAD_RETRY_S)

    def export(self, out_dir: str) -> dict:
        """Write the model the device holds now as ONNX and TorchScript, with its card (student.json:
        architecture, config, version, input and output contract); returns the card."""
        architecture, config, model, version = self.holder.copy_model()
        return export_student(model, architecture, config, version, out_dir, session_id=self.link.session_id)

    # --- lifetime -------------------------------------------------------------------------------------
    def drain(self, timeout_s: float = 60.0) -> bool:
        """Wait until the clips handed to the uplink have gone, or `timeout_s`; True when they have."""
        deadline = time.monotonic() + timeout_s
        while self._uploader is not None and self._pending > 0:
            if time.monotonic() > deadline or not self._uploader.is_alive():
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        """Stop uploading, close the session and the channel (idempotent). The client answers no more frames."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()                      # a clip being retried gives up; those waiting are dropped
        if self._uploader is not None:
            while True:
                try:
                    self._uploads.get_nowait()
                except queue.Empty:
                    break
            self._uploads.put(None)
            self._uploader.join(5)
        self.segmenter.close()
        self.link.close()

    def __enter__(self) -> "EdgeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, source, on_result=None, stop: threading.Event | None = None, **source_options) -> dict:
        """Segment every frame of `source` (a file, directory, playlist, stream URL, /dev/videoN, synthetic
        spec, a list of those, or an iterable of Frames) until it ends or `stop` is set; `on_result(frame,
        result)` is called for each. Returns the run's summary."""
        from edge_client.runtime import EdgeRuntime
        from edge_client.sources import open_source

        if isinstance(source, (str, list, tuple)):
            source = open_source(source, self.input_size, stop=stop, **source_options)
        return EdgeRuntime(self, source, on_result=on_result, stop=stop).run()
