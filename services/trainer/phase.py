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


def train_phase(session: Session) -> PhaseResult | None:
    """K masked Adam iterations on scratch copies of the optimizer state and RNG. The model's
    parameters move during the phase; on any error they are put back before the error propagates.
    None when there is nothing to train on."""
    seq_seen = session.last_clip_seq
    rng, pace = copy.deepcopy(session.rng), copy.deepcopy(session.pace)
    started = time.perf_counter()
    try:
        data = _phase_frames(session, rng, pace)
        if data is None:
            return None
        if isinstance(data, Skipped):   # nothing to send: the clips count as processed, the pace state is kept
            with session.lock:
                session.pace = pace
            return None
        x, y, picks = data
        loaded_s = time.perf_counter() - started
        torch.set_num_threads(session.cfg.torch_threads)
        # denormal gradients are slow on x86 (≈ 10 % of a phase here); the flag is per-thread processor
        # state, so it is cleared again after the phase for whatever else runs on this thread
        torch.set_flush_denormal(True)
        adam = session.adam.clone()
        batches = iter(picks)
        student_loss = getattr(session.model, "training_loss", None)   # a student may define its own

        def loss_fn(model: torch.nn.Module) -> torch.Tensor:
            rows = torch.from_numpy(next(batches)).to(session.device)
            xb = x.index_select(0, rows).contiguous(memory_format=torch.channels_last)
            yb = y.index_select(0, rows)
            return student_loss(xb, yb) if student_loss else F.cross_entropy(model(xb), yb)

        trained = time.perf_counter()
        # while the device is shown label hints its student shows only where it beats them: smaller updates
        gamma = session.cfg.hint_gamma if session._hinted(pace) else session.cfg.gamma
        indices, losses = coordinate_descent.train_phase(session.model, loss_fn, adam,
                                                         dataclasses.replace(session.adam_cfg, iterations=len(picks),
                                                                             gamma=gamma), rng)
        train_s = time.perf_counter() - trained
        # adopt what the edge will hold (float16 rounding or quantisation error included): the two
        # copies stay bit-identical and the next phase's gradients see the error (error feedback)
        update, flat = sparse_update(session.sid, session.version, session.version + 1, session.flat,
                                     flat_parameters(session.model), indices, session.codec, session.phase + 1,
                                     session.latest_ts)
        load_flat_parameters(session.model, flat)
    except BaseException:
        discard(session)
        raise
    finally:
        torch.set_flush_denormal(False)
    return PhaseResult(update, flat, adam, rng, seq_seen, pace, {
        "frames": len(x), "scene_change": pace.changes > session.pace.changes, "loss_first": losses[0], "loss_last": losses[-1],
        "load_seconds": loaded_s, "iterations": len(picks), "train_seconds": train_s,
        "seconds": time.perf_counter() - started})


def discard(session: Session) -> None:
    """Undo an uncommitted phase: the model's parameters back to the published ones."""
    load_flat_parameters(session.model, session.flat)


def run_phase(session: Session) -> PhaseOutcome | None:
    """Train, log the update in the store atomically with the new version, then adopt the new state.
    On any error nothing changes here or in the store (the error propagates). None when the
    buffer is empty (the clips seen so far count as processed)."""
    started = time.perf_counter()
    result = train_phase(session)
    if result is None:
        session.trained_clip_seq = session.last_clip_seq
        return None
    message = serde.update_bytes(result.update)
    checkpoint = result.update.phase % session.cfg.checkpoint_every == 0
    try:
        written = session.store.commit_phase(
            session.sid, session.version, session.training_meta(result), message,
            session.model.state_dict() if checkpoint else None, result.adam if checkpoint else None, session.token)
    except BaseException:
        discard(session)
        raise
    if session.budget is not None:
        session.budget.observe(cost_key(session), result.stats["iterations"], result.stats["train_seconds"],
                            time.perf_counter() - started)
    with session.lock:
        session.version, session.phase, session.flat = result.update.new_version, result.update.phase, result.flat
        session.adam, session.rng, session.trained_clip_seq = result.adam, result.rng, result.seq_seen
        session.pace = result.pace
        if checkpoint:
            session.checkpoint_version = session.version
    return PhaseOutcome(result.update, message, result.seq_seen, {**result.stats, "state_bytes": written})

