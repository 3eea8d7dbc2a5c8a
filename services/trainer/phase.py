"""A session's training phase (Algorithm 1 lines 10-17, Algorithm 2) as a transaction: it reads a fixed set
of frames up front (scoring the held model on the new ones for the pace controller), trains on scratch
copies of the optimizer state and RNG, and either commits (the update logged in the store atomically with
the new version, then the session adopts the new state) or leaves no trace. `Session` (session.py) holds
the state these methods read and adopt."""
from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ams.device import autocast
from ams.miou import frame_miou
from ams.models import batch_tensor
from ams.update_codec import SparseUpdate, flat_parameters, load_flat_parameters, sparse_update
from services.trainer import coordinate_descent, serde
from services.trainer.coordinate_descent import AdamCDState
from services.trainer.ingest import resize_pair
from services.trainer.pace import PaceController, draw_batches

if TYPE_CHECKING:
    from services.trainer.session import Session

log = logging.getLogger(__name__)
NEWEST_SCORED = 8    # at most this many of a phase's new frames are scored (the live mIoU; the pace controller)


class Skipped:
    """_phase_frames: no phase now, the pace controller found the held model still good (pace.py)."""


SKIPPED = Skipped()


@dataclass
class PhaseResult:
    """A trained but not yet committed phase: everything the session adopts on commit."""

    update: SparseUpdate
    flat: np.ndarray
    adam: AdamCDState
    rng: np.random.Generator
    seq_seen: int
    pace: PaceController
    stats: dict = field(default_factory=dict)


@dataclass
class PhaseOutcome:
    """A committed phase: the update to publish and what it cost."""

    update: SparseUpdate
    message: bytes              # the serialized ModelUpdate (logged, and sent to the device)
    seq_seen: int
    stats: dict


def _phase_frames(session: Session, rng: np.random.Generator, pace: PaceController
                  ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray] | Skipped | None:
    """Read the phase's frames up front: X (U, 3, H, W), Y (U, H, W) and picks (K, B), row k the
    indices into X/Y of mini-batch S_k, drawn uniformly over B (after a scene change partly from the
    frames since it, pace.py) and in capture order (students that pair frames rely on it). With the
    pace controller on, the held model is first scored on the frames new since the last phase
    (`pace` observes it). Frames trimmed between listing and reading are left out and the draw is
    repeated over the ones read, so buffer churn cannot fail a phase. None when B is empty."""
    keys = session.store.frame_keys(session.sid)
    if not keys:
        return None
    times = [float(k) for k in keys]        # a frame's key is its capture time (store.add_frames)
    new = [k for k, t in zip(keys, times) if t > pace.seen_t][-NEWEST_SCORED:]
    newest = _observe_newest(session, pace, new) if new else {}
    pace.seen_t = max(pace.seen_t, times[-1])
    # a device shown the teacher's hints needs no update per clip: its student trains at the paper's pace
    hinting = session.cfg.hint_paced and session._hinted(pace)
    if not pace.due(times[-1], session._paper_interval(), relaxed=hinting):
        return SKIPPED
    pace.trained_t = times[-1]
    # compute-aware phases: K from the measured cost (phase_budget.py)
    k = session.budget.iterations(cost_key(session)) if session.budget is not None else session.cfg.k_iters
    shape = (k, session.cfg.batch_size)
    picks = draw_batches(rng, times, shape, pace.recent_from(times[0]), pace.recent_share)
    wanted = sorted(set(picks.ravel().tolist()))
    loaded = {keys[i]: newest[keys[i]] for i in wanted if keys[i] in newest}   # read once, for the score
    if unread := [keys[i] for i in wanted if keys[i] not in newest]:
        loaded.update(session.store.load_frames(session.sid, unread))
    if not loaded:
        return None
    used = [keys[i] for i in wanted if keys[i] in loaded]          # capture order
    if len(used) == len(wanted):
        position = {i: n for n, i in enumerate(wanted)}
        picks = np.vectorize(position.__getitem__, otypes=[np.int64])(picks)
    else:   # trimmed meanwhile: draw again over what was read
        log.info("session %s: %d of %d frames trimmed while reading; redrawing", session.sid,
                 len(wanted) - len(used), len(wanted))
        picks = rng.integers(0, len(used), size=shape)
    size = session.input_size()
    frames, labels = [], []
    for k in used:
        frame, label = loaded[k]
        if size and frame.shape[:2] != size:    # buffered before frames were resized at ingest
            frame, label = resize_pair(frame, label, size)
        frames.append(frame)
        labels.append(label)
    # channels_last input: oneDNN's NHWC kernels make forward + backward ≈ 1.25× faster on CPU
    # (0.13–0.15 vs 0.16–0.19 s per batch-4 iteration at 144×256); the weights and so the flat
    # parameter order are untouched
    x = batch_tensor(frames).to(session.device)
    y = torch.from_numpy(np.stack(labels)).long().to(session.device)
    return x, y, np.sort(picks, axis=1)


def cost_key(session: Session) -> tuple:
    """What a phase's cost depends on: the student, its input, the batch and where it trains."""
    return (session.architecture, *(session.input_size() or ()), session.cfg.batch_size, session.device.type)


def _observe_newest(session: Session, pace: PaceController, keys: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Score the model the device holds (the published parameters) on frames it never trained on, against
    the teacher's labels (the live mIoU; with the pace controller on, it also decides the pace); returns
    the frames read ({key: (frame, label)}, as `store.load_frames`)."""
    loaded = session.store.load_frames(session.sid, keys)
    keys = [k for k in keys if k in loaded]
    if not keys:
        return loaded
    size = session.input_size()
    pairs = [resize_pair(*loaded[k], size) if size else loaded[k] for k in keys]
    torch.set_num_threads(session.cfg.torch_threads)
    with torch.no_grad():
        logits = session.model(batch_tensor([f for f, _ in pairs]).to(session.device))
    pred = logits.argmax(1).cpu().numpy()
    miou = frame_miou(pred, np.stack([lab for _, lab in pairs]), logits.shape[1])
    session.live_miou.append(miou)           # the operator's signal (metrics, ams-admin sessions), pace or not
    session.live_scored += 1
    if pace.enabled and pace.observe(miou, float(keys[0])):
        log.info("session %s: scene change at %.1fs (newest-frames mIoU %.3f)", session.sid, float(keys[0]),
                 pace.last_miou)
    return loaded


@dataclass
class Prepared:
    """A phase's inputs, read and drawn (the start of the transaction; nothing adopted yet)."""

    session: Session
    x: torch.Tensor                  # (U, 3, H, W) the frames read
    y: torch.Tensor                  # (U, H, W) the teacher's labels
    picks: np.ndarray                # (K, B) mini-batch rows into x / y
    adam: AdamCDState                # scratch copies the phase moves
    rng: np.random.Generator
    pace: PaceController
    gamma: float
    seq_seen: int
    started: float
    loaded_s: float


def prepare(session: Session) -> Prepared | None:
    """Read the phase's frames on scratch copies of the RNG and pace state. None when there is nothing
    to train on (a skipped phase keeps its pace state: the clips count as processed)."""
    seq_seen = session.last_clip_seq
    rng, pace = copy.deepcopy(session.rng), copy.deepcopy(session.pace)
    started = time.perf_counter()
    data = _phase_frames(session, rng, pace)
    if data is None:
        return None
    if isinstance(data, Skipped):
        with session.lock:
            session.pace = pace
        return None
    # while the device is shown label hints its student shows only where it beats them: smaller updates
    gamma = session.cfg.hint_gamma if session._hinted(pace) else session.cfg.gamma
    return Prepared(session, *data, session.adam.clone(), rng, pace, gamma, seq_seen, started,
                    time.perf_counter() - started)


def groupable(sessions: list[Session]) -> bool:
    """Sessions whose phases may train as one: the same training graph shape and the same K."""
    graphs = [s.train_graph() for s in sessions]
    return all(g is not None for g in graphs) and len({cost_key(s) for s in sessions}) == 1


def train_phase(session: Session) -> PhaseResult | None:
    """K masked Adam iterations on scratch copies of the optimizer state and RNG. On any error the
    model's parameters are put back before the error propagates. None when there is nothing to train on."""
    result = train_group([session])[0]
    if isinstance(result, BaseException):
        raise result
    return result


def train_group(sessions: list[Session]) -> list[PhaseResult | None | BaseException]:
    """`train_phase` for several sessions, their K iterations batched into one forward and backward
    each (`groupable` sessions, ams/models/train_graph.py). Each session's outcome is its own: one
    whose frames fail to load drops out, an error in the batched training fails all of them."""
    out: list[PhaseResult | None | BaseException] = []
    ready: list[Prepared] = []
    for session in sessions:
        try:
            prep = prepare(session)
        except BaseException as exc:  # noqa: BLE001 - one session's failure is its own
            out.append(exc)
            continue
        out.append(None)
        if prep is not None:
            ready.append(prep)
    results: dict[int, PhaseResult | BaseException] = {}
    batches: dict[tuple, list[Prepared]] = {}
    for p in ready:      # one batch per K (the phase budget may move between reads); no graph: alone
        alone = id(p.session) if p.session.train_graph() is None else 0
        batches.setdefault((len(p.picks), alone), []).append(p)
    for batch in batches.values():
        results.update(_train_batch(batch))
    return [results.get(id(s), o) for s, o in zip(sessions, out)]


def _train_batch(ready: list[Prepared]) -> dict[int, PhaseResult | BaseException]:
    try:
        torch.set_num_threads(ready[0].session.cfg.torch_threads)
        # denormal gradients are slow on x86 (≈ 10 % of a phase here); the flag is per-thread processor
        # state, so it is cleared again after the phase for whatever else runs on this thread
        torch.set_flush_denormal(True)
        trained = time.perf_counter()
        rows, indices, losses = _train(ready)
        share = (time.perf_counter() - trained) / len(ready)   # each session's part (what the phase budget models)
        return {id(p.session): _finish(p, rows[i], indices[i], losses[i], share) for i, p in enumerate(ready)}
    except BaseException as exc:  # noqa: BLE001 - reported per session by the caller
        for p in ready:
            discard(p.session)
        return {id(p.session): exc for p in ready}
    finally:
        torch.set_flush_denormal(False)


def _train(ready: list[Prepared]) -> tuple[list[np.ndarray | None], list[np.ndarray], list[list[float]]]:
    """The K iterations: (trained flat parameters or None where the model holds them, I_n, losses) per session."""
    first = ready[0].session
    cfg = dataclasses.replace(first.adam_cfg, iterations=len(ready[0].picks))
    graph = first.train_graph()
    if graph is None:   # the module's own forward (a student without a training graph), one session
        (p,) = ready
        batches = iter(p.picks)
        student_loss = getattr(first.model, "training_loss", None)   # a student may define its own

        def module_loss(model: torch.nn.Module) -> torch.Tensor:
            rows = torch.from_numpy(next(batches)).to(first.device)
            xb = p.x.index_select(0, rows).contiguous(memory_format=torch.channels_last)
            yb = p.y.index_select(0, rows)
            with autocast(first.device, first.precision):
                return student_loss(xb, yb) if student_loss else F.cross_entropy(first.model(xb), yb)

        chosen_n, losses_n = coordinate_descent.train_phase(first.model, module_loss, p.adam,
                                                            dataclasses.replace(cfg, gamma=p.gamma), p.rng)
        return [None], [chosen_n], [losses_n]
    indices = [coordinate_descent.select_indices(p.adam, first.num_params, p.gamma, p.rng, cfg.selection, cfg.block)
               for p in ready]
    chosen = [torch.from_numpy(i).to(first.device) for i in indices]
    w = torch.stack([torch.from_numpy(p.session.flat).to(first.device) for p in ready]).requires_grad_(True)
    stats = graph.buffers([p.session.model for p in ready])

    def rows_loss(w: torch.Tensor, k: int) -> torch.Tensor:
        rows = [torch.from_numpy(p.picks[k]).to(first.device) for p in ready]
        xb = torch.cat([p.x.index_select(0, r) for p, r in zip(ready, rows)])
        yb = torch.cat([p.y.index_select(0, r) for p, r in zip(ready, rows)])
        with autocast(first.device, first.precision):
            return graph.losses(w, stats, xb, yb)

    losses = coordinate_descent.train_rows(w, rows_loss, [p.adam for p in ready], chosen, cfg, len(ready[0].picks))
    trained = w.detach().cpu().numpy()
    return list(trained), indices, losses


def _finish(p: Prepared, trained: np.ndarray | None, indices: np.ndarray, losses: list[float], train_s: float
            ) -> PhaseResult:
    """The update to what the edge holds; the model adopts it (float16 rounding or quantisation error
    included): the two copies stay bit-identical and the next phase's gradients see the error."""
    session, finishing = p.session, time.perf_counter()
    if trained is None:
        trained = flat_parameters(session.model)
    update, flat = sparse_update(session.sid, session.version, session.version + 1, session.flat, trained, indices,
                                 session.codec, session.phase + 1, session.latest_ts)
    load_flat_parameters(session.model, flat)
    return PhaseResult(update, flat, p.adam, p.rng, p.seq_seen, p.pace, {
        "frames": len(p.x), "scene_change": p.pace.changes > session.pace.changes, "loss_first": losses[0],
        "loss_last": losses[-1], "load_seconds": p.loaded_s, "iterations": len(p.picks), "train_seconds": train_s,
        "finish_seconds": time.perf_counter() - finishing, "seconds": time.perf_counter() - p.started})


def discard(session: Session) -> None:
    """Undo an uncommitted phase: the model's parameters back to the published ones."""
    load_flat_parameters(session.model, session.flat)


def run_phase(session: Session) -> PhaseOutcome | None:
    """Train, log the update in the store atomically with the new version, then adopt the new state.
    On any error nothing changes here or in the store (the error propagates). None when the
    buffer is empty (the clips seen so far count as processed)."""
    outcome = run_group([session])[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def run_group(sessions: list[Session]) -> list[PhaseOutcome | None | BaseException]:
    """`run_phase` for sessions trained together (`train_group`); each commits on its own."""
    return [_commit(session, result) if isinstance(result, PhaseResult) else _nothing(session, result)
            for session, result in zip(sessions, train_group(sessions))]


def _nothing(session: Session, result: BaseException | None) -> BaseException | None:
    if result is None:
        session.trained_clip_seq = session.last_clip_seq
    return result


def _commit(session: Session, result: PhaseResult) -> PhaseOutcome | BaseException:
    started = time.perf_counter()
    message = serde.update_bytes(result.update)
    checkpoint = result.update.phase % session.cfg.checkpoint_every == 0
    try:
        written = session.store.commit_phase(
            session.sid, session.version, session.training_meta(result), message,
            session.model.state_dict() if checkpoint else None, result.adam if checkpoint else None, session.token)
    except BaseException as exc:  # noqa: BLE001 - this session's phase fails, the group's others commit
        discard(session)
        return exc
    if session.budget is not None:
        stats = result.stats    # this session's own part of the phase: its frames, share of training, commit
        session.budget.observe(cost_key(session), stats["iterations"], stats["train_seconds"], stats["load_seconds"]
                               + stats["train_seconds"] + stats["finish_seconds"] + time.perf_counter() - started)
    with session.lock:
        session.version, session.phase, session.flat = result.update.new_version, result.update.phase, result.flat
        session.adam, session.rng, session.trained_clip_seq = result.adam, result.rng, result.seq_seen
        session.pace = result.pace
        if checkpoint:
            session.checkpoint_version = session.version
    return PhaseOutcome(result.update, message, result.seq_seen, {**result.stats, "state_bytes": written})
