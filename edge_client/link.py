"""The edge's gRPC link to the trainer: open/resume a session, upload clips, receive updates.

Updates and control messages arrive on a server stream read by a background thread, which applies
them to the ModelHolder; on UNAVAILABLE it reconnects with backoff and resumes from the version
the device holds (the trainer catches it up by missed updates or a snapshot). An update the device
refuses (wrong base, corrupt, checksum mismatch) ends the stream; the link reconnects after an
exponential backoff and names the refused version, and the trainer answers with a snapshot.

`inference=False` keeps only the parameters (a `ParameterHolder`): the load generator and chaos runs
emulate their devices with this same link. `listener`, when set, sees every server message after it
was handled: (message, version held before it, whether it was accepted).
"""
from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from ams import tls as ams_tls
from ams.grpc_common import channel_options, device_metadata
from ams.label_hint import read_hint
from ams.pki import CertFiles
from ams.update_codec import CODEC_NAMES, CODECS, UpdateRejected, decode_update
from ams.v1 import common_pb2, streaming_pb2, streaming_pb2_grpc
from edge_client import metrics
from edge_client.link_stats import LinkStats
from edge_client.model_holder import ModelHolder, ParameterHolder

log = logging.getLogger(__name__)

# upload failures that may heal on their own (a replica's fail-over, an expired session reopened, a rate
# limit, a proxy's reset); any other status (INVALID_ARGUMENT, OUT_OF_RANGE, PERMISSION_DENIED, ...) will not
UPLOAD_RETRIED = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED, grpc.StatusCode.UNKNOWN,
                            grpc.StatusCode.CANCELLED})


class TrainerLink:
    def __init__(self, address: str, device_id: str, student: streaming_pb2.StudentSpec, tls: CertFiles | None,
                 max_message_bytes: int = 64 * 1024 * 1024, timeout_s: float = 60.0,
                 update_codecs: tuple[str, ...] = tuple(CODECS), device: str = "cpu", label_hints: bool = True,
                 inference: bool = True):
        """`tls`: the operator's CA and this device's certificate and key (the trainer takes the
        device id from the certificate); None only against a trainer in insecure mode, which
        takes `device_id` from a header. `update_codecs`: the update codecs offered to the trainer.
        `device`: where the student's inference copy runs (cpu, cuda). `label_hints`: ask for the
        trainer's label hints (the runtime carries them forward and shows them while fresh). `inference`:
        False holds only the parameters (no model to run: load generators)."""
        self.inference_device, self.inference = device, inference
        self.address, self.device_id, self.student, self.timeout_s = address, device_id, student, timeout_s
        self.update_codecs = [CODECS[name] for name in update_codecs]
        self.update_codec = ""             # the codec the trainer picked for this session
        self._channel = ams_tls.channel(address, tls, options=channel_options(max_message_bytes))
        self._stub = streaming_pb2_grpc.ModelStreamingStub(self._channel)
        self._metadata = () if tls else device_metadata(device_id)
        self.stats = LinkStats()
        self.session_id = ""
        self.holder: ParameterHolder | None = None
        self.listener: Callable[[streaming_pb2.ServerMessage, int, bool], None] | None = None
        # replay only: an update waits this many seconds of video before it applies (the latency a live device
        # would see: uplink, labelling, the phase, downlink); None applies it on arrival
        self.update_delay_s: float | None = None
        self._deferred: deque = deque()     # (video time due, update message), in arrival order
        self.label_hints = label_hints
        self.hint_delay_s = 0.0             # replay: a hint waits this many seconds of video (uplink, teacher, RTT)
        self.hints: deque = deque(maxlen=8)    # (video time due, capture time, class map): the runtime takes them
        self.hints_refused = 0
        self.sampling_rate_fps = 1.0
        self.update_interval_s = 10.0
        self.processed_clip_seq = 0
        self.video_time_s = 0.0            # set by the runtime: stamps update arrival for plots
        self._cond = threading.Condition()
        self._open_lock = threading.RLock()   # one OpenSession at a time (the uplink and the stream may both see NOT_FOUND)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._call: Any = None             # the StreamUpdates call in progress (cancelled by close)
        self._refused_version = 0          # set when an update is refused: the next stream asks for a snapshot
        self.resyncs = 0

    # --- session ----------------------------------------------------------------------------------
    def open(self, timeout_s: float | None = None) -> ParameterHolder:
        """Open a session (or resume the current one) and start the update stream; waits up to `timeout_s`
        (default: the link's) for the trainer to be reachable. A holder set before (a local model the
        device served while offline) takes the trainer's snapshot."""
        with self._open_lock:
            return self._open(timeout_s)

    def reopen(self, stale_sid: str) -> None:
        """A call on session `stale_sid` was NOT_FOUND (expired, or replaced by this device): open a new
        session, unless another thread already has (both the uplink and the update stream notice, and a
        second open would replace the first's session: the device's quota is one)."""
        with self._open_lock:
            if self.session_id == stale_sid:
                self._open()

    def _open(self, timeout_s: float | None = None) -> ParameterHolder:
        request = streaming_pb2.OpenSessionRequest(student=self.student, resume_session_id=self.session_id,
                                                   held_version=self.holder.version if self.holder else 0,
                                                   update_codecs=self.update_codecs,  # type: ignore[arg-type]  # enum ints
                                                   label_hints=self.label_hints)
        reply = self._stub.OpenSession(request, metadata=self._metadata, timeout=timeout_s or self.timeout_s,
                                        wait_for_ready=True)
        self.stats.snapshot_bytes += reply.ByteSize()
        metrics.DOWNLINK_BYTES.labels("snapshot").inc(reply.ByteSize())
        self.session_id = reply.session_id
        self.update_codec = CODEC_NAMES.get(reply.update_codec or CODECS["float16"], str(reply.update_codec))
        self._set_control(reply.control)
        if reply.HasField("snapshot"):
            if self.holder is None:
                self.holder = (ModelHolder(reply.snapshot, self.inference_device) if self.inference
                               else ParameterHolder(reply.snapshot))
            else:
                self.holder.load_snapshot(reply.snapshot)
            self.initial_snapshot = reply.snapshot
        metrics.MODEL_VERSION.set(self.held.version)
        log.info("session %s (%s) at version %d, %s updates", self.session_id, "resumed" if reply.resumed else "new",
                 self.held.version, self.update_codec)
        if self._thread is None:
            self._thread = threading.Thread(target=self._stream_loop, name="ams-updates", daemon=True)
            self._thread.start()
        return self.held

    @property
    def held(self) -> ParameterHolder:
        """The model the device holds; an error before the first snapshot (the link was never opened)."""
        if self.holder is None:
            raise RuntimeError("the link holds no model: open() it first")
        return self.holder

    def close(self) -> None:
        self._stop.set()
        if self._call is not None:
            self._call.cancel()
        try:
            if self.session_id:
                self._stub.CloseSession(streaming_pb2.CloseSessionRequest(session_id=self.session_id),
                                        metadata=self._metadata, timeout=10)
        except grpc.RpcError as exc:
            log.warning("closing session: %s", exc.code())
        if self._thread:
            self._thread.join(timeout=5)
        self._channel.close()

    # --- uplink -----------------------------------------------------------------------------------
    def upload(self, clip_seq: int, data: bytes, timestamps: list[float], width: int, height: int) -> bool:
        """Upload one H.264 clip (gRPC retries UNAVAILABLE with backoff); False if it still failed."""
        return self.upload_clip(clip_seq, common_pb2.EncodedClip(codec="h264", data=data, timestamps_s=timestamps,
                                                                 width=width, height=height))

    def upload_clip(self, clip_seq: int, clip: common_pb2.EncodedClip, retry_s: float = 0.0,
                    stop: threading.Event | None = None) -> bool:
        """Upload one encoded clip; tried again (1 s, 2 s, ... up to 5 s apart) for up to `retry_s`
        after gRPC's own retries of UNAVAILABLE (a replica's fail-over outlasts those), while the
        failure may heal (UPLOAD_RETRIED). False, with every failed attempt counted by status code,
        when it still failed, could not succeed, or `stop` (default: the link's close) was set."""
        deadline, attempt, stop = time.monotonic() + retry_s, 0, stop or self._stop
        while True:
            request = streaming_pb2.UploadClipRequest(session_id=self.session_id, clip_seq=clip_seq, clip=clip)
            try:
                self._stub.UploadClip(request, metadata=self._metadata, timeout=self.timeout_s)
                break
            except grpc.RpcError as exc:
                self.stats.upload_failures += 1
                self.stats.upload_errors[exc.code().name] += 1
                metrics.UPLOAD_FAILURES.inc()
                log.warning("upload of clip %d failed: %s %s", clip_seq, exc.code(), exc.details())
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    self.reopen(request.session_id)  # the session expired: start a new one
                if exc.code() not in UPLOAD_RETRIED:
                    return False
            if time.monotonic() >= deadline or stop.wait(min(1.0 + attempt, 5.0)):
                return False
            attempt += 1
        self.stats.uplink_bytes += request.ByteSize()
        metrics.UPLINK_BYTES.inc(request.ByteSize())
        self.stats.clips += 1
        return True

    def wait_processed(self, clip_seq: int, timeout_s: float = 600.0) -> bool:
        """Block until the trainer has trained on clip `clip_seq` and its update (if any) is applied."""
        with self._cond:
            return self._cond.wait_for(lambda: self.processed_clip_seq >= clip_seq or self._stop.is_set(), timeout_s)

    # --- downlink ---------------------------------------------------------------------------------
    def _set_control(self, control: streaming_pb2.Control) -> None:
        if control.sampling_rate_fps > 0:
            self.sampling_rate_fps = control.sampling_rate_fps
        if control.update_interval_s > 0:
            self.update_interval_s = control.update_interval_s

    def _handle(self, message: streaming_pb2.ServerMessage) -> None:
        before = self.held.version
        accepted = self._dispatch(message)
        if not accepted:
            self.stats.refused += 1
        if self.listener is not None:
            self.listener(message, before, accepted)

    def _dispatch(self, message: streaming_pb2.ServerMessage) -> bool:
        """Handle one server message; False when it was refused (the stream is being reopened)."""
        kind = message.WhichOneof("body")
        if kind:
            metrics.DOWNLINK_BYTES.labels(kind).inc(message.ByteSize())
        if kind == "update":
            self.stats.downlink_bytes += message.ByteSize()
            if self.update_delay_s is not None:
                with self._cond:
                    self._deferred.append((self.video_time_s + self.update_delay_s, message))
            elif not self._apply_update(message):
                return False
        elif kind == "snapshot":
            self.stats.snapshot_bytes += message.ByteSize()
            try:
                self.held.load_snapshot(message.snapshot)
                self.stats.snapshots += 1
                metrics.MODEL_VERSION.set(self.held.version)
            except UpdateRejected as exc:   # a corrupt snapshot: keep the model, ask again after a backoff
                log.warning("snapshot v%d refused: %s", message.snapshot.version, exc)
                self._refused_version = message.snapshot.version or -1
                if self._call is not None:
                    self._call.cancel()
                return False
        elif kind == "control":
            self.stats.downlink_bytes += message.ByteSize()
            self._set_control(message.control)
        elif kind == "hint":
            self.stats.downlink_bytes += message.ByteSize()
            self._take_hint(message.hint)
        with self._cond:
            self.processed_clip_seq = max(self.processed_clip_seq, message.processed_clip_seq)
            self._cond.notify_all()
        return True

    def _take_hint(self, hint: streaming_pb2.LabelHint) -> None:
        """Queue a label hint for the runtime; a corrupt or mis-sized one is refused (counted, never shown)."""
        config = self.held.config
        try:
            label = read_hint(hint, (int(config["input_height"]), int(config["input_width"])),
                              int(config.get("num_classes", 2)))
        except (ValueError, KeyError) as exc:
            self.hints_refused += 1
            metrics.HINTS_REFUSED.inc()
            log.warning("label hint of clip %d refused: %s", hint.clip_seq, exc)
            return
        with self._cond:
            self.hints.append((self.video_time_s + self.hint_delay_s, hint.capture_time_s, label))

    def due_hints(self, video_time_s: float) -> list[tuple[float, np.ndarray]]:
        """(capture time, class map) of the hints that have reached the device by this frame."""
        out = []
        with self._cond:
            while self.hints and self.hints[0][0] <= video_time_s + 1e-9:
                out.append(self.hints.popleft()[1:])
        return out

    def _apply_update(self, message: streaming_pb2.ServerMessage) -> bool:
        try:
            ok = self.held.apply(decode_update(message.update, self.held.flat.size))
        except UpdateRejected as exc:
            log.warning("corrupt update refused: %s", exc)
            self.held.updates_rejected += 1
            ok = False
        if not ok:   # out of step with the trainer: reconnect and ask for a snapshot
            metrics.UPDATES_REFUSED.inc()
            self._refused_version = message.update.new_version
            if self._call is not None:
                self._call.cancel()
            return False
        self.stats.updates += 1
        metrics.UPDATES_APPLIED.inc()
        metrics.MODEL_VERSION.set(self.held.version)
        self.stats.update_bytes.append(message.ByteSize())
        self.stats.update_index_bytes.append(len(message.update.index_mask_gz) + len(message.update.index_ans))
        self.stats.update_values.append(self.held.last_update_size)
        self.stats.update_times.append(self.video_time_s)
        return True

    def apply_due(self, video_time_s: float) -> None:
        """Replay with an update delay: apply the deferred updates due by this frame's video time."""
        while True:
            with self._cond:
                if not self._deferred or self._deferred[0][0] > video_time_s + 1e-9:
                    return
                _, message = self._deferred.popleft()
            self.video_time_s = video_time_s
            self._apply_update(message)

    def _stream_loop(self) -> None:
        backoff = resync_backoff = 0.2
        while not self._stop.is_set():
            refused, self._refused_version = self._refused_version, 0
            sid = self.session_id
            try:
                self._call = self._stub.StreamUpdates(
                    streaming_pb2.StreamUpdatesRequest(session_id=sid, held_version=self.held.version,
                                                       refused_version=refused),
                    metadata=self._metadata, wait_for_ready=True)
                for message in self._call:
                    self._handle(message)
                    backoff = 0.2
                    if message.WhichOneof("body") in ("update", "snapshot") and not self._refused_version:
                        resync_backoff = 0.2      # in step again
                if self._stop.is_set():
                    return
            except grpc.RpcError as exc:
                if not self._stop.is_set() and not self._refused_version:   # (not our own cancel of a refused one)
                    self.stats.stream_errors[exc.code().name] += 1
                if self._refused_version and not self._stop.is_set():
                    self.resyncs += 1
                    metrics.RESYNCS.inc()
                    log.info("update v%d refused; resyncing by snapshot from version %d in %.1f s",
                             self._refused_version, self.held.version, resync_backoff)
                    self._stop.wait(resync_backoff * (1 + random.random()))   # never a tight loop
                    resync_backoff = min(resync_backoff * 2, 30.0)
                    continue
                if self._stop.is_set():   # (a CANCELLED we did not ask for is a proxy's reset: reconnect)
                    return
                log.warning("update stream: %s %s; reconnecting", exc.code(), exc.details())
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    try:
                        self.reopen(sid)
                    except grpc.RpcError:
                        pass
            time.sleep(backoff * (1 + random.random()))   # exponential backoff with jitter
            backoff = min(backoff * 2, 5.0)
