"""This trainer as one replica among several: session ownership by lease, the health and revocation watch,
and a graceful drain.

A session is served here only while this replica holds its lease (leases.py): taken when the session
is opened or restored from Redis, checked on every call, renewed every third of its TTL, its token on
every state write; lost (another replica took over) -> the session is dropped here and its streams end;
asked for by another replica -> checkpointed, released and dropped.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Callable, Sequence

from ams import errors
from services.trainer import metrics
from services.trainer.leases import LeaseLost, SessionLeases

if TYPE_CHECKING:
    from services.trainer.sessions import SessionManager

log = logging.getLogger(__name__)
FORGET_CALLERS_S = 60.0     # serials of a device without sessions here are forgotten after this long


class Replica:
    def __init__(self, manager: SessionManager, leases: SessionLeases | None):
        self.m, self.leases = manager, leases
        self.draining = False          # set on SIGTERM: no new sessions or streams
        self.cert_serials: dict[str, dict[str, float]] = {}       # device id -> certificate serial -> last call
        self._set_healthy: Callable[[bool], None] | None = None
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        if self.leases:
            self._tasks.append(asyncio.get_running_loop().create_task(self._renew_loop()))

    async def take(self, sid: str) -> int | None:
        """This replica's lease token on `sid` (None without leases, i.e. a single trainer). While
        another replica holds it, that one is asked to hand it over and the call waits for it (at most
        one lease TTL: a dead holder's lease has expired by then), then LeaseLost (UNAVAILABLE: retry)."""
        if self.leases is None:
            return None
        deadline, asked = time.monotonic() + self.m.cfg.lease_ttl_s, False
        while True:
            token = await self.m.redis(self.leases.acquire, sid)
            if token is not None:
                return token
            if not asked:
                await self.m.redis(self.leases.want, sid)
                metrics.HANDOFFS.labels("asked").inc()
                asked = True
            if time.monotonic() > deadline or self.draining:
                holder = await self.m.redis(self.leases.holder, sid)
                raise LeaseLost(f"session {sid} is served by replica {holder[0] if holder else '?'}; it is moving "
                                f"here, retry")
            await asyncio.sleep(0.2)

    async def still_ours(self, sid: str, token: int | None) -> bool:
        """Whether this replica still holds the session's lease (one round trip; renews it)."""
        return self.leases is None or await self.m.redis(self.leases.acquire, sid) == token

    async def release(self, sid: str) -> None:
        if self.leases:
            await self.m.redis(self.leases.release, sid)

    async def _renew_loop(self) -> None:
        """Every third of the lease TTL: renew every held lease (dropping sessions whose lease another
        replica took), and hand over the sessions another replica asked for (not while training)."""
        assert self.leases is not None
        while True:
            await asyncio.sleep(self.m.cfg.lease_ttl_s / 3)
            try:
                tokens = await self.m.redis(self.leases.renew, list(self.m.sessions))
                for sid, token in tokens.items():
                    session = self.m.sessions.get(sid)
                    if session is not None and token != session.token:
                        log.warning("session %s: lease lost to another replica; dropped here", sid)
                        metrics.HANDOFFS.labels("lost").inc()
                        self.m.forget(sid)
                for sid in await self.m.redis(self.leases.wanted, list(self.m.sessions)):
                    if sid not in self.m.engine.training:
                        await self._hand_over(sid)
            except errors.Unavailable as exc:   # Redis down: keep serving what is held; writes fail meanwhile
                log.warning("lease renewal: %s", exc)

    async def _hand_over(self, sid: str) -> None:
        session = self.m.sessions.get(sid)
        if session is None or self.leases is None:
            return
        self.m.forget(sid)
        try:
            await self.m.redis(session.checkpoint)   # the next owner resumes Adam's moments exactly
        except errors.AMSError as exc:
            log.warning("session %s: no checkpoint at hand-over (%s)", sid, exc)
        await self.m.redis(self.leases.release, sid)
        metrics.HANDOFFS.labels("released").inc()
        log.info("session %s at v%d handed over to the replica that asked for it", sid, session.version)

    # --- health, eviction, revocation -------------------------------------------------------------
    def watch(self, set_healthy: Callable[[bool], None], period_s: float = 2.0) -> None:
        """Report health now and every `period_s` seconds: SERVING iff Redis answers and the teacher
        says SERVING, and the trainer is not draining for shutdown."""
        self._set_healthy = set_healthy

        async def loop():
            healthy = None
            while True:
                try:
                    redis_ok = await self.m.redis(self.m.store.ping)
                except errors.Unavailable:
                    redis_ok = False
                teacher_ok = await self.m.teacher.healthy()
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
        self._tasks.append(asyncio.get_running_loop().create_task(loop()))

    def drain(self) -> None:
        """Shutdown, first step: NOT_SERVING, no new sessions or update streams (UNAVAILABLE: devices
        retry, behind a load balancer on another replica), open update streams ended so their devices
        reconnect; uploads and phases in flight go on until `stop`."""
        self.draining = True
        if self._set_healthy:
            self._set_healthy(False)
        self.m.downlink.end_all()
        log.info("draining: %d sessions held, %d phases in flight", len(self.m.sessions), len(self.m.engine.phases))

    def _evict_abandoned(self) -> None:
        """Drop sessions idle for longer than the session TTL with nobody subscribed (their keys expire too)."""
        now = time.monotonic()
        for sid, session in list(self.m.sessions.items()):
            idle = now - session.last_active > self.m.cfg.session_ttl_s
            if sid not in self.m.downlink.subscribers and idle and not self.m.engine.busy(sid):
                log.info("session %s abandoned: evicted", sid)
                self.m.sessions.pop(sid, None)     # (its lease, no longer renewed, expires)
                self.m.downlink.forget(sid)
        metrics.SESSIONS_ACTIVE.set(len(self.m.sessions))

    async def check_not_revoked(self, device_id: str, serials: Sequence[str]) -> None:
        """Unauthenticated when the operator has revoked a certificate of this call (the device's, and
        the load balancer's that forwarded it), checked on every call; Unavailable when Redis cannot
        say. The serials a device calls with are remembered (`cert_serials`: device id -> serial ->
        last call), so the watcher ends its sessions, opened, resumed or restored, once one is revoked."""
        if await self.m.redis(self.m.store.revoked, list(serials)):
            raise errors.Unauthenticated("this certificate has been revoked")
        self.cert_serials.setdefault(device_id, {}).update(dict.fromkeys(serials, time.monotonic()))

    async def _drop_revoked(self) -> None:
        """End the sessions (and update streams) of devices that called with a certificate revoked
        since; forget the serials of devices without sessions here that have not called for a minute."""
        seen = self.cert_serials
        held, now = {s.device_id for s in self.m.sessions.values()}, time.monotonic()
        for device_id in [d for d, calls in seen.items()
                          if d not in held and now - max(calls.values(), default=0) > FORGET_CALLERS_S]:
            del seen[device_id]
        try:
            revoked = await self.m.redis(self.m.store.revoked, sorted({s for d in held for s in seen.get(d, ())}))
        except errors.Unavailable:
            return
        for device_id in sorted(d for d in held if revoked & seen.get(d, {}).keys()):
            seen.pop(device_id, None)        # its next call, with a valid certificate, is remembered anew
            for session in [s for s in list(self.m.sessions.values()) if s.device_id == device_id]:
                log.warning("a certificate of device %s was revoked: closing its session %s", device_id, session.sid)
                await self.m.close(session.sid, device_id)

    async def stop(self) -> None:
        """Stop watching and renewing; then (after the engine stopped) checkpoint every held session and
        release its lease, so a graceful restart resumes Adam's moments exactly too."""
        for task in self._tasks:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def checkpoint_all(self) -> None:
        for session in list(self.m.sessions.values()):
            try:
                await self.m.redis(session.checkpoint)
                await self.release(session.sid)   # the next replica need not wait for the lease to expire
            except errors.AMSError as exc:
                log.warning("session %s: no checkpoint at shutdown (%s)", session.sid, exc)
