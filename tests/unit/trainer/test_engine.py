"""The training engine: earliest deadline first across sessions, at most `train_workers` phases at
once, and never two phases of one session at the same time."""
import asyncio
import types

from services.trainer import phase
from services.trainer.config import TrainerConfig
from services.trainer.engine import Engine


def _run(workers: int, deadlines: dict[str, float], arrivals_during_phase: dict[str, int], batch_sessions: int = 1):
    cfg = TrainerConfig(train_workers=workers, device="cpu", batch_sessions=batch_sessions)
    sessions: dict = {}
    engine = Engine(cfg, sessions, downlink=None, forget=lambda sid: None)
    started: list[str] = []
    overlaps: list[tuple] = []

    groups: list[set] = []

    async def fake_train_group(group):
        sids = {session.sid for session in group}
        if sids & {s for g in groups for s in g} or len(groups) >= workers:   # a session twice, or more phases than workers
            overlaps.extend(sorted(sids))
        groups.append(sids)
        started.append("+".join(session.sid for session in group))
        for sid in sids:
            if arrivals_during_phase.get(sid, 0) > 0:     # a new clip lands while this phase runs
                arrivals_during_phase[sid] -= 1
                engine.pending.setdefault(sid, 0.0)       # earliest possible deadline
                engine.wakeup.set()
        await asyncio.sleep(0.05 if "a" in sids else 0.005)   # a's phase outlasts the others'
        groups.remove(sids)

    async def main():
        engine.train_group = fake_train_group
        for sid, deadline in deadlines.items():
            sessions[sid] = types.SimpleNamespace(sid=sid, shape=sid.rstrip("0123456789"))
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


def test_due_sessions_of_one_shape_train_together_up_to_batch_sessions(monkeypatch):
    """Grouped in deadline order with the earliest: x1 takes x2 (x3 would exceed 2), y1 goes alone."""
    monkeypatch.setattr(phase, "groupable", lambda group: len({s.shape for s in group}) == 1)
    started, overlaps = _run(1, {"x1": 1.0, "y1": 2.0, "x2": 3.0, "x3": 4.0}, {}, batch_sessions=2)
    assert started == ["x1+x2", "y1", "x3"] and overlaps == []
