"""The training engine (Algorithm 1 lines 10-17): `train_workers` training threads (the "accelerator")
serve every session, one phase per turn (AMS App. E), earliest deadline first: the session whose oldest
untrained clip was uploaded longest ago goes next, and no session has two phases at once. The asyncio
loop only does I/O, so training never blocks the server."""
from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Mapping

from ams import errors, logs
from services.trainer import metrics, phase
from services.trainer.config import TrainerConfig
from services.trainer.events import Event
from services.trainer.leases import LeaseLost
from services.trainer.phase_budget import PhaseBudget

if TYPE_CHECKING:
    from services.trainer.downlink import Downlink
    from services.trainer.phase import PhaseOutcome
    from services.trainer.session import Control, Session

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, cfg: TrainerConfig, sessions: Mapping[str, Session], downlink: Downlink,
                 forget: Callable[[str], None]):
        """`sessions`: those held here (looked up when a phase is due); `forget(sid)`: drop one whose
        stored state or lease moved on (it is reloaded on its next call)."""
        self.cfg, self.sessions, self.downlink, self.forget = cfg, sessions, downlink, forget
        self.pending: dict[str, float] = {}   # sid -> wall time of its oldest untrained upload (the EDF key)
        self.training: set[str] = set()       # sessions whose phase is running (never two at once for one session)
        self.phases: set[asyncio.Task] = set()
        self.wakeup = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=cfg.train_workers, thread_name_prefix="ams-train")
        self.budget = PhaseBudget(cfg.phase_share, cfg.t_update_s, cfg.train_workers, cfg.k_iters, cfg.k_min,
                                  cfg.k_max, held=lambda: len(self.sessions))
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """No new phases; a phase in flight finishes and commits."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self.phases, return_exceptions=True)
        self.executor.shutdown(wait=True)

    def schedule(self, session: Session) -> None:
        """Queue a phase for the session, keeping the deadline of its oldest untrained upload."""
        self.pending.setdefault(session.sid, min(session.upload_times.values(), default=time.monotonic()))
        metrics.SESSIONS_WAITING.set(len(self.pending))
        self.wakeup.set()

    def drop(self, sid: str) -> None:
        self.pending.pop(sid, None)

    def busy(self, sid: str) -> bool:
        """A phase of the session is waiting or running."""
        return sid in self.pending or sid in self.training

    async def run(self) -> None:
        """Start the phase of the waiting session with the earliest deadline whenever one of the
        `train_workers` is free; a session already training waits for its phase to end."""
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while len(self.phases) < self.cfg.train_workers:
                ready = [sid for sid in self.pending if sid not in self.training]
                if not ready:
                    break
                ready.sort(key=self.pending.__getitem__)              # earliest deadline first
                group = self._group([self.sessions.get(sid) for sid in ready])
                for sid in ready:
                    if sid in group or self.sessions.get(sid) is None:
                        del self.pending[sid]
                metrics.SESSIONS_WAITING.set(len(self.pending))
                if not group:
                    continue
                self.training.update(group)
                metrics.PHASES_RUNNING.set(len(self.training))
                task = asyncio.get_running_loop().create_task(self.train_group(list(group.values())))
                self.phases.add(task)
                task.add_done_callback(functools.partial(self._phase_done, sids=list(group)))

    def _group(self, ready: list[Session | None]) -> dict[str, Session]:
        """The earliest-deadline session, and up to batch_sessions - 1 more due sessions that can train
        with it in one batched phase (the same student shape and K, phase.groupable), in deadline order."""
        ready_sessions = [s for s in ready if s is not None]
        if not ready_sessions:
            return {}
        first = ready_sessions[0]
        group = {first.sid: first}
        if self.cfg.batch_sessions > 1 and phase.groupable([first]):
            for other in ready_sessions[1:]:
                if len(group) >= self.cfg.batch_sessions:
                    break
                if phase.groupable([first, other]):
                    group[other.sid] = other
        return group

    def _phase_done(self, task: asyncio.Task, sids: list[str]) -> None:
        self.phases.discard(task)
        self.training.difference_update(sids)
        metrics.PHASES_RUNNING.set(len(self.training))
        self.wakeup.set()

    async def train_group(self, sessions: list[Session]) -> None:
        """One transactional phase per session (several trained as one batch when grouped); a failure
        is counted and leaves its session as it was."""
        sid, device = ",".join(s.sid for s in sessions), ",".join(s.device_id for s in sessions)
        logs.bind(sid, device)     # (a task of its own: its records carry the sessions)
        before = [(s.last_clip_seq, s.control(), s.live_scored) for s in sessions]
        try:
            with metrics.PHASE_SECONDS.time():
                outcomes = await asyncio.get_running_loop().run_in_executor(
                    self.executor, logs.bound(functools.partial(phase.run_group, sessions), sid, device))
        except Exception as exc:  # noqa: BLE001 - run_group reports errors per session; this is a last resort
            outcomes = [exc] * len(sessions)
        if len(sessions) > 1:
            metrics.GROUPED_PHASES.inc(len(sessions))
        for session, outcome, (seq_before, control_before, scored_before) in zip(sessions, outcomes, before):
            logs.bind(session.sid, session.device_id)
            self._outcome(session, outcome, seq_before, control_before, scored_before)

    def _outcome(self, session: Session, outcome: PhaseOutcome | None | BaseException, seq_before: int,
                 control_before: Control, scored_before: int) -> None:
        if isinstance(outcome, BaseException):
            if session.sid not in self.sessions:   # closed (or replaced by its device) meanwhile: nothing to do
                log.info("session %s closed during its phase; phase dropped", session.sid)
                return
            log.error("training phase failed for session %s (rolled back, nothing sent)", session.sid, exc_info=outcome)
            metrics.PHASE_FAILURES.inc()
            if isinstance(outcome, (errors.FailedPrecondition, LeaseLost)):   # the stored state moved on, or its
                self.forget(session.sid)                                      # owner: reload it on next use
            self.processed(session, seq_before, Event("control", seq_before, control=session.control()))
            return
        if session.live_scored > scored_before and session.live_miou:
            metrics.NEWEST_MIOU.observe(session.live_miou[-1])
        if outcome is None:
            self.processed(session, session.trained_clip_seq,
                           Event("control", session.trained_clip_seq, control=session.control()))
            return
        metrics.UPDATES.inc()
        metrics.STATE_BYTES.inc(outcome.stats["state_bytes"])
        stats, update = outcome.stats, outcome.update
        metrics.PHASE_ITERATIONS.observe(stats["iterations"])
        metrics.PHASE_LOSS.observe(stats["loss_last"])
        log.info("session %s phase %d: v%d, %d frames, K %d, loss %.4f -> %.4f in %.1fs (frames read in %.2fs, %d "
                 "bytes stored)", session.sid, update.phase, update.new_version, stats["frames"], stats["iterations"],
                 stats["loss_first"], stats["loss_last"], stats["seconds"], stats["load_seconds"], stats["state_bytes"])
        event = Event("update", outcome.seq_seen, update=outcome.message, base_version=update.base_version,
                      new_version=update.new_version)
        self.processed(session, outcome.seq_seen, event, lag=True)
        if stats.get("scene_change"):
            metrics.PACE_EVENTS.labels("scene_change").inc()
        elif session.pace.enabled and not session.pace.unsettled and session.control() != control_before:
            metrics.PACE_EVENTS.labels("settled").inc()
        if session.control() != control_before:   # the pace controller settled the session, or saw a scene change
            self.downlink.publish(session.sid, Event("control", outcome.seq_seen, control=session.control()))

    def processed(self, session: Session, seq: int, event: Event, lag: bool = False) -> None:
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
