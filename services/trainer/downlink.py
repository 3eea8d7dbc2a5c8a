"""The downlink: each session's one live update stream, its catch-up, and shared snapshots.

- **One live stream per session.** A new StreamUpdates call for a session ends the one before it
  (a device reconnecting has left the old one behind; a device opening many holds one).
- **Snapshots encoded once per version, off the event loop, and shared.** A snapshot (the whole
  model) is built on the trainer's encode threads and kept serialized, as the bytes of its
  `ModelSnapshot`, for the few most recent (session, version) pairs: every stream and OpenSession
  reply that needs it is framed around the same bytes, never re-encoded.
- **Catch-up snapshots rate-limited per session** (2 at once, then one per AMS_SNAPSHOT_INTERVAL_S):
  a stream that asks for one more is RESOURCE_EXHAUSTED; updates and control messages are never
  limited, nor the snapshot that mends a gap in a live stream (the trainer's own doing).
"""
from __future__ import annotations

import asyncio
import collections
import functools
import logging
from concurrent.futures import Executor
from typing import AsyncIterator, Awaitable, Callable

from ams import errors
from services.trainer import metrics, quotas, serde
from services.trainer.events import Event
from services.trainer.quotas import TokenBuckets
from services.trainer.session import Session

log = logging.getLogger(__name__)
SNAPSHOTS_CACHED = 4      # (session, version) snapshots kept serialized; each is one whole model
SNAPSHOT_BURST = 2
END_GRACE_S = 2.0         # a stream told to end that is still stuck in a write then is cancelled


class Downlink:
    def __init__(self, encode_pool: Executor, run_redis: Callable[..., Awaitable], snapshot_interval_s: float):
        self.encode_pool, self.run_redis = encode_pool, run_redis
        self.subscribers: dict[str, tuple[asyncio.Queue, asyncio.Task | None]] = {}   # sid -> its one live stream
        self._snapshots: collections.OrderedDict[tuple[str, int], asyncio.Future] = collections.OrderedDict()
        self.snapshot_budget = (TokenBuckets(1.0 / snapshot_interval_s, SNAPSHOT_BURST,
                                             "snapshots for this session are rate-limited")
                                if snapshot_interval_s > 0 else None)

    # --- streams ----------------------------------------------------------------------------------
    def publish(self, sid: str, event: Event) -> None:
        if sid in self.subscribers:
            self.subscribers[sid][0].put_nowait(event)

    def end(self, sid: str) -> None:
        """End the session's live stream (its device reconnects). One stuck writing to a device that
        does not read (a snapshot it asked for and never takes) is cancelled after END_GRACE_S."""
        queue, task = self.subscribers.pop(sid, (None, None))
        if queue is not None:
            queue.put_nowait(None)
        if task is not None:
            asyncio.get_running_loop().call_later(END_GRACE_S, task.cancel)

    def end_all(self) -> None:
        for sid in list(self.subscribers):
            self.end(sid)

    # --- snapshots --------------------------------------------------------------------------------
    async def snapshot(self, session: Session) -> tuple[int, bytes]:
        """(version, serialized ModelSnapshot) of the session's current version: encoded once, on the
        encode threads, however many callers want it at once."""
        key = (session.sid, session.version)
        future = self._snapshots.get(key)
        if future is None or (future.done() and future.exception() is not None):
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self.encode_pool, functools.partial(serde.snapshot_bytes, session))
            self._snapshots[key] = future
            while len(self._snapshots) > SNAPSHOTS_CACHED:
                self._snapshots.popitem(last=False)
        self._snapshots.move_to_end(key)
        return await asyncio.shield(future)

    def forget(self, sid: str) -> None:
        for key in [k for k in self._snapshots if k[0] == sid]:
            del self._snapshots[key]

    # --- catch-up and live events -----------------------------------------------------------------
    async def catch_up(self, session: Session, held_version: int, load_updates) -> list[Event | None]:
        """The stored updates that bring `held_version` to the current version, or [None] if a
        snapshot is needed (the chain is incomplete or the device is ahead of this trainer)."""
        current = session.version
        if held_version == current:
            return []
        if held_version > current:
            return [None]
        chain = {}
        for raw in await self.run_redis(load_updates, session.sid):
            event = Event.of_update(session.trained_clip_seq, raw)
            chain[event.base_version] = event
        out: list[Event | None] = []
        version = held_version
        while version < current:
            if version not in chain:
                return [None]
            out.append(chain[version])
            version = chain[version].new_version
        return out

    async def subscribe(self, session: Session, held_version: int, refused_version: int,
                        load_updates) -> AsyncIterator[Event]:
        """Catch-up first (updates or a snapshot marker), then live events until the session closes
        or another stream of it starts. A device that refused an update gets a snapshot, never the
        chain it could not apply."""
        sid = session.sid
        self.end(sid)                    # one live stream per session: the newest wins
        queue: asyncio.Queue = asyncio.Queue()
        entry = (queue, asyncio.current_task())   # the task serving this call (gRPC's, one per call)
        self.subscribers[sid] = entry
        if refused_version:
            metrics.UPDATES_REFUSED.inc()
            log.warning("session %s: device refused the update to v%d; resyncing it by snapshot", sid, refused_version)
        try:
            last_sent = held_version
            yield Event("control", session.trained_clip_seq, control=session.control())
            for item in [None] if refused_version else await self.catch_up(session, held_version, load_updates):
                if item is None:
                    if self.snapshot_budget is not None:
                        try:
                            self.snapshot_budget.acquire(sid)
                        except errors.ResourceExhausted as exc:
                            quotas.refused("snapshots", session.device_id, str(exc))
                            raise
                    last_sent, snapshot = await self.snapshot(session)
                    yield Event("snapshot", session.trained_clip_seq, snapshot=snapshot)
                    break
                yield item
                last_sent = item.new_version
            while True:
                event = await queue.get()
                if event is None:
                    return
                if event.kind == "update":
                    if event.new_version <= last_sent:
                        continue
                    if event.base_version != last_sent:   # a gap: resync with a snapshot
                        last_sent, snapshot = await self.snapshot(session)
                        yield Event("snapshot", event.processed_clip_seq, snapshot=snapshot)
                        continue
                    last_sent = event.new_version
                yield event
        finally:
            if self.subscribers.get(sid) is entry:
                del self.subscribers[sid]
