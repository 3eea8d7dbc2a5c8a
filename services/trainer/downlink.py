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
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from ams import errors
from ams.update_codec import encode_snapshot
from ams.v1 import streaming_pb2
from services.trainer import metrics
from services.trainer.quotas import TokenBuckets
from services.trainer.session import Control, Session

log = logging.getLogger(__name__)
SNAPSHOTS_CACHED = 4      # (session, version) snapshots kept serialized; each is one whole model
SNAPSHOT_BURST = 2
END_GRACE_S = 2.0         # a stream told to end that is still stuck in a write then is cancelled


@dataclass(frozen=True)
class Event:
    """Something to push to a device: an update, a snapshot request, a control change or a label hint."""

    kind: str                                   # "update" | "control" | "snapshot" | "hint"
    processed_clip_seq: int
    update: streaming_pb2.ModelUpdate | None = None
    control: Control | None = None
    snapshot: bytes = b""                       # a serialized ModelSnapshot (shared: never copied per stream)
    hint: streaming_pb2.LabelHint | None = None

    def message(self) -> bytes | streaming_pb2.ServerMessage:
        """The ServerMessage to send: a snapshot as bytes framed around the shared ones."""
        if self.kind == "snapshot":
            head = streaming_pb2.ServerMessage(processed_clip_seq=self.processed_clip_seq).SerializeToString()
            return head + embedded(SERVER_SNAPSHOT_FIELD, self.snapshot)
        message = streaming_pb2.ServerMessage(processed_clip_seq=self.processed_clip_seq)
        if self.kind == "update":
            message.update.CopyFrom(self.update)
        elif self.kind == "hint":
            message.hint.CopyFrom(self.hint)
        else:
            assert self.control is not None
            message.control.sampling_rate_fps = self.control.sampling_rate_fps
            message.control.update_interval_s = self.control.update_interval_s
        return message


def embedded(field_number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2) holding `payload`: appended to a serialized
    message, it sets that message field to the message `payload` serializes, without parsing it."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def snapshot_bytes(session: Session) -> tuple[int, bytes]:
    """(version, serialized ModelSnapshot) of the session's current model (blocking: run it off the loop)."""
    version, state = session.state_dict_copy()
    names = [n for n, _ in session.model.named_parameters()]
    return version, encode_snapshot(session.sid, version, session.architecture, session.student_config, state,
                                    names).SerializeToString()


SERVER_SNAPSHOT_FIELD = streaming_pb2.ServerMessage.DESCRIPTOR.fields_by_name["snapshot"].number
OPEN_SNAPSHOT_FIELD = streaming_pb2.OpenSessionResponse.DESCRIPTOR.fields_by_name["snapshot"].number


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
            future = loop.run_in_executor(self.encode_pool, functools.partial(snapshot_bytes, session))
            self._snapshots[key] = future
            while len(self._snapshots) > SNAPSHOTS_CACHED:
                self._snapshots.popitem(last=False)
        self._snapshots.move_to_end(key)
        return await asyncio.shield(future)

    async def open_reply(self, reply: streaming_pb2.OpenSessionResponse, session: Session) -> bytes:
        """A serialized OpenSessionResponse: `reply` with the session's snapshot."""
        _, snapshot = await self.snapshot(session)
        return reply.SerializeToString() + embedded(OPEN_SNAPSHOT_FIELD, snapshot)

    def forget(self, sid: str) -> None:
        for key in [k for k in self._snapshots if k[0] == sid]:
            del self._snapshots[key]

    # --- catch-up and live events -----------------------------------------------------------------
    async def catch_up(self, session: Session, held_version: int, load_updates) -> list[streaming_pb2.ModelUpdate | None]:
        """The stored updates that bring `held_version` to the current version, or [None] if a
        snapshot is needed (the chain is incomplete or the device is ahead of this trainer)."""
        current = session.version
        if held_version == current:
            return []
        if held_version > current:
            return [None]
        chain = {}
        for raw in await self.run_redis(load_updates, session.sid):
            msg = streaming_pb2.ModelUpdate.FromString(raw)
            chain[msg.base_version] = msg
        out, version = [], held_version
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
                        except errors.ResourceExhausted:
                            metrics.QUOTA_REFUSALS.labels("snapshots").inc()
                            raise
                    last_sent, snapshot = await self.snapshot(session)
                    yield Event("snapshot", session.trained_clip_seq, snapshot=snapshot)
                    break
                yield Event("update", session.trained_clip_seq, update=item)
                last_sent = item.new_version
            while True:
                event = await queue.get()
                if event is None:
                    return
                if event.kind == "update":
                    assert event.update is not None
                    if event.update.new_version <= last_sent:
                        continue
                    if event.update.base_version != last_sent:   # a gap: resync with a snapshot
                        last_sent, snapshot = await self.snapshot(session)
                        yield Event("snapshot", event.processed_clip_seq, snapshot=snapshot)
                        continue
                    last_sent = event.update.new_version
                yield event
        finally:
            if self.subscribers.get(sid) is entry:
                del self.subscribers[sid]
