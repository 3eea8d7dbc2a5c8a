"""The training engine: earliest deadline first across sessions, at most `train_workers` phases at
once, and never two phases of one session at the same time."""
import asyncio
import types

from services.trainer.config import TrainerConfig
from services.trainer.engine import Engine


def _run(workers: int, deadlines: dict[str, float], arrivals_during_phase: dict[str, int]):
    cfg = TrainerConfig(train_workers=workers, device="cpu")
    sessions: dict = {}
    engine = Engine(cfg, sessions, downlink=None, forget=lambda sid: None)
    started: list[str] = []
    running: set[str] = set()
    overlaps: list[tuple] = []

    async def fake_train_once(session):
        if session.sid in running or len(running) >= workers:   # a session twice, or more phases than workers
            overlaps.append(session.sid)
        running.add(session.sid)
        started.append(session.sid)
        if arrivals_during_phase.get(session.sid, 0) > 0:     # a new clip lands while this phase runs
            arrivals_during_phase[session.sid] -= 1
            engine.pending.setdefault(session.sid, 0.0)       # earliest possible deadline
            engine.wakeup.set()
        await asyncio.sleep(0.05 if session.sid == "a" else 0.005)   # a's phase outlasts the others'
        running.discard(session.sid)

    async def main():
        engine.train_once = fake_train_once
        for sid, deadline in deadlines.items():
            sessions[sid] = types.SimpleNamespace(sid=sid)
            engine.pending[sid] = deadline
        engine.start()
        engine.wakeup.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if not engine.pending and not engine.training:
                break
        await engine.stop()
    asyncio.run(main())
    return started, overlaps


def test_earliest_deadline_first_with_one_worker():
    started, overlaps = _run(1, {"late": 30.0, "early": 10.0, "middle": 20.0}, {})
    assert started == ["early", "middle", "late"] and overlaps == []


def test_two_workers_never_train_one_session_twice_at_once():
    started, overlaps = _run(2, {"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 1})
    # a's second clip arrives during a's phase with the earliest deadline of all, yet waits for it to end
    assert started == ["a", "b", "c", "a"]
    assert overlaps == []
