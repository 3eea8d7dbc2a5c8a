"""The trainer's core without gRPC and without Redis: sessions opened, fed, trained, restored and closed
through SessionManager on the in-memory store, labelled by the oracle teacher in this process."""
import asyncio
import json

import numpy as np
import pytest

from prometheus_client import REGISTRY

from ams import admin, errors
from ams.synthetic import SyntheticScene
from ams.update_codec import FLOAT16, apply_update, flat_parameters
from ams.video import encode_clip
from services.teacher.backends import make_backend
from services.trainer import serde
from services.trainer.config import TrainerConfig
from services.trainer.sessions import SessionManager
from services.trainer.store import MemorySessionStore, open_store
from services.trainer.teacher_client import LocalTeacher
from tests.conftest import TINY_STUDENT

SCENE = SyntheticScene(seed=3, w=64, h=36, fps=10, duration=20, shift=10)
SPEC = serde.StudentSpec(architecture="deeplabv3_mnv2", config=TINY_STUDENT)


def _manager(store=None, **cfg) -> SessionManager:
    config = TrainerConfig(**{**dict(allow_custom_students=True, k_iters=3, batch_size=2, torch_threads=1, device="cpu",
                                     t_fast_s=0.0, hint_miou=0.0, redis_threads=2, ingest_threads=1), **cfg})
    return SessionManager(config, store or MemorySessionStore(), LocalTeacher(make_backend("oracle", scene_spec=SCENE.spec())))


def _clip(start: float, n: int = 6) -> tuple[bytes, list[float]]:
    times = [start + i / SCENE.fps for i in range(n)]
    return encode_clip([SCENE.render(t)[0] for t in times]), times


async def _started() -> tuple[SessionManager, object]:
    """A started manager with one session of device dev-a."""
    manager = _manager()
    manager.start()
    session, _ = await manager.open("dev-a", SPEC, "", [FLOAT16])
    return manager, session


async def _open_and_train(manager: SessionManager, device: str = "dev-a"):
    manager.start()
    session, resumed = await manager.open(device, SPEC, "", [FLOAT16])
    stream = manager.subscribe(session, held_version=0)
    first = await anext(stream)                       # the control values come first
    assert first.kind == "control" and not resumed
    data, times = _clip(0.0)
    accepted, buffered = await manager.upload(session, 1, "h264", data, times)
    assert accepted == len(times) and buffered == len(times)
    event = await asyncio.wait_for(anext(stream), 60)
    while event.kind != "update":
        event = await asyncio.wait_for(anext(stream), 60)
    await stream.aclose()
    return session, event


def test_a_session_is_opened_fed_trained_and_its_update_applies_to_what_the_edge_holds():
    async def main():
        manager = _manager()
        session, event = await _open_and_train(manager)
        update = serde.parse_update(event.update, session.num_params)
        assert (event.base_version, event.new_version) == (0, 1) == (update.base_version, update.new_version)
        w0 = np.concatenate([v.numpy().ravel() for k, v in manager.store.load_checkpoint(session.sid).state_dict.items()
                             if k in dict(session.model.named_parameters())])
        np.testing.assert_array_equal(apply_update(w0, 0, update), session.flat)   # the edge's copy equals the trainer's
        assert manager.store.load_meta(session.sid)["version"] == "1"
        await manager.stop()
    asyncio.run(main())


def test_a_restarted_trainer_restores_the_session_bit_exactly_from_the_store():
    async def main():
        store = MemorySessionStore()
        first = _manager(store)
        session, _ = await _open_and_train(first)
        held = session.flat.copy()
        await first.stop()
        second = _manager(store)
        restored = await second.get(session.sid, "dev-a")
        assert restored is not session and restored.version == 1
        np.testing.assert_array_equal(restored.flat, held)
        assert flat_parameters(restored.model).tolist() == held.tolist()
    asyncio.run(main())


def test_another_device_a_made_up_id_and_a_closed_session_are_refused_precisely():
    async def main():
        manager, session = await _started()
        with pytest.raises(errors.PermissionDenied):
            await manager.get(session.sid, "dev-b")
        with pytest.raises(errors.NotFound):
            await manager.get("x" * 1000, "dev-a")
        await manager.close(session.sid, "dev-a")
        assert not manager.store.exists(session.sid)
        with pytest.raises(errors.NotFound):
            await manager.get(session.sid, "dev-a")
        await manager.stop()
    asyncio.run(main())


def test_uploads_are_checked_before_anything_is_decoded():
    async def main():
        manager, session = await _started()
        data, times = _clip(1.0)
        with pytest.raises(errors.InvalidArgument, match="codec"):
            await manager.upload(session, 1, "vp9", data, times)
        with pytest.raises(errors.InvalidArgument, match="clip_seq"):
            await manager.upload(session, 0, "h264", data, times)
        await manager.upload(session, 1, "h264", data, times)
        with pytest.raises(errors.OutOfRange):            # a clock rewound onto buffered frames
            await manager.upload(session, 2, "h264", data, times)
        assert await manager.upload(session, 1, "h264", data, times) == (0, len(times))   # a re-delivery: no-op
        await manager.stop()
    asyncio.run(main())


def test_a_student_whose_class_count_differs_from_the_teachers_is_refused_at_open():
    async def main():
        manager = _manager()
        spec = serde.StudentSpec(architecture="deeplabv3_mnv2", config={**TINY_STUDENT, "num_classes": 3})
        with pytest.raises(errors.FailedPrecondition, match="teacher labels 2 classes"):
            await manager.open("dev-a", spec, "", [FLOAT16])
        assert not manager.sessions
    asyncio.run(main())


def test_a_draining_trainer_opens_nothing_and_streams_nothing():
    async def main():
        manager, session = await _started()
        manager.drain()
        with pytest.raises(errors.Unavailable):
            await manager.open("dev-b", SPEC, "", [FLOAT16])
        with pytest.raises(errors.Unavailable):
            manager.subscribe(session, 0)
        await manager.stop()
    asyncio.run(main())


def _count(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_every_phase_scores_the_held_model_live_and_ams_admin_lists_the_session(redis_url, capsys):
    """At the paper's pace too (no pace controller), each phase first scores the model the device holds
    on the new frames against the teacher: the live-mIoU histogram moves, the trend and the loss are
    stored with the phase, and `ams-admin sessions` reads them back from Redis."""
    async def main():
        manager = _manager(open_store(redis_url))
        scored, losses = _count("ams_trainer_newest_frames_miou_count"), _count("ams_trainer_phase_loss_count")
        session, _ = await _open_and_train(manager, device="cam-live")
        assert _count("ams_trainer_newest_frames_miou_count") == scored + 1 and len(session.live_miou) == 1
        assert _count("ams_trainer_phase_loss_count") == losses + 1
        assert REGISTRY.get_sample_value("ams_trainer_session_update_interval_seconds", {"stat": "max"}) == 10.0
        await manager.stop()
        return session
    session = asyncio.run(main())
    assert admin.main(["sessions", "--redis-url", redis_url, "--json"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record["session"] == session.sid and record["device"] == "cam-live" and record["version"] == 1
    assert record["live_miou"] == [round(session.live_miou[0], 4)] and record["loss"] is not None
    assert record["clips_waiting"] == 0 and record["codec"] == "float16" and record["last_update_s_ago"] >= 0
    assert admin.main(["sessions", "--redis-url", redis_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["session", "device", "student", "version"] and "cam-live" in lines[1]
