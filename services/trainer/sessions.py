"""The trainer's core, independent of gRPC: the sessions this replica serves and their lifecycle
(open, get or restore, close), built from the rooms that do the work:

  ingest.py   uploads: checks, decode → teacher → buffer          engine.py  EDF scheduling of phases
  downlink.py update streams, catch-up, shared snapshots           replica.py leases, health, revocation, drain
  students.py which student a device may have                      session.py one session's state (phase.py: its phase)

Blocking work runs on a bounded pool per kind, none of them the loop's default executor: training (the
engine's), Redis calls, ingest (decode + buffer), snapshot encoding, so none can queue behind another.
"""
from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Sequence

from ams import errors, logs
from ams.device import resolve_device
from ams.update_codec import CODEC_NAMES, edge_decodes, pick_codec
from services.trainer import metrics, students
from services.trainer.config import TrainerConfig
from services.trainer.downlink import Downlink
from services.trainer.engine import Engine
from services.trainer.events import Event
from services.trainer.ingest import Ingest
from services.trainer.leases import SessionLeases
from services.trainer.quotas import CallSlots, OpenRateLimiter
from services.trainer.replica import Replica
from services.trainer.serde import StudentSpec
from services.trainer.session import Session
from services.trainer.store import SessionStore
from services.trainer.teacher_client import TeacherClient

log = logging.getLogger(__name__)
SESSION_ID = re.compile(r"[0-9a-f]{32}")    # uuid4().hex, as `open` makes them


class SessionManager:
    def __init__(self, cfg: TrainerConfig, store: SessionStore, teacher: TeacherClient,
                 leases: SessionLeases | None = None):
        self.cfg, self.store, self.teacher = cfg, store, teacher
        self.sessions: dict[str, Session] = {}
        self.device = resolve_device(cfg.device)
        self._redis_pool = ThreadPoolExecutor(max_workers=cfg.redis_threads, thread_name_prefix="ams-redis")
        self._ingest_pool = ThreadPoolExecutor(max_workers=cfg.ingest_threads, thread_name_prefix="ams-ingest")
        self._encode_pool = ThreadPoolExecutor(max_workers=cfg.encode_threads, thread_name_prefix="ams-encode")
        self.downlink = Downlink(self._encode_pool, self.redis, cfg.snapshot_interval_s)
        self.engine = Engine(cfg, self.sessions, self.downlink, self.forget)
        self.ingest = Ingest(cfg, teacher, self.downlink, self._ingest_pool, self.redis, store.frame_keys,
                             self.engine.schedule)
        self.replica = Replica(self, leases)
        self.calls = CallSlots(cfg.max_calls_per_device)          # a device's calls in flight, of any kind
        self.open_limiter = OpenRateLimiter(cfg.max_opens_per_minute)
        metrics.MAX_SESSIONS.set(cfg.max_sessions)
        metrics.UPDATE_INTERVAL.set(cfg.t_update_s)
        metrics.track_sessions(lambda: [(c.sampling_rate_fps, c.update_interval_s)
                                        for c in (s.control() for s in list(self.sessions.values()))])

    async def redis(self, fn, *args):
        """`fn(*args)` (a blocking Redis call) on the Redis threads."""
        return await asyncio.get_running_loop().run_in_executor(self._redis_pool, functools.partial(fn, *args))

    # --- lifecycle of the trainer -----------------------------------------------------------------
    def start(self) -> None:
        self.engine.start()
        self.replica.start()

    def watch(self, set_healthy, period_s: float = 2.0) -> None:
        self.replica.watch(set_healthy, period_s)

    def drain(self) -> None:
        self.replica.drain()

    @property
    def draining(self) -> bool:
        return self.replica.draining

    async def stop(self) -> None:
        """Stop training (a phase in flight finishes and commits), then checkpoint every held session,
        so a graceful restart resumes Adam's moments exactly too."""
        await self.replica.stop()
        await self.engine.stop()
        await self.replica.checkpoint_all()

    async def check_not_revoked(self, device_id: str, serials: Sequence[str]) -> None:
        await self.replica.check_not_revoked(device_id, serials)

    def forget(self, sid: str) -> None:
        """Stop serving a session here (its state stays in the store): its update streams end, so its
        device reconnects (through the load balancer, to the session's owner)."""
        self.sessions.pop(sid, None)
        self.engine.drop(sid)
        self.downlink.end(sid)
        self.downlink.forget(sid)
        metrics.SESSIONS_ACTIVE.set(len(self.sessions))

    # --- lifecycle of a session -------------------------------------------------------------------
    async def open(self, device_id: str, spec: StudentSpec, resume_sid: str,
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
        loop = asyncio.get_running_loop()
        architecture, config, model = await loop.run_in_executor(self._ingest_pool, students.build_model, self.cfg, spec)
        students.check_classes(await self.teacher.classes(), config)
        for old in replaced:   # the device's own oldest session makes room (quota: max_sessions_per_device)
            log.info("device %s opens a new session: closing its session %s", device_id, old.sid)
            await self.close(old.sid, device_id)
        sid = uuid.uuid4().hex
        logs.bind(session=sid)
        session = Session(sid, device_id, architecture, config, model, self.store, self.cfg, device=self.device,
                          codec=codec)
        session.accepts_hints, session.budget = label_hints, self.engine.budget
        session.token = await self.replica.take(sid)
        written = await self.redis(self.store.create, sid, {**session.ingest_meta(), "config_json": json.dumps(config)},
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
        """The session, restored from the store after a trainer restart; NotFound / PermissionDenied."""
        if not SESSION_ID.fullmatch(sid):    # never a Redis lookup (nor a log line) for a made-up 1 MB id
            raise errors.NotFound("unknown or expired session")
        session = self.sessions.get(sid)
        if session is not None and not await self.replica.still_ours(sid, session.token):
            self.forget(sid)                 # taken over meanwhile: what is held here is stale
            session = None
        if session is None:
            owner = await self.redis(self.store.owner, sid)   # whose it is, before any lease or restore
            if owner is None:
                raise errors.NotFound("unknown or expired session")
            if owner != device_id:
                raise errors.PermissionDenied("session belongs to another device")
            token = await self.replica.take(sid)   # the lease first: nobody else writes while this reads
            session = await self.redis(self._restore, sid, token)
            if session.last_clip_seq > session.trained_clip_seq:   # clips buffered before the restart: train on them
                self.engine.schedule(session)
        if session.device_id != device_id:
            raise errors.PermissionDenied("session belongs to another device")
        session.last_active = time.monotonic()
        logs.bind(session=sid)               # this call's later records carry the session
        return session

    def _restore(self, sid: str, token: int | None = None) -> Session:
        ckpt = self.store.load_checkpoint(sid)
        if ckpt is None:
            raise errors.NotFound(f"unknown or expired session {sid}")
        session = Session.from_checkpoint(sid, ckpt, self.store, self.cfg, self.device)
        session.token, session.budget = token, self.engine.budget
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
        self.forget(sid)
        await self.redis(self.store.delete, sid, session.token)
        await self.replica.release(sid)

    # --- uplink and downlink ----------------------------------------------------------------------
    async def upload(self, session: Session, clip_seq: int, codec: str, data: bytes,
                     timestamps: list[float]) -> tuple[int, int]:
        """One clip of the session decoded, labelled and buffered (ingest.py): (accepted, buffered)."""
        return await self.ingest.upload(session, clip_seq, codec, data, timestamps)

    def subscribe(self, session: Session, held_version: int, refused_version: int = 0) -> AsyncIterator[Event]:
        """The session's update stream (catch-up, then live events); it ends any stream before it."""
        if self.draining:
            raise errors.Unavailable("this trainer is shutting down; retry")
        return self.downlink.subscribe(session, held_version, refused_version, self.store.load_updates)
