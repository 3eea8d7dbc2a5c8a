"""One edge device's AMS session: its student copy, buffer, optimizer state and rate controllers.

Pure logic (no gRPC): `ingest` runs Algorithm 1's inference-phase bookkeeping (buffer + φ/ASR/ATR);
`run_phase` (phase.py) runs one training phase of Algorithm 2 as a transaction, leaving no trace on
failure (model, Adam state, RNG and version exactly as before). Ingest runs on I/O threads; a
session's phases run on one training worker at a time; `lock` guards the published parameters.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from ams.errors import FailedPrecondition, Unavailable
from ams.models import build_student
from ams.device import resolve_precision
from ams.models.train_graph import TrainGraph, supports as graph_supports
from ams.update_codec import FLOAT16, apply_update, flat_parameters, load_flat_parameters
from services.trainer import metrics, serde
from services.trainer.config import TrainerConfig
from services.trainer.coordinate_descent import AdamCDConfig, AdamCDState, adam_direction
from services.trainer.ingest import check_timestamps, resize_pair
from services.trainer.pace import PaceController
from services.trainer import phase
from services.trainer.phase import PhaseOutcome, PhaseResult
from services.trainer.phase_budget import PhaseBudget
from services.trainer.rate_control import ASRController, ATRController, phi_score
from services.trainer.store import Checkpoint, SessionStore

log = logging.getLogger(__name__)
LIVE_KEPT = 8         # live mIoU scores a session keeps (its trend, stored with each phase)


@dataclass(frozen=True)
class Control:
    sampling_rate_fps: float
    update_interval_s: float


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
        self.live_miou: deque[float] = deque(maxlen=LIVE_KEPT)   # the held model on new frames vs the teacher
        self.live_scored = 0                # scores taken since this replica held the session
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
        self.graph = (TrainGraph(self.model) if cfg.train_graph and graph_supports(self.model)
                      and not hasattr(self.model, "training_loss") else None)
        # the forward's arithmetic; `auto` gives bf16 only through the graph: a module's own forward keeps
        # oneDNN's slow bf16 strided depthwise backward (0.84× at 144×256, make bench-train-step)
        precision = resolve_precision(cfg.train_precision, self.device)
        self.precision = "fp32" if cfg.train_precision == "auto" and self.graph is None else precision

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
                        metrics.PHI.observe(self.asr.last_phi_mean)
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

    # --- training phase (phase.py) -----------------------------------------------------------------
    def run_phase(self) -> PhaseOutcome | None:
        return phase.run_phase(self)

    def train_phase(self) -> PhaseResult | None:
        return phase.train_phase(self)

    def train_graph(self) -> TrainGraph | None:
        """How phases train this student (ams/models/train_graph.py); None: the module's own forward."""
        return self.graph

    def discard(self) -> None:
        phase.discard(self)

    def cost_key(self) -> tuple:
        return phase.cost_key(self)

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
                "pace": json.dumps(result.pace.state()),
                # for operators (ams-admin sessions): the live mIoU trend, the phase's loss, when it committed
                "live_miou": json.dumps([round(m, 4) for m in self.live_miou]),
                "loss": round(float(result.stats["loss_last"]), 5), "committed_at": round(time.time(), 3)}

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
            update = serde.parse_update(raw)
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
        session.live_miou.extend(json.loads(meta.get("live_miou", "[]")))
        session.last_clip_seq = int(meta.get("last_clip_seq", 0))
        session.asr.rate_fps = float(meta.get("rate_fps", session.asr.rate_fps))
        session.atr.update_interval_s = float(meta.get("update_interval_s", session.atr.update_interval_s))
        session.atr.slowdown = bool(int(meta.get("slowdown", 0)))
        session.latest_ts = float(meta.get("latest_ts", "-inf"))
        return session


