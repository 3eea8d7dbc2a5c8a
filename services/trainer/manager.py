"""Session lifecycle and the training engine: the trainer's core, independent of gRPC.

`train_workers` training threads (the "accelerator") serve every session, one phase per turn (AMS
App. E), earliest deadline first: the session whose oldest untrained clip was uploaded longest ago
goes next, and no session has two phases at once. The asyncio loop only does I/O, so training
never blocks the server.

With replicas, a session is served here only while this replica holds its lease (leases.py): taken
when the session is opened or restored from Redis, checked on every call, renewed every third of
its TTL, its token on every state write; lost (another replica took over) -> the session is dropped
here and its streams end; asked for by another replica -> checkpointed, released and dropped.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Sequence

import torch

from ams import errors
from ams.device import resolve_device
from ams.label_hint import make_hint
from ams.models import build_student, student_config_dict
from ams.models.checkpoints import load_checkpoint
from ams.update_codec import CODEC_NAMES, edge_decodes, pick_codec
from ams.video import decode_clip
from services.trainer import metrics
from services.trainer.config import TrainerConfig
from services.trainer.downlink import Downlink, Event
from services.trainer.leases import LeaseLost, SessionLeases
from services.trainer.phase_budget import PhaseBudget
from services.trainer.quotas import CallSlots, OpenRateLimiter, TokenBuckets
from services.trainer.session import Session, check_timestamps, resize_frame
from services.trainer.redis_client import StoreFull
from services.trainer.store import SessionStore
from services.trainer.teacher_client import TeacherClient
from ams.v1 import streaming_pb2

log = logging.getLogger(__name__)
SESSION_ID = re.compile(r"[0-9a-f]{32}")    # uuid4().hex, as `open` makes them
INGEST_CHUNK = 32                           # frames of a clip labelled and buffered at a time


class SessionManager:
    def __init__(self, cfg: TrainerConfig, store: SessionStore, teacher: TeacherClient,
                 leases: SessionLeases | None = None):
        self.cfg, self.store, self.teacher, self.leases = cfg, store, teacher, leases
        self.sessions: dict[str, Session] = {}
        self.pending: dict[str, float] = {}   # sid -> wall time of its oldest untrained upload (the EDF key)
        self.device = resolve_device(cfg.device)
        self._wakeup = asyncio.Event()
        # a bounded pool per kind of blocking work, none of them the loop's default executor: training,
        # Redis calls, decoding + buffering uploads, encoding snapshots can never queue behind each other
        self._train_executor = ThreadPoolExecutor(max_workers=cfg.train_workers, thread_name_prefix="ams-train")
        self.budget = PhaseBudget(cfg.phase_share, cfg.t_update_s, cfg.train_workers, cfg.k_iters, cfg.k_min,
                                  cfg.k_max, held=lambda: len(self.sessions))
        self._redis_pool = ThreadPoolExecutor(max_workers=cfg.redis_threads, thread_name_prefix="ams-redis")
        self._ingest_pool = ThreadPoolExecutor(max_workers=cfg.ingest_threads, thread_name_prefix="ams-ingest")
        self._encode_pool = ThreadPoolExecutor(max_workers=cfg.encode_threads, thread_name_prefix="ams-encode")
        self.downlink = Downlink(self._encode_pool, self._redis, cfg.snapshot_interval_s)
        self.calls = CallSlots(cfg.max_calls_per_device)          # a device's calls in flight, of any kind
        self.cert_serials: dict[str, dict[str, float]] = {}       # device id -> certificate serial -> last call
        self.upload_budget = TokenBuckets(cfg.max_upload_fps, cfg.max_clip_frames, "device uploads frames too fast")
        self.training: set[str] = set()   # sessions whose phase is running (never two at once for one session)
        self._phases: set[asyncio.Task] = set()
        self._engine: asyncio.Task | None = None
        self.open_limiter = OpenRateLimiter(cfg.max_opens_per_minute)
        self.draining = False          # set on SIGTERM: no new sessions or streams
        metrics.MAX_SESSIONS.set(cfg.max_sessions)
        metrics.UPDATE_INTERVAL.set(cfg.t_update_s)
        self._set_healthy = None

    # --- lifecycle --------------------------------------------------------------------------------
    async def _redis(self, fn, *args):
        """`fn(*args)` (a blocking Redis call) on the Redis threads."""
        return await asyncio.get_running_loop().run_in_executor(self._redis_pool, functools.partial(fn, *args))

    async def _ingest(self, fn, *args):
        """`fn(*args)` (decoding, resizing, PNG-encoding and buffering a clip) on the ingest threads."""
        return await asyncio.get_running_loop().run_in_executor(self._ingest_pool, functools.partial(fn, *args))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._engine = loop.create_task(self._run_engine())
        if self.leases:
            self._renewer = loop.create_task(self._renew_loop())

    # --- ownership (leases.py) ----------------------------------------------------------------------
    async def _take(self, sid: str) -> int | None:
        """This replica's lease token on `sid` (None without leases, i.e. a single trainer). While
        another replica holds it, that one is asked to hand it over and the call waits for it (at most
        one lease TTL: a dead holder's lease has expired by then), then LeaseLost (UNAVAILABLE: retry)."""
        if self.leases is None:
            return None
        deadline, asked = time.monotonic() + self.cfg.lease_ttl_s, False
        while True:
            token = await self._redis(self.leases.acquire, sid)
            if token is not None:
                return token
            if not asked:
                await self._redis(self.leases.want, sid)
                metrics.HANDOFFS.labels("asked").inc()
                asked = True
            if time.monotonic() > deadline or self.draining:
                holder = await self._redis(self.leases.holder, sid)
                raise LeaseLost(f"session {sid} is served by replica {holder[0] if holder else '?'}; it is moving "
                                f"here, retry")
            await asyncio.sleep(0.2)

    def _forget(self, sid: str) -> None:
        """Stop serving a session here (its state stays in Redis): its update streams end, so its
        device reconnects (through the load balancer, to the session's owner)."""
        self.sessions.pop(sid, None)
        self.pending.pop(sid, None)
        self.downlink.end(sid)
        self.downlink.forget(sid)
        metrics.SESSIONS_ACTIVE.set(len(self.sessions))

    async def _renew_loop(self) -> None:
        """Every third of the lease TTL: renew every held lease (dropping sessions whose lease another
        replica took), and hand over the sessions another replica asked for (not while training)."""
        assert self.leases is not None
        while True:
            await asyncio.sleep(self.cfg.lease_ttl_s / 3)
            try:
                tokens = await self._redis(self.leases.renew, list(self.sessions))
                for sid, token in tokens.items():
                    session = self.sessions.get(sid)
                    if session is not None and token != session.token:
                        log.warning("session %s: lease lost to another replica; dropped here", sid)
                        metrics.HANDOFFS.labels("lost").inc()
                        self._forget(sid)
                for sid in await self._redis(self.leases.wanted, list(self.sessions)):
                    if sid not in self.training:
                        await self._hand_over(sid)
            except errors.Unavailable as exc:   # Redis down: keep serving what is held; writes fail meanwhile
                log.warning("lease renewal: %s", exc)

    async def _hand_over(self, sid: str) -> None:
        session = self.sessions.get(sid)
        if session is None or self.leases is None:
            return
        self._forget(sid)
        try:
            await self._redis(session.checkpoint)   # the next owner resumes Adam's moments exactly
        except errors.AMSError as exc:
            log.warning("session %s: no checkpoint at hand-over (%s)", sid, exc)
        await self._redis(self.leases.release, sid)
        metrics.HANDOFFS.labels("released").inc()
        log.info("session %s at v%d handed over to the replica that asked for it", sid, session.version)

    def watch(self, set_healthy, period_s: float = 2.0) -> None:
        """Report health now and every `period_s` seconds: SERVING iff Redis answers and the teacher
        says SERVING, and the trainer is not draining for shutdown."""
        self._set_healthy = set_healthy

        async def loop():
            healthy = None
            while True:
                try:
                    redis_ok = await self._redis(self.store.ping)
                except errors.Unavailable:
                    redis_ok = False
                teacher_ok = await self.teacher.healthy()
                metrics.DEPENDENCY_UP.labels("redis").set(int(redis_ok))
                metrics.DEPENDENCY_UP.labels("teacher").set(int(teacher_ok))
                ok = redis_ok and teacher_ok and not self.draining
                if ok != healthy:
                    down = [name for name, up in (("redis", redis_ok), ("the teacher", teacher_ok)) if not up]
                    if ok:
                        log.info("redis and the teacher reachable: SERVING")
                    else:
                        log.warning("%s: NOT_SERVING", "draining" if self.draining else " and ".join(down) + " unreachable")
                    set_healthy(ok)
                    healthy = ok
                self._evict_abandoned()
                if redis_ok:
                    await self._drop_revoked()
                await asyncio.sleep(period_s)
        self._watcher = asyncio.get_running_loop().create_task(loop())

    def drain(self) -> None:
        """Shutdown, first step: NOT_SERVING, no new sessions or update streams (UNAVAILABLE: devices
        retry, behind a load balancer on another replica), open update streams ended so their devices
        reconnect; uploads and phases in flight go on until `stop`."""
        self.draining = True
        if self._set_healthy:
            self._set_healthy(False)
        self.downlink.end_all()
        log.info("draining: %d sessions held, %d phases in flight", len(self.sessions), len(self._phases))

    def _evict_abandoned(self) -> None:
        """Drop sessions idle for longer than the session TTL with nobody subscribed (their keys expire too)."""
        now = time.monotonic()
        for sid, session in list(self.sessions.items()):
            busy = sid in self.pending or sid in self.training
            if sid not in self.downlink.subscribers and now - session.last_active > self.cfg.session_ttl_s and not busy:
                log.info("session %s abandoned: evicted", sid)
                self.sessions.pop(sid, None)     # (its lease, no longer renewed, expires)
                self.downlink.forget(sid)
        metrics.SESSIONS_ACTIVE.set(len(self.sessions))

    async def check_not_revoked(self, device_id: str, serials: Sequence[str]) -> None:
        """Unauthenticated when the operator has revoked a certificate of this call (the device's, and
        the load balancer's that forwarded it), checked on every call; Unavailable when Redis cannot
        say. The serials a device calls with are remembered (`cert_serials`: device id -> serial ->
        last call), so the watcher ends its sessions, opened, resumed or restored, once one is revoked."""
        if await self._redis(self.store.revoked, list(serials)):
            raise errors.Unauthenticated("this certificate has been revoked")
        seen = self.cert_serials
        seen.setdefault(device_id, {}).update(dict.fromkeys(serials, time.monotonic()))

    async def _drop_revoked(self) -> None:
        """End the sessions (and update streams) of devices that called with a certificate revoked
        since; forget the serials of devices without sessions here that have not called for a minute."""
        seen = self.cert_serials
        held, now = {s.device_id for s in self.sessions.values()}, time.monotonic()
        for device_id in [d for d, calls in seen.items() if d not in held and now - max(calls.values(), default=0) > 60]:
            del seen[device_id]
        try:
            revoked = await self._redis(self.store.revoked, sorted({s for d in held for s in seen.get(d, ())}))
        except errors.Unavailable:
            return
        for device_id in sorted(d for d in held if revoked & seen.get(d, {}).keys()):
            seen.pop(device_id, None)        # its next call, with a valid certificate, is remembered anew
            for session in [s for s in list(self.sessions.values()) if s.device_id == device_id]:
                log.warning("a certificate of device %s was revoked: closing its session %s", device_id, session.sid)
                await self.close(session.sid, device_id)

    async def stop(self) -> None:
        """Stop training (a phase in flight finishes and commits), then checkpoint every held session,
        so a graceful restart resumes Adam's moments exactly too."""
        for task in (self._engine, getattr(self, "_watcher", None), getattr(self, "_renewer", None)):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*self._phases, return_exceptions=True)
        self._train_executor.shutdown(wait=True)
        for session in list(self.sessions.values()):
            try:
                await self._redis(session.checkpoint)
                if self.leases:   # the next replica need not wait for the lease to expire
                    await self._redis(self.leases.release, session.sid)
            except errors.AMSError as exc:
                log.warning("session %s: no checkpoint at shutdown (%s)", session.sid, exc)

    def _build_model(self, spec: streaming_pb2.StudentSpec) -> tuple[str, dict, torch.nn.Module]:
        try:
            config = json.loads(spec.config_json) if spec.config_json else {}
        except json.JSONDecodeError as exc:
            raise errors.InvalidArgument(f"student config is not JSON: {exc}") from exc
        except RecursionError as exc:
            raise errors.InvalidArgument("student config is nested too deeply") from exc
        if not isinstance(config, dict):
            raise errors.InvalidArgument("student config must be a JSON object")
        if spec.checkpoint:
            name = os.path.basename(spec.checkpoint)
            path = os.path.join(self.cfg.checkpoint_dir, name + ".pt")
            if not os.path.isfile(path):
                raise errors.NotFound(f"no pretrained student checkpoint {name!r} on this trainer")
            architecture, ckpt_config, model = load_checkpoint(path)
            if spec.architecture and spec.architecture != architecture:
                raise errors.InvalidArgument(f"checkpoint {name!r} is a {architecture}, not {spec.architecture}")
            if config and config != ckpt_config:
                raise errors.InvalidArgument(f"checkpoint {name!r} was trained with config {ckpt_config}")
            return architecture, ckpt_config, model
        self._check_custom_student(spec.architecture, config)
        torch.manual_seed(self.cfg.seed)
        model = build_student(spec.architecture, config)
        return spec.architecture, student_config_dict(model), model

    def _check_custom_student(self, architecture: str, config: dict) -> None:
        """A device's own student only when the operator allows it, and within the operator's limits.
        The model is first built on the `meta` device (shapes, no memory), so a client cannot make the
        trainer allocate a huge model; any config the student rejects is INVALID_ARGUMENT."""
        if not self.cfg.allow_custom_students:
            raise errors.PermissionDenied("this trainer serves only its installed checkpoints (StudentSpec.checkpoint)")
        try:
            with torch.device("meta"):
                probe = build_student(architecture, config)
        except (ValueError, TypeError, RuntimeError, ZeroDivisionError, OverflowError) as exc:
            raise errors.InvalidArgument(f"invalid student config: {exc}") from exc
        params = sum(p.numel() for p in probe.parameters())
        if params > self.cfg.max_student_params:
            raise errors.InvalidArgument(f"student has {params} parameters; this trainer allows {self.cfg.max_student_params}")
        cfg = student_config_dict(probe)
        h, w = cfg.get("input_height", 0), cfg.get("input_width", 0)
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 and h * w <= self.cfg.max_student_pixels):
            raise errors.InvalidArgument(f"student input {h}×{w} is not within 1..{self.cfg.max_student_pixels} pixels")

    async def _check_classes(self, config: dict) -> None:
        """A student must have an output for every class the teacher labels, and no more: a session whose
        counts differ is refused at once (FAILED_PRECONDITION, both counts), not by failing every phase."""
        teacher = await self.teacher.classes()
        student = config.get("num_classes")
        if teacher and isinstance(student, int) and student != len(teacher):
            raise errors.FailedPrecondition(
                f"the teacher labels {len(teacher)} classes ({', '.join(teacher)}); this student has {student}: "
                f"open the session with a student of {len(teacher)} classes, or run the teacher it was made for")

    async def open(self, device_id: str, spec: streaming_pb2.StudentSpec, resume_sid: str,
                   codecs: Sequence[int] = (), label_hints: bool = False) -> tuple[Session, bool]:
        """Resume `resume_sid` if it still exists for this device (and its update codec is one the edge
        decodes), else open a new session whose codec is the first of AMS_UPDATE_CODECS the edge offers.
        `label_hints`: the edge carries label hints (sent while the session wants them)."""
        if self.draining:
            raise errors.Unavailable("this trainer is shutting down; retry")
        codec = pick_codec(self.cfg.codec_preference(), list(codecs))
        if codec is None:
            raise errors.InvalidArgument(f"this trainer sends updates as {self.cfg.update_codecs}; the edge "
                                         f"decodes none of them")
        if resume_sid:
            try:
                session = await self.get(resume_sid, device_id)
                if session.codec in edge_decodes(codecs):
                    session.accepts_hints = label_hints
                    return session, True
                log.info("session %s uses a codec the edge no longer decodes; opening a new one", session.sid)
            except errors.NotFound:
                log.info("session %.40r expired; opening a new one for %s", resume_sid, device_id)
        self.open_limiter.acquire(device_id)
        own = sorted((s for s in self.sessions.values() if s.device_id == device_id), key=lambda s: s.opened_at)
        replaced = own[:max(0, len(own) - self.cfg.max_sessions_per_device + 1)]
        if len(self.sessions) - len(replaced) >= self.cfg.max_sessions:
            raise errors.ResourceExhausted(f"trainer serves at most {self.cfg.max_sessions} sessions")
        architecture, config, model = await self._ingest(self._build_model, spec)
        await self._check_classes(config)
        for old in replaced:   # the device's own oldest session makes room (quota: max_sessions_per_device)
            log.info("device %s opens a new session: closing its session %s", device_id, old.sid)
            await self.close(old.sid, device_id)
        sid = uuid.uuid4().hex
        session = Session(sid, device_id, architecture, config, model, self.store, self.cfg, device=self.device,
                          codec=codec)
        session.accepts_hints, session.budget = label_hints, self.budget
        session.token = await self._take(sid)
        written = await self._redis(self.store.create, sid, {**session.ingest_meta(), "config_json": json.dumps(config)},
                                          model.state_dict(), session.adam, session.token)
        metrics.STATE_BYTES.inc(written)
        self.sessions[sid] = session
        metrics.SESSIONS_OPENED.inc()
        metrics.SESSIONS_BY_CODEC.labels(CODEC_NAMES[codec]).inc()
        metrics.SESSIONS_ACTIVE.set(len(self.sessions))
        log.info("opened session %s for device %s (%s, %d params, %s updates)", sid, device_id, architecture,
                 session.num_params, CODEC_NAMES[codec])
        return session, False

    async def get(self, sid: str, device_id: str) -> Session:
        """The session, restored from Redis after a trainer restart; NotFound / PermissionDenied."""
        if not SESSION_ID.fullmatch(sid):    # never a Redis lookup (nor a log line) for a made-up 1 MB id
            raise errors.NotFound("unknown or expired session")
        session = self.sessions.get(sid)
        if session is not None and self.leases is not None:   # still ours? (one round trip; renews the lease)
            token = await self._redis(self.leases.acquire, sid)
            if token != session.token:       # taken over meanwhile: what is held here is stale
                self._forget(sid)
                session = None
        if session is None:
            owner = await self._redis(self.store.owner, sid)   # whose it is, before any lease or restore
            if owner is None:
                raise errors.NotFound("unknown or expired session")
            if owner != device_id:
                raise errors.PermissionDenied("session belongs to another device")
            token = await self._take(sid)   # the lease first: nobody else writes while this reads
            session = await self._redis(self._restore, sid, token)
            if session.last_clip_seq > session.trained_clip_seq:   # clips buffered before the restart: train on them
                self._schedule(session)
        if session.device_id != device_id:
            raise errors.PermissionDenied("session belongs to another device")
        session.last_active = time.monotonic()
        return session

    def _restore(self, sid: str, token: int | None = None) -> Session:
        ckpt = self.store.load_checkpoint(sid)
        if ckpt is None:
            raise errors.NotFound(f"unknown or expired session {sid}")
        session = Session.from_checkpoint(sid, ckpt, self.store, self.cfg, self.device)
        session.token, session.budget = token, self.budget
        if sid in self.sessions:
            return self.sessions[sid]
        self.sessions[sid] = session
        metrics.SESSIONS_ACTIVE.set(len(self.sessions))
        log.info("restored session %s at version %d from redis (checkpoint v%d + %d updates; Adam state of v%d)",
                 sid, session.version, session.checkpoint_version, session.version - session.checkpoint_version,
                 session.checkpoint_version)
        return session

    async def close(self, sid: str, device_id: str) -> None:
        session = await self.get(sid, device_id)
        self._forget(sid)
        await self._redis(self.store.delete, sid, session.token)
        if self.leases:
            await self._redis(self.leases.release, sid)

    # --- uplink: Algorithm 1 lines 5-9 ------------------------------------------------------------
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
            return 0, len(await self._redis(self.store.frame_keys, session.sid))
        try:
            check_timestamps(timestamps, session.latest_ts)
        except errors.OutOfRange:
            metrics.QUOTA_REFUSALS.labels("timestamps").inc()
            raise
        if session.uploading:
            metrics.QUOTA_REFUSALS.labels("upload_in_flight").inc()
            raise errors.ResourceExhausted("this session has an upload in flight: one at a time")
        try:
            self.upload_budget.acquire(session.device_id, len(timestamps))
        except errors.ResourceExhausted:
            metrics.QUOTA_REFUSALS.labels("upload_rate").inc()
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
        frames: list = await self._ingest(self._decode, session, data, len(timestamps))
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
                buffered = await self._ingest(session.ingest_part, [times[i] for i in keep], [part[i] for i in keep],
                                              [pair[0] for pair in pairs], [pair[1] for pair in pairs])
            except StoreFull:
                metrics.QUOTA_REFUSALS.labels("store_full").inc()
                log.error("session %s: clip %d refused, Redis is at its maxmemory", session.sid, clip_seq)
                raise
            accepted += len(keep)
        metrics.TEACHER_SECONDS.observe(labelling_s)
        if not accepted:
            raise errors.InvalidArgument("the teacher could not label any frame of this clip")
        await self._ingest(session.end_clip, clip_seq, timestamps)
        metrics.BUFFERED_FRAMES.observe(buffered)
        if session.control() != before:
            self.downlink.publish(session.sid, Event("control", session.trained_clip_seq, control=session.control()))
        if newest is not None and session.accepts_hints and session.wants_hint():
            hint = await self._ingest(make_hint, clip_seq, *newest)
            self.downlink.publish(session.sid, Event("hint", session.trained_clip_seq, hint=hint))
        session.upload_times.setdefault(clip_seq, time.monotonic())
        self._schedule(session)
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

    def _schedule(self, session: Session) -> None:
        """Queue a phase for the session, keeping the deadline of its oldest untrained upload."""
        self.pending.setdefault(session.sid, min(session.upload_times.values(), default=time.monotonic()))
        metrics.SESSIONS_WAITING.set(len(self.pending))
        self._wakeup.set()

    # --- training engine: Algorithm 1 lines 10-17 --------------------------------------------------
    async def _run_engine(self) -> None:
        """Start the phase of the waiting session with the earliest deadline whenever one of the
        `train_workers` is free; a session already training waits for its phase to end."""
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while len(self.training) < self.cfg.train_workers:
                ready = [sid for sid in self.pending if sid not in self.training]
                if not ready:
                    break
                sid = min(ready, key=self.pending.__getitem__)   # earliest deadline first
                del self.pending[sid]
                metrics.SESSIONS_WAITING.set(len(self.pending))
                session = self.sessions.get(sid)
                if session is None:
                    continue
                self.training.add(sid)
                metrics.PHASES_RUNNING.set(len(self.training))
                task = loop.create_task(self._train_once(loop, session))
                self._phases.add(task)
                task.add_done_callback(functools.partial(self._phase_done, sid=sid))

    def _phase_done(self, task: asyncio.Task, sid: str) -> None:
        self._phases.discard(task)
        self.training.discard(sid)
        metrics.PHASES_RUNNING.set(len(self.training))
        self._wakeup.set()

    async def _train_once(self, loop: asyncio.AbstractEventLoop, session: Session) -> None:
        """One transactional phase; a failure is counted and leaves the session as it was."""
        seq_before, control_before, scored_before = session.last_clip_seq, session.control(), session.pace.scored
        try:
            with metrics.PHASE_SECONDS.time():
                outcome = await loop.run_in_executor(self._train_executor, session.run_phase)
        except Exception as exc:  # noqa: BLE001 - one session's failure never stops another's
            if session.sid not in self.sessions:   # closed (or replaced by its device) meanwhile: nothing to do
                log.info("session %s closed during its phase; phase dropped", session.sid)
                return
            log.exception("training phase failed for session %s (rolled back, nothing sent)", session.sid)
            metrics.PHASE_FAILURES.inc()
            if isinstance(exc, (errors.FailedPrecondition, LeaseLost)):   # the stored state moved on, or its
                self._forget(session.sid)                                 # owner: reload it on next use
            self._processed(session, seq_before, Event("control", seq_before, control=session.control()))
            return
        if session.pace.scored > scored_before and session.pace.last_miou is not None:
            metrics.NEWEST_MIOU.observe(session.pace.last_miou)
        if outcome is None:
            self._processed(session, session.trained_clip_seq,
                            Event("control", session.trained_clip_seq, control=session.control()))
            return
        metrics.UPDATES.inc()
        metrics.STATE_BYTES.inc(outcome.stats["state_bytes"])
        stats, message = outcome.stats, outcome.message
        metrics.PHASE_ITERATIONS.observe(stats["iterations"])
        log.info("session %s phase %d: v%d, %d frames, K %d, loss %.4f -> %.4f in %.1fs (frames read in %.2fs, %d "
                 "bytes stored)", session.sid, message.phase, message.new_version, stats["frames"], stats["iterations"],
                 stats["loss_first"], stats["loss_last"], stats["seconds"], stats["load_seconds"], stats["state_bytes"])
        self._processed(session, outcome.seq_seen, Event("update", outcome.seq_seen, update=message), lag=True)
        if stats.get("scene_change"):
            metrics.PACE_EVENTS.labels("scene_change").inc()
        elif session.pace.enabled and not session.pace.unsettled and session.control() != control_before:
            metrics.PACE_EVENTS.labels("settled").inc()
        if session.control() != control_before:   # the pace controller settled the session, or saw a scene change
            self.downlink.publish(session.sid, Event("control", outcome.seq_seen, control=session.control()))

    def _processed(self, session: Session, seq: int, event: Event, lag: bool = False) -> None:
        """Clips up to `seq` are done with (the device keeps its model if no update came of them)."""
        session.trained_clip_seq = max(session.trained_clip_seq, seq)
        now = time.monotonic()
        for clip_seq in [c for c in session.upload_times if c <= seq]:
            uploaded = session.upload_times.pop(clip_seq)
            if lag:
                metrics.UPDATE_LAG.observe(now - uploaded)
        if session.sid in self.pending and session.upload_times:   # queued again meanwhile: its deadline moves on
            self.pending[session.sid] = min(session.upload_times.values())
        self.downlink.publish(session.sid, event)

    # --- downlink (downlink.py) -------------------------------------------------------------------
    def subscribe(self, session: Session, held_version: int, refused_version: int = 0) -> AsyncIterator[Event]:
        """The session's update stream (catch-up, then live events); it ends any stream before it."""
        if self.draining:
            raise errors.Unavailable("this trainer is shutting down; retry")
        return self.downlink.subscribe(session, held_version, refused_version, self.store.load_updates)
