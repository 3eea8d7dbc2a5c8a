"""One edge device's AMS session: its student copy, buffer, optimizer state and rate controllers.

Pure logic (no gRPC): `ingest` runs Algorithm 1's inference-phase bookkeeping (buffer + φ/ASR/ATR),
`run_phase` runs one training phase of Algorithm 2 as a transaction: it reads a fixed set of frames
up front, trains on scratch copies of the optimizer state and RNG, and either commits (the update is
logged in the store atomically with the new version, then the session adopts the new state) or
leaves no trace (model, Adam state, RNG and version exactly as before). Ingest runs on I/O threads;
a session's phases run on one training worker at a time; `lock` guards the published parameters.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import threading
import time
import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ams.errors import FailedPrecondition, InvalidArgument, OutOfRange, Unavailable
from ams.miou import frame_miou
from ams.models import batch_tensor, build_student
from ams.update_codec import (FLOAT16, SparseUpdate, apply_update, decode_update, encode_update, flat_parameters,
                              load_flat_parameters, sparse_update)
from ams.v1 import streaming_pb2
from services.trainer.config import TrainerConfig
from services.trainer.coordinate_descent import AdamCDConfig, AdamCDState, adam_direction, train_phase
from services.trainer.pace import PaceController, draw_batches
from services.trainer.phase_budget import PhaseBudget
from services.trainer.rate_control import ASRController, ATRController, phi_score
from services.trainer.store import Checkpoint, SessionStore

log = logging.getLogger(__name__)


class Skipped:
    """_phase_frames: no phase now, the pace controller found the held model still good (pace.py)."""


SKIPPED = Skipped()
NEWEST_SCORED = 8    # at most this many of a phase's new frames are scored for the pace controller


@dataclass(frozen=True)
class Control:
    sampling_rate_fps: float
    update_interval_s: float


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
    """A committed phase: the wire message to publish and what it cost."""

    message: streaming_pb2.ModelUpdate
    seq_seen: int
    stats: dict


class Session:
    def __init__(self, sid: str, device_id: str, architecture: str, student_config: dict, model: torch.nn.Module,
                 store: SessionStore, cfg: TrainerConfig, version: int = 0, adam: AdamCDState | None = None,
                 device: torch.device | str = "cpu", codec: int = FLOAT16):
        self.codec = codec                 # the update codec negotiated with the device (fixed per session)
        self.sid, self.device_id, self.architecture, self.student_config = sid, device_id, architecture, student_config
        self.device = torch.device(device)
        self.model, self.store, self.cfg = model.to(self.device).eval(), store, cfg  # BN in eval mode, as on the edge
        self.version, self.phase, self.checkpoint_version = version, 0, version
        self.num_params = sum(p.numel() for p in model.parameters())
        self.adam = (adam or AdamCDState.zeros(self.num_params)).to(self.device)
        self.adam_cfg = AdamCDConfig(cfg.lr, cfg.beta1, cfg.beta2, 1e-8, cfg.gamma, cfg.k_iters, cfg.selection,
                                     cfg.selection_block)
        self.rng = np.random.default_rng([cfg.seed, zlib.crc32(device_id.encode())])  # replay is reproducible
        self.asr = ASRController(cfg.r_init, cfg.asr_eta, cfg.phi_target, cfg.r_min, cfg.r_max, cfg.asr_delta_t_s)
        self.atr = ATRController(cfg.t_update_s, cfg.atr_delta_s, tau_max_s=cfg.atr_max_s)
        self.pace = PaceController(cfg.t_fast_s, cfg.settle_miou, cfg.change_jump, cfg.recent_share)
        self.last_clip_seq = 0         # highest clip seq ingested
        self.trained_clip_seq = 0      # highest clip seq a finished phase has seen
        self.latest_ts = float("-inf")
        self.prev_label: np.ndarray | None = None
        self.upload_times: dict[int, float] = {}   # clip seq -> wall time of its upload (for the lag metric)
        self.lock = threading.Lock()
        self.last_active = time.monotonic()   # for evicting abandoned sessions from memory
        self.opened_at = time.monotonic()     # a device over its session quota loses its oldest
        self.ingest_lock = threading.RLock()
        self.uploading = False              # an upload of this session is in flight (the manager allows one)
        self.accepts_hints = False          # the device asked for label hints (OpenSession's label_hints)
        self.flat = flat_parameters(model)  # the parameters the edge holds at `version`
        self.token: int | None = None       # fencing token of this replica's lease on the session (every write)
        self.budget: PhaseBudget | None = None   # the trainer's compute-aware K (None: k_iters)

    # --- inference phase (Alg. 1 lines 5–9) + ASR/ATR ---------------------------------------------
    def control(self) -> Control:
        return Control(self.asr.rate_fps, self.pace.interval(self._paper_interval()))

    def _paper_interval(self) -> float:
        """T_update as the paper sets it: ATR's when on, else the configured one."""
        return self.atr.update_interval_s if self.cfg.atr else self.cfg.t_update_s

    @property
    def offers_hints(self) -> bool:
        """Label hints are on for this trainer (hint_miou > 0, with fast start's pace controller)."""
        return self.cfg.hint_miou > 0 and self.pace.enabled

    def wants_hint(self, pace: PaceController | None = None) -> bool:
        """Whether a clip's newest teacher label goes to the device (label hints, issue 23): while the
        pace controller has not yet scored the held student on new frames, or finds the running level
        of that score below hint_miou (its EMA: one perfect frame with nobody in it, which a student
        that marks nothing gets right, does not stop the hints; a student good for a few clips does)."""
        pace = pace or self.pace
        miou = pace.level if pace.level is not None else pace.last_miou
        return self.offers_hints and (miou is None or miou < self.cfg.hint_miou)

    def _hinted(self, pace: PaceController) -> bool:
        """This session's device is shown label hints (it carries them and the trainer sends them)."""
        return self.accepts_hints and self.wants_hint(pace)

    def input_size(self) -> tuple[int, int] | None:
        """(H, W) the student trains at, when its config fixes one."""
        h, w = self.student_config.get("input_height"), self.student_config.get("input_width")
        return (int(h), int(w)) if h and w else None

    def ingest(self, clip_seq: int, timestamps: list[float], frames: list[np.ndarray], labels: list[np.ndarray],
               probs: list[np.ndarray]) -> tuple[int, bool]:
        """Update φ, ASR and ATR from the teacher's labels, then add the labelled frames to B at the
        student's input size (not the camera's), trimmed to T_horizon and the buffer cap.
        Returns (frames in buffer, whether the control values changed). Idempotent per clip_seq."""
        with self.ingest_lock:
            if clip_seq <= self.last_clip_seq:
                return len(self.store.frame_keys(self.sid)), False
            check_timestamps(timestamps, self.latest_ts)
            before = self.control()
            buffered = self.ingest_part(timestamps, frames, labels, probs)
            self.end_clip(clip_seq, timestamps)
            return buffered, self.control() != before

    def ingest_part(self, timestamps: list[float], frames: list[np.ndarray], labels: list[np.ndarray],
                    probs: list[np.ndarray]) -> int:
        """`ingest` for consecutive frames of a clip, the clip ended by `end_clip`: the manager ingests
        a clip a few frames at a time, so that no more than those frames' labels, probabilities and
        PNGs are ever held. Re-adding a frame is harmless (frames are keyed by their timestamp). Labels
        of a class the student has no output for (a teacher of more classes than the session's student)
        are refused before anything is buffered."""
        classes = int(self.student_config.get("num_classes") or 0)
        top = max((int(lab.max()) for lab in labels if lab.size), default=0)
        if classes and top >= classes:
            raise FailedPrecondition(f"the teacher labels class {top}; session {self.sid}'s student has {classes} "
                                     "classes: run the teacher its checkpoint was made for (AMS_TEACHER_BACKEND)")
        with self.ingest_lock:
            for i in np.argsort(timestamps):
                if self.prev_label is not None and self.prev_label.shape == labels[i].shape:
                    phi = phi_score(probs[i], self.prev_label)
                    if self.asr.observe(timestamps[i], phi):
                        if self.cfg.atr:
                            self.atr.decide(self.asr.rate_fps)
                        log.info("session %s at %.1fs: mean φ %.3f -> sampling %.2f fps, T_update %.0f s", self.sid,
                                 timestamps[i], self.asr.last_phi_mean, self.asr.rate_fps, self.control().update_interval_s)
                self.prev_label = labels[i]
            if size := self.input_size():   # the manager resizes before labelling; this covers other callers
                frames, labels = map(list, zip(*[resize_pair(f, lab, size) for f, lab in zip(frames, labels)]))
            return self.store.add_frames(self.sid, list(timestamps), frames, labels, self.cfg.t_horizon_s,
                                         self.token, max_frames=self.cfg.buffer_cap())

    def end_clip(self, clip_seq: int, timestamps: list[float]) -> None:
        """The clip is buffered: later clips must start after it, and a re-delivery is a no-op."""
        with self.ingest_lock:
            self.latest_ts = max(self.latest_ts, max(timestamps))
            self.last_clip_seq = clip_seq
            self.store.save_meta(self.sid, self.ingest_meta(), self.token)

    # --- training phase (Alg. 1 lines 10–17, Alg. 2) as a transaction -----------------------------
    def _phase_frames(self, rng: np.random.Generator, pace: PaceController
                      ) -> tuple[torch.Tensor, torch.Tensor, np.ndarray] | Skipped | None:
        """Read the phase's frames up front: X (U, 3, H, W), Y (U, H, W) and picks (K, B), row k the
        indices into X/Y of mini-batch S_k, drawn uniformly over B (after a scene change partly from the
        frames since it, pace.py) and in capture order (students that pair frames rely on it). With the
        pace controller on, the held model is first scored on the frames new since the last phase
        (`pace` observes it). Frames trimmed between listing and reading are left out and the draw is
        repeated over the ones read, so buffer churn cannot fail a phase. None when B is empty."""
        keys = self.store.frame_keys(self.sid)
        if not keys:
            return None
        times = [float(k) for k in keys]        # a frame's key is its capture time (store.add_frames)
        new = [k for k, t in zip(keys, times) if t > pace.seen_t][-NEWEST_SCORED:] if pace.enabled else []
        newest = self._observe_newest(pace, new) if new else {}
        pace.seen_t = max(pace.seen_t, times[-1])
        # a device shown the teacher's hints needs no update per clip: its student trains at the paper's pace
        hinting = self.cfg.hint_paced and self._hinted(pace)
        if not pace.due(times[-1], self._paper_interval(), relaxed=hinting):
            return SKIPPED
        pace.trained_t = times[-1]
        # compute-aware phases: K from the measured cost (phase_budget.py)
        k = self.budget.iterations(self.cost_key()) if self.budget is not None else self.cfg.k_iters
        shape = (k, self.cfg.batch_size)
        picks = draw_batches(rng, times, shape, pace.recent_from(times[0]), pace.recent_share)
        wanted = sorted(set(picks.ravel().tolist()))
        loaded = {keys[i]: newest[keys[i]] for i in wanted if keys[i] in newest}   # read once, for the score
        if unread := [keys[i] for i in wanted if keys[i] not in newest]:
            loaded.update(self.store.load_frames(self.sid, unread))
        if not loaded:
            return None
        used = [keys[i] for i in wanted if keys[i] in loaded]          # capture order
        if len(used) == len(wanted):
            position = {i: n for n, i in enumerate(wanted)}
            picks = np.vectorize(position.__getitem__, otypes=[np.int64])(picks)
        else:   # trimmed meanwhile: draw again over what was read
            log.info("session %s: %d of %d frames trimmed while reading; redrawing", self.sid,
                     len(wanted) - len(used), len(wanted))
            picks = rng.integers(0, len(used), size=shape)
        size = self.input_size()
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
        x = batch_tensor(frames).to(self.device)
        y = torch.from_numpy(np.stack(labels)).long().to(self.device)
        return x, y, np.sort(picks, axis=1)

    def cost_key(self) -> tuple:
        """What a phase's cost depends on: the student, its input, the batch and where it trains."""
        return (self.architecture, *(self.input_size() or ()), self.cfg.batch_size, self.device.type)

    def _observe_newest(self, pace: PaceController, keys: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Score the model the device holds (the published parameters) on frames it never trained on;
        returns the frames read ({key: (frame, label)}, as `store.load_frames`)."""
        loaded = self.store.load_frames(self.sid, keys)
        keys = [k for k in keys if k in loaded]
        if not keys:
            return loaded
        size = self.input_size()
        pairs = [resize_pair(*loaded[k], size) if size else loaded[k] for k in keys]
        torch.set_num_threads(self.cfg.torch_threads)
        with torch.no_grad():
            logits = self.model(batch_tensor([f for f, _ in pairs]).to(self.device))
        pred = logits.argmax(1).cpu().numpy()
        if pace.observe(frame_miou(pred, np.stack([lab for _, lab in pairs]), logits.shape[1]), float(keys[0])):
            log.info("session %s: scene change at %.1fs (newest-frames mIoU %.3f)", self.sid, float(keys[0]),
                     pace.last_miou)
        return loaded

    def train_phase(self) -> PhaseResult | None:
        """K masked Adam iterations on scratch copies of the optimizer state and RNG. The model's
        parameters move during the phase; on any error they are put back before the error propagates.
        None when there is nothing to train on."""
        seq_seen = self.last_clip_seq
        rng, pace = copy.deepcopy(self.rng), copy.deepcopy(self.pace)
        started = time.perf_counter()
        try:
            data = self._phase_frames(rng, pace)
            if data is None:
                return None
            if isinstance(data, Skipped):   # nothing to send: the clips count as processed, the pace state is kept
                with self.lock:
                    self.pace = pace
                return None
            x, y, picks = data
            loaded_s = time.perf_counter() - started
            torch.set_num_threads(self.cfg.torch_threads)
            # denormal gradients are slow on x86 (≈ 10 % of a phase here); the flag is per-thread processor
            # state, so it is cleared again after the phase for whatever else runs on this thread
            torch.set_flush_denormal(True)
            adam = self.adam.clone()
            batches = iter(picks)
            student_loss = getattr(self.model, "training_loss", None)   # a student may define its own

            def loss_fn(model: torch.nn.Module) -> torch.Tensor:
                rows = torch.from_numpy(next(batches)).to(self.device)
                xb = x.index_select(0, rows).contiguous(memory_format=torch.channels_last)
                yb = y.index_select(0, rows)
                return student_loss(xb, yb) if student_loss else F.cross_entropy(model(xb), yb)

            trained = time.perf_counter()
            # while the device is shown label hints its student shows only where it beats them: smaller updates
            gamma = self.cfg.hint_gamma if self._hinted(pace) else self.cfg.gamma
            indices, losses = train_phase(self.model, loss_fn, adam,
                                          dataclasses.replace(self.adam_cfg, iterations=len(picks), gamma=gamma), rng)
            train_s = time.perf_counter() - trained
            # adopt what the edge will hold (float16 rounding or quantisation error included): the two
            # copies stay bit-identical and the next phase's gradients see the error (error feedback)
            update, flat = sparse_update(self.sid, self.version, self.version + 1, self.flat,
                                         flat_parameters(self.model), indices, self.codec, self.phase + 1,
                                         self.latest_ts)
            load_flat_parameters(self.model, flat)
        except BaseException:
            self.discard()
            raise
        finally:
            torch.set_flush_denormal(False)
        return PhaseResult(update, flat, adam, rng, seq_seen, pace, {
            "frames": len(x), "scene_change": pace.changes > self.pace.changes, "loss_first": losses[0], "loss_last": losses[-1],
            "load_seconds": loaded_s, "iterations": len(picks), "train_seconds": train_s,
            "seconds": time.perf_counter() - started})

    def discard(self) -> None:
        """Undo an uncommitted phase: the model's parameters back to the published ones."""
        load_flat_parameters(self.model, self.flat)

    def run_phase(self) -> PhaseOutcome | None:
        """Train, log the update in the store atomically with the new version, then adopt the new state.
        On any error nothing changes here or in the store (the error propagates). None when the
        buffer is empty (the clips seen so far count as processed)."""
        started = time.perf_counter()
        result = self.train_phase()
        if result is None:
            self.trained_clip_seq = self.last_clip_seq
            return None
        message = encode_update(result.update)
        checkpoint = result.update.phase % self.cfg.checkpoint_every == 0
        try:
            written = self.store.commit_phase(
                self.sid, self.version, self.training_meta(result), message.SerializeToString(),
                self.model.state_dict() if checkpoint else None, result.adam if checkpoint else None, self.token)
        except BaseException:
            self.discard()
            raise
        if self.budget is not None:
            self.budget.observe(self.cost_key(), result.stats["iterations"], result.stats["train_seconds"],
                                time.perf_counter() - started)
        with self.lock:
            self.version, self.phase, self.flat = result.update.new_version, result.update.phase, result.flat
            self.adam, self.rng, self.trained_clip_seq = result.adam, result.rng, result.seq_seen
            self.pace = result.pace
            if checkpoint:
                self.checkpoint_version = self.version
        return PhaseOutcome(message, result.seq_seen, {**result.stats, "state_bytes": written})

    def checkpoint(self) -> int:
        """Store the full model and Adam state of the current version (graceful shutdown); bytes written."""
        if self.checkpoint_version == self.version:
            return 0
        written = self.store.checkpoint(self.sid, self.version, self.state_dict_copy()[1], self.adam, self.token)
        self.checkpoint_version = self.version
        return written

    def state_dict_copy(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, state_dict) of the parameters the edge holds; safe to call during training."""
        with self.lock:
            version, flat = self.version, self.flat.copy()
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        offset = 0
        for name, p in self.model.named_parameters():
            n = p.numel()
            state[name] = torch.from_numpy(flat[offset:offset + n].reshape(p.shape).copy())
            offset += n
        return version, state

    # --- persistence ------------------------------------------------------------------------------
    def ingest_meta(self) -> dict:
        """Fields ingest owns. Never the version: only a phase commit writes that, with its update."""
        return {
            "device_id": self.device_id, "architecture": self.architecture, "last_clip_seq": self.last_clip_seq,
            "rate_fps": self.asr.rate_fps, "update_interval_s": self.atr.update_interval_s,
            "slowdown": int(self.atr.slowdown), "latest_ts": self.latest_ts, "codec": self.codec,
        }

    def training_meta(self, result: PhaseResult) -> dict:
        return {"version": result.update.new_version, "phase": result.update.phase,
                "trained_clip_seq": result.seq_seen, "rng": json.dumps(result.rng.bit_generator.state),
                "pace": json.dumps(result.pace.state())}

    @classmethod
    def from_checkpoint(cls, sid: str, ckpt: Checkpoint, store: SessionStore, cfg: TrainerConfig,
                        device: torch.device | str = "cpu") -> "Session":
        """Rebuild a session exactly as stored: the checkpoint's weights taken to the stored version
        by the logged update chain (each step checksum-verified), Adam state and RNG, rates, counters."""
        meta = ckpt.meta
        config = json.loads(meta["config_json"])
        model = build_student(meta["architecture"], config)
        model.load_state_dict(ckpt.state_dict)
        version, target = int(meta["checkpoint_version"]), int(meta["version"])
        flat = flat_parameters(model)
        for raw in ckpt.updates:
            update = decode_update(streaming_pb2.ModelUpdate.FromString(raw))
            if update.base_version == version:
                flat, version = apply_update(flat, version, update), update.new_version
        if version != target:
            raise Unavailable(f"session {sid}: stored chain reaches v{version}, not the stored v{target}")
        load_flat_parameters(model, flat)
        adam = AdamCDState(ckpt.adam["m"], ckpt.adam["v"], None, int(ckpt.adam["step"]))
        session = cls(sid, meta["device_id"], meta["architecture"], config, model, store, cfg, version, adam, device,
                      int(meta.get("codec", FLOAT16)))
        if ckpt.adam.get("has_u"):
            session.adam.u = adam_direction(session.adam, session.adam_cfg)
        session.checkpoint_version = int(meta["checkpoint_version"])
        session.phase = int(meta.get("phase", 0))
        session.trained_clip_seq = int(meta.get("trained_clip_seq", 0))
        if "rng" in meta:
            session.rng.bit_generator.state = json.loads(meta["rng"])
        if "pace" in meta:
            session.pace.restore(json.loads(meta["pace"]))
        session.last_clip_seq = int(meta.get("last_clip_seq", 0))
        session.asr.rate_fps = float(meta.get("rate_fps", session.asr.rate_fps))
        session.atr.update_interval_s = float(meta.get("update_interval_s", session.atr.update_interval_s))
        session.atr.slowdown = bool(int(meta.get("slowdown", 0)))
        session.latest_ts = float(meta.get("latest_ts", "-inf"))
        return session


def check_timestamps(timestamps: list[float], after: float) -> None:
    """A clip's capture timestamps: finite video seconds ≥ 0, strictly increasing, and all after
    `after` (the newest timestamp of the session's earlier clips): OUT_OF_RANGE otherwise, so a
    device cannot stack frames on one instant or rewind its clock to keep frames in its buffer."""
    if not all(math.isfinite(t) and t >= 0 for t in timestamps):
        raise InvalidArgument("timestamps must be finite, non-negative video seconds")
    if any(b <= a for a, b in zip(timestamps, timestamps[1:])):
        raise OutOfRange("a clip's timestamps must strictly increase")
    if timestamps and timestamps[0] <= after:
        raise OutOfRange(f"clip starts at {timestamps[0]:.3f} s, not after the session's last frame at {after:.3f} s")


def resize_frame(frame: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """A frame brought to the student's (H, W), area-averaged (a no-op at that size)."""
    h, w = size_hw
    return frame if frame.shape[:2] == (h, w) else cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)


def resize_pair(frame: np.ndarray, label: np.ndarray, size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A frame (area-averaged) and its label map (nearest class) brought to the student's (H, W)."""
    h, w = size_hw
    if label.shape[:2] != (h, w):
        label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return resize_frame(frame, size_hw), label
