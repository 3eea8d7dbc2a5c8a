"""Session lifecycle and the training engine: the trainer's core, independent of gRPC.

One training thread (the "accelerator") serves every session round-robin, one phase per turn
(AMS App. E); the asyncio loop only does I/O, so training never blocks the server.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator

import torch

from ams import errors
from ams.update_codec import encode_update
from ams.video import decode_clip
from ams.models import build_student, student_config_dict
from services.trainer import metrics
from services.trainer.config import TrainerConfig
from services.trainer.session import Control, Session
from services.trainer.store import SessionStore
from services.trainer.teacher_client import TeacherClient
from ams.v1 import streaming_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Something to push to a device: an update, a snapshot request or a control change."""

    kind: str                                   # "update" | "control" | "snapshot"
    processed_clip_seq: int
    update: streaming_pb2.ModelUpdate | None = None
    control: Control | None = None


class SessionManager:
    def __init__(self, cfg: TrainerConfig, store: SessionStore, teacher: TeacherClient):
        self.cfg, self.store, self.teacher = cfg, store, teacher
        self.sessions: dict[str, Session] = {}
        self.subscribers: dict[str, set[asyncio.Queue]] = collections.defaultdict(set)
        self.pending: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._wakeup = asyncio.Event()
        self._train_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ams-train")
        self._engine: asyncio.Task | None = None

    # --- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._engine = asyncio.get_running_loop().create_task(self._run_engine())

    def watch(self, set_healthy, period_s: float = 2.0) -> None:
        """Report health (SERVING iff Redis answers) now and every `period_s` seconds."""
        async def loop():
            healthy = None
            while True:
                try:
                    ok = await asyncio.to_thread(self.store.ping)
                except errors.Unavailable:
                    ok = False
                if ok != healthy:
                    (log.info if ok else log.warning)("redis %s", "reachable: serving" if ok else "unreachable: NOT_SERVING")
                    set_healthy(ok)
                    healthy = ok
                self._evict_abandoned()
                await asyncio.sleep(period_s)
        self._watcher = asyncio.get_running_loop().create_task(loop())

    def _evict_abandoned(self) -> None:
        """Drop sessions idle for longer than the session TTL with nobody subscribed (their keys expire too)."""
        now = time.monotonic()
        for sid, session in list(self.sessions.items()):
            if not self.subscribers.get(sid) and now - session.last_active > self.cfg.session_ttl_s and sid not in self.pending:
                log.info("session %s abandoned: evicted", sid)
                self.sessions.pop(sid, None)
                self.subscribers.pop(sid, None)
        metrics.SESSIONS_ACTIVE.set(len(self.sessions))

    async def stop(self) -> None:
        for task in (self._engine, getattr(self, "_watcher", None)):
            if task:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._train_executor.shutdown(wait=True)

    def _build_model(self, spec: streaming_pb2.StudentSpec) -> tuple[str, dict, torch.nn.Module]:
        try:
            config = json.loads(spec.config_json) if spec.config_json else {}
        except json.JSONDecodeError as exc:
            raise errors.InvalidArgument(f"student config is not JSON: {exc}") from exc
        if spec.checkpoint:
            name = os.path.basename(spec.checkpoint)
            path = os.path.join(self.cfg.checkpoint_dir, name + ".pt")
            if not os.path.isfile(path):
                raise errors.NotFound(f"no pretrained student checkpoint {name!r} on this trainer")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            if spec.architecture and spec.architecture != ckpt["architecture"]:
                raise errors.InvalidArgument(f"checkpoint {name!r} is a {ckpt['architecture']}, not {spec.architecture}")
            if config and config != ckpt["config"]:
                raise errors.InvalidArgument(f"checkpoint {name!r} was trained with config {ckpt['config']}")
            model = build_student(ckpt["architecture"], ckpt["config"])
            model.load_state_dict(ckpt["state_dict"])
            return ckpt["architecture"], student_config_dict(model), model
        try:
            torch.manual_seed(self.cfg.seed)
            model = build_student(spec.architecture, config)
        except (ValueError, TypeError) as exc:
            raise errors.InvalidArgument(str(exc)) from exc
        return spec.architecture, student_config_dict(model), model

    async def open(self, device_id: str, spec: streaming_pb2.StudentSpec, resume_sid: str) -> tuple[Session, bool]:
        """Resume `resume_sid` if it still exists for this device, else open a new session."""
        if resume_sid:
            try:
                return await self.get(resume_sid, device_id), True
            except errors.NotFound:
                log.info("session %s expired; opening a new one for %s", resume_sid, device_id)
        if len(self.sessions) >= self.cfg.max_sessions:
            raise errors.ResourceExhausted(f"trainer serves at most {self.cfg.max_sessions} sessions")
        architecture, config, model = await asyncio.to_thread(self._build_model, spec)
        sid = uuid.uuid4().hex
        session = Session(sid, device_id, architecture, config, model, self.store, self.cfg)
        await asyncio.to_thread(self.store.save_training_state, sid, model.state_dict(), session.adam,
                                {**session.meta(), "config_json": json.dumps(config)}, None)
        self.sessions[sid] = session
        metrics.SESSIONS_OPENED.inc()
        metrics.SESSIONS_ACTIVE.set(len(self.sessions))
        log.info("opened session %s for device %s (%s, %d params)", sid, device_id, architecture, session.num_params)
        return session, False

    async def get(self, sid: str, device_id: str) -> Session:
        """The session, restored from Redis after a trainer restart; NotFound / PermissionDenied."""
        session = self.sessions.get(sid)
        if session is None:
            session = await asyncio.to_thread(self._restore, sid)
        if session.device_id != device_id:
            raise errors.PermissionDenied("session belongs to another device")
        session.last_active = time.monotonic()
        return session

    def _restore(self, sid: str) -> Session:
        if not sid or not self.store.exists(sid):
            raise errors.NotFound(f"unknown or expired session {sid!r}")
        meta = self.store.load_meta(sid)
        state, adam = self.store.load_training_state(sid)
        if state is None:
            raise errors.NotFound(f"session {sid!r} has no stored model")
        model = build_student(meta["architecture"], json.loads(meta["config_json"]))
        model.load_state_dict(state)
        session = Session(sid, meta["device_id"], meta["architecture"], json.loads(meta["config_json"]), model,
                          self.store, self.cfg, version=int(meta["version"]), adam=adam)
        session.restore_meta(meta)
        self.sessions.setdefault(sid, session)
        metrics.SESSIONS_ACTIVE.set(len(self.sessions))
        log.info("restored session %s at version %d from redis", sid, session.version)
        return self.sessions[sid]

    async def close(self, sid: str, device_id: str) -> None:
        await self.get(sid, device_id)
        self.sessions.pop(sid, None)
        self.pending.pop(sid, None)
        for queue in self.subscribers.pop(sid, set()):
            queue.put_nowait(None)
        await asyncio.to_thread(self.store.delete, sid)
        metrics.SESSIONS_ACTIVE.set(len(self.sessions))

    # --- uplink: Algorithm 1 lines 5-9 ------------------------------------------------------------
    async def upload(self, session: Session, clip_seq: int, codec: str, data: bytes,
                     timestamps: list[float]) -> tuple[int, int]:
        """Decode, label and buffer one clip; schedule a training phase. Returns (accepted, buffered)."""
        if codec.lower() != "h264":
            raise errors.InvalidArgument(f"unsupported clip codec {codec!r} (want h264)")
        if clip_seq < 1:
            raise errors.InvalidArgument("clip_seq starts at 1")
        if not timestamps or len(timestamps) > self.cfg.max_clip_frames:
            raise errors.InvalidArgument(f"a clip needs 1..{self.cfg.max_clip_frames} timestamps, got {len(timestamps)}")
        if not all(math.isfinite(t) and t >= 0 for t in timestamps):
            raise errors.InvalidArgument("timestamps must be finite, non-negative video seconds")
        if clip_seq <= session.last_clip_seq:  # re-delivery after a retry: already buffered
            return 0, len(await asyncio.to_thread(self.store.frame_keys, session.sid))
        metrics.UPLOAD_BYTES.inc(len(data))
        frames = await asyncio.to_thread(decode_clip, data, len(timestamps))
        with metrics.TEACHER_SECONDS.time():
            labelled = await self.teacher.label(frames, timestamps)
        keep = [i for i, item in enumerate(labelled) if item is not None]
        metrics.FRAMES_RECEIVED.inc(len(frames))
        if not keep:
            raise errors.InvalidArgument("the teacher could not label any frame of this clip")
        buffered, control_changed = await asyncio.to_thread(
            session.ingest, clip_seq, [timestamps[i] for i in keep], [frames[i] for i in keep],
            [labelled[i][0] for i in keep], [labelled[i][1] for i in keep])
        if control_changed:
            self._publish(session.sid, Event("control", session.trained_clip_seq, control=session.control()))
        self.pending[session.sid] = None
        self._wakeup.set()
        return len(keep), buffered

    # --- training engine: Algorithm 1 lines 10-17 --------------------------------------------------
    async def _run_engine(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.pending:
                sid, _ = self.pending.popitem(last=False)   # round-robin: one phase per session per turn
                session = self.sessions.get(sid)
                if session is not None:
                    await self._train_once(loop, session)

    async def _train_once(self, loop: asyncio.AbstractEventLoop, session: Session) -> None:
        try:
            with metrics.PHASE_SECONDS.time():
                update, stats = await loop.run_in_executor(self._train_executor, session.train_phase)
            if update is None:
                self._publish(session.sid, Event("control", session.trained_clip_seq, control=session.control()))
                return
            message = encode_update(update)
            _, state = session.state_dict_copy()
            await asyncio.to_thread(self.store.save_training_state, session.sid, state, session.adam,
                                    session.meta(), message.SerializeToString())
            metrics.UPDATES.inc()
            log.info("session %s phase %d: v%d, %d frames, loss %.4f -> %.4f in %.1fs", session.sid, update.phase,
                     update.new_version, stats["frames"], stats["loss_first"], stats["loss_last"], stats["seconds"])
            self._publish(session.sid, Event("update", session.trained_clip_seq, update=message))
        except Exception:  # noqa: BLE001 - one session's failure never stops another's
            log.exception("training phase failed for session %s", session.sid)
            metrics.SESSION_FAILURES.inc()
            session.trained_clip_seq = session.last_clip_seq  # the device keeps its model and goes on
            self._publish(session.sid, Event("control", session.trained_clip_seq, control=session.control()))

    # --- downlink ---------------------------------------------------------------------------------
    def _publish(self, sid: str, event: Event) -> None:
        for queue in self.subscribers.get(sid, ()):
            queue.put_nowait(event)

    async def catch_up(self, session: Session, held_version: int) -> list[streaming_pb2.ModelUpdate | None]:
        """The stored updates that bring `held_version` to the current version, or [None] if a
        snapshot is needed (the chain is incomplete or the device is ahead of this trainer)."""
        current = session.version
        if held_version == current:
            return []
        if held_version > current:
            return [None]
        chain = {}
        for raw in await asyncio.to_thread(self.store.load_updates, session.sid):
            msg = streaming_pb2.ModelUpdate.FromString(raw)
            chain[msg.base_version] = msg
        out, version = [], held_version
        while version < current:
            if version not in chain:
                return [None]
            out.append(chain[version])
            version = chain[version].new_version
        return out

    async def subscribe(self, session: Session, held_version: int) -> AsyncIterator[Event | tuple[str, object]]:
        """Catch-up first (updates or a snapshot marker), then live events until the session closes."""
        queue: asyncio.Queue = asyncio.Queue()
        self.subscribers[session.sid].add(queue)
        try:
            last_sent = held_version
            yield Event("control", session.trained_clip_seq, control=session.control())
            for item in await self.catch_up(session, held_version):
                if item is None:
                    version, _ = session.state_dict_copy()
                    yield Event("snapshot", session.trained_clip_seq)
                    last_sent = version
                    break
                yield Event("update", session.trained_clip_seq, update=item)
                last_sent = item.new_version
            while True:
                event = await queue.get()
                if event is None:
                    return
                if event.kind == "update":
                    if event.update.new_version <= last_sent:
                        continue
                    if event.update.base_version != last_sent:   # a gap: resync with a snapshot
                        yield Event("snapshot", event.processed_clip_seq)
                        last_sent = session.version
                        continue
                    last_sent = event.update.new_version
                yield event
        finally:
            self.subscribers[session.sid].discard(queue)
