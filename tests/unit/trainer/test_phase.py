"""Training phases as transactions, on the in-memory store and a real redis-server: a phase that fails leaves no trace, buffer
churn cannot fail a phase, ingest never rolls the stored version back, and a restore is exact."""
import json

import numpy as np
import pytest
import torch

from ams.errors import FailedPrecondition
from ams.models import build_student
from ams.update_codec import FLOAT16, INT4, INT8, apply_update, flat_parameters
from services.trainer.config import TrainerConfig
from services.trainer.session import Session
from services.trainer.store import open_store
from tests.conftest import TINY_STUDENT

H, W = TINY_STUDENT["input_height"], TINY_STUDENT["input_width"]


def _session(store_url, codec=FLOAT16, **cfg) -> Session:
    config = TrainerConfig(**{**dict(redis_url=store_url, k_iters=4, batch_size=2, torch_threads=1, t_horizon_s=10.0,
                                     device="cpu", checkpoint_every=2, updates_kept=4), **cfg})
    store = open_store(store_url, updates_kept=config.updates_kept)
    torch.manual_seed(0)
    model = build_student("deeplabv3_mnv2", TINY_STUDENT)
    session = Session("s1", "device-a", "deeplabv3_mnv2", TINY_STUDENT, model, store, config, codec=codec)
    store.create("s1", {**session.ingest_meta(), "config_json": json.dumps(TINY_STUDENT)}, model.state_dict(), session.adam)
    return session


def _ingest(session: Session, seq: int, times: list[float], size=(2 * H, 2 * W)) -> None:
    """Frames at twice the student's size (as from a camera), labels and uniform probabilities."""
    rng = np.random.default_rng(seq)
    frames = [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in times]
    labels = [(f[..., 0] > 127).astype(np.uint8) for f in frames]
    session.ingest(seq, times, frames, labels, [np.full((2, *size), 0.5, np.float32) for _ in times])


def _adam(session):
    a = session.adam
    return a.m.clone(), a.v.clone(), None if a.u is None else a.u.clone(), a.step


@pytest.mark.parametrize("graph", [True, False], ids=["train-graph", "module-forward"])
def test_a_phase_failing_at_iteration_k_leaves_no_trace_and_the_next_update_applies(store_url, monkeypatch, graph):
    session = _session(store_url, train_graph=graph)
    assert (session.train_graph() is not None) == graph
    edge_flat, edge_version = session.flat.copy(), 0
    _ingest(session, 1, [0.0, 1.0, 2.0])
    first = session.run_phase()
    edge_flat, edge_version = apply_update(edge_flat, 0, first.update), 1
    assert session.store.frame_keys("s1") and session.store.load_frames("s1", session.store.frame_keys("s1"))[
        "0.000000"][0].shape == (H, W, 3)                  # buffered at the student's size
    before = (session.flat.copy(), _adam(session), session.rng.bit_generator.state, session.version, session.phase)
    calls = []
    owner = type(session.train_graph()) if graph else type(session.model)   # what the iterations call
    forward = owner.forward
    scored = 0 if graph else 1               # the module's forward also scores the newest frames first

    def fails_at_third_iteration(*args):
        calls.append(1)
        if len(calls) == 2 + scored + 1:
            raise RuntimeError("injected failure at iteration 3")
        return forward(*args)
    monkeypatch.setattr(owner, "forward", fails_at_third_iteration)
    _ingest(session, 2, [3.0, 4.0])
    with pytest.raises(RuntimeError, match="iteration 3"):
        session.run_phase()
    assert len(calls) == 3 + scored                          # two iterations had moved the weights
    np.testing.assert_array_equal(torch.nn.utils.parameters_to_vector(session.model.parameters()).detach().numpy(),
                                  before[0])
    for got, want in zip(_adam(session), before[1]):
        assert got == want if isinstance(want, int) else torch.equal(got, want)
    assert session.rng.bit_generator.state == before[2] and (session.version, session.phase) == before[3:]
    assert session.store.load_meta("s1")["version"] == "1"
    monkeypatch.setattr(owner, "forward", forward)
    second = session.run_phase().update
    assert (second.base_version, second.new_version) == (1, 2)
    edge_flat = apply_update(edge_flat, edge_version, second)   # raises if the failed phase had left drift
    np.testing.assert_array_equal(edge_flat, session.flat)


def test_frames_trimmed_while_a_phase_reads_them_do_not_fail_it(store_url, monkeypatch):
    session = _session(store_url, t_horizon_s=5.0)
    _ingest(session, 1, [float(t) for t in range(6)])      # 0..5 s
    listed = session.store.frame_keys("s1")
    real_frame_keys = session.store.frame_keys

    def list_then_trim(sid):
        keys = real_frame_keys(sid)
        _ingest(session, 2, [8.0, 9.0])                     # horizon 5 s: trims everything before 4 s
        return keys
    monkeypatch.setattr(session.store, "frame_keys", list_then_trim)
    outcome = session.run_phase()
    assert outcome is not None and outcome.update.new_version == 1
    assert len(listed) == 6 and outcome.stats["frames"] <= 2  # only 4.0 and 5.0 of the listed frames survived


def test_ingest_never_rolls_the_stored_version_back(store_url):
    session = _session(store_url)
    _ingest(session, 1, [0.0, 1.0])
    stale_fields = session.ingest_meta()                    # what a slow I/O thread computed before the phase
    session.run_phase()
    session.store.save_meta("s1", stale_fields)             # ...and wrote after the commit
    _ingest(session, 2, [2.0])
    assert session.store.load_meta("s1")["version"] == "1"
    restored = Session.from_checkpoint("s1", session.store.load_checkpoint("s1"), session.store, session.cfg)
    assert restored.version == 1
    np.testing.assert_array_equal(restored.flat, session.flat)


def test_restore_is_exact_from_checkpoint_plus_chain(store_url):
    session = _session(store_url, checkpoint_every=2)
    for seq in range(1, 4):                                 # checkpoints at v2; v3 is the chain's
        _ingest(session, seq, [2.0 * seq, 2.0 * seq + 1])
        session.run_phase()
    store = session.store
    restored = Session.from_checkpoint("s1", store.load_checkpoint("s1"), store, session.cfg)
    assert (restored.version, restored.checkpoint_version, restored.phase) == (3, 2, 3)
    np.testing.assert_array_equal(restored.flat, session.flat)             # weights: always exact
    assert restored.rng.bit_generator.state == session.rng.bit_generator.state
    assert restored.last_clip_seq == restored.trained_clip_seq == 3
    assert session.checkpoint() > 0                          # graceful shutdown: Adam state of v3 too
    restored = Session.from_checkpoint("s1", store.load_checkpoint("s1"), store, session.cfg)
    for got, want in zip(_adam(restored), _adam(session)):
        assert got == want if isinstance(want, int) else torch.equal(got, want)
    # both copies now train identically, bit for bit; only one of them may commit that version
    _ingest(session, 4, [9.0])
    assert session.train_phase().update.params_sha256 == restored.train_phase().update.params_sha256
    session.discard()
    restored.discard()
    assert session.run_phase().update.new_version == 4
    with pytest.raises(FailedPrecondition):
        restored.run_phase()
    assert restored.version == 3 and store.load_meta("s1")["version"] == "4"


@pytest.mark.parametrize("codec", [INT8, INT4])
def test_quantised_sessions_keep_trainer_and_edge_bit_identical_across_phases_and_a_restore(store_url, codec):
    session = _session(store_url, codec, checkpoint_every=2)
    edge_flat = session.flat.copy()
    for seq in range(1, 4):
        _ingest(session, seq, [2.0 * seq, 2.0 * seq + 1])
        update = session.run_phase().update
        assert update.codec == codec and update.deltas is not None
        edge_flat = apply_update(edge_flat, update.base_version, update)   # the SHA-256 check passes
        assert edge_flat.tobytes() == session.flat.tobytes()
        # error feedback: the trainer's model is what the edge holds, quantisation error included
        assert flat_parameters(session.model).tobytes() == session.flat.tobytes()
    restored = Session.from_checkpoint("s1", session.store.load_checkpoint("s1"), session.store, session.cfg)
    assert restored.codec == codec and restored.flat.tobytes() == session.flat.tobytes()


def test_a_compute_aware_phase_trains_the_k_its_budget_gives_and_reports_its_cost(store_url):
    """phase_budget.py inside a real phase: the first phase trains k_iters and is measured; the next
    gets K from that cost, and K = k_min when the budget leaves nothing for iterations."""
    from services.trainer.phase_budget import PhaseBudget

    session = _session(store_url, t_update_s=10.0, t_fast_s=0.0)
    held = [1]
    session.budget = PhaseBudget(share=0.5, interval_s=10.0, workers=1, k_fixed=4, k_min=1, k_max=7,
                                 held=lambda: held[0])
    _ingest(session, 1, [0.0, 1.0])
    first = session.run_phase()
    assert first.stats["iterations"] == 4 and first.stats["train_seconds"] > 0
    cost = session.budget.costs[session.cost_key()]
    assert cost.per_iteration_s > 0 and cost.fixed_s > 0
    _ingest(session, 2, [2.0, 3.0])
    expected = session.budget.iterations(session.cost_key())
    second = session.run_phase()
    assert second.stats["iterations"] == expected == 7   # 5 s of budget: far more than 7 iterations of the tiny student
    held[0] = 10 ** 6                                     # a box with a million sessions: K = k_min
    _ingest(session, 3, [4.0, 5.0])
    assert session.run_phase().stats["iterations"] == 1


def test_labels_of_classes_the_student_lacks_are_refused_before_anything_is_buffered(store_url):
    """A parts teacher (5 classes) behind a trainer whose session holds a 2-class student: FAILED_PRECONDITION."""
    session = _session(store_url)
    frames = [np.zeros((H, W, 3), np.uint8)]
    labels = [np.full((H, W), TINY_STUDENT["num_classes"], np.uint8)]
    with pytest.raises(FailedPrecondition, match="classes"):
        session.ingest(1, [0.0], frames, labels, [np.full((5, H, W), 0.2, np.float32)])
    assert session.store.frame_keys("s1") == [] and session.last_clip_seq == 0
    _ingest(session, 1, [0.0])                          # the student's own classes still go in
    assert session.store.frame_keys("s1")
