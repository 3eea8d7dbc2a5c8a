"""One edge device's AMS session: its student copy, buffer, optimizer state and rate controllers.

Pure logic (no gRPC): `ingest` runs Algorithm 1's inference-phase bookkeeping (buffer + φ/ASR/ATR),
`train_phase` runs one training phase of Algorithm 2 and returns the sparse update to send.
Ingest runs on I/O threads; training runs on the single training thread; `lock` guards the
published parameters that both read.
"""
from __future__ import annotations

import logging
import threading
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ams.update_codec import SparseUpdate, flat_parameters, load_flat_parameters, make_update, round_to_float16
from ams.models import batch_tensor
from services.trainer.config import TrainerConfig
from services.trainer.coordinate_descent import AdamCDConfig, AdamCDState, train_phase
from services.trainer.rate_control import ASRController, ATRController, phi_score
from services.trainer.store import SessionStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Control:
    sampling_rate_fps: float
    update_interval_s: float


class Session:
    def __init__(self, sid: str, device_id: str, architecture: str, student_config: dict, model: torch.nn.Module,
                 store: SessionStore, cfg: TrainerConfig, version: int = 0, adam: AdamCDState | None = None):
        self.sid, self.device_id, self.architecture, self.student_config = sid, device_id, architecture, student_config
        self.model, self.store, self.cfg = model.eval(), store, cfg  # BN stays in eval mode: same as the edge
        self.version, self.phase = version, 0
        self.num_params = sum(p.numel() for p in model.parameters())
        self.adam = adam or AdamCDState.zeros(self.num_params)
        self.adam_cfg = AdamCDConfig(cfg.lr, cfg.beta1, cfg.beta2, 1e-8, cfg.gamma, cfg.k_iters)
        self.rng = np.random.default_rng([cfg.seed, zlib.crc32(device_id.encode())])  # replay is reproducible
        self.asr = ASRController(cfg.r_init, cfg.asr_eta, cfg.phi_target, cfg.r_min, cfg.r_max, cfg.asr_delta_t_s)
        self.atr = ATRController(cfg.t_update_s, cfg.atr_delta_s, tau_max_s=cfg.atr_max_s)
        self.last_clip_seq = 0         # highest clip seq ingested
        self.trained_clip_seq = 0      # highest clip seq a finished phase has seen
        self.latest_ts = float("-inf")
        self.prev_label: np.ndarray | None = None
        self.lock = threading.Lock()
        self.last_active = time.monotonic()   # for evicting abandoned sessions from memory
        self.ingest_lock = threading.Lock()
        self.flat = flat_parameters(model)  # the parameters the edge holds at `version`

    # --- inference phase (Alg. 1 lines 5–9) + ASR/ATR ---------------------------------------------
    def control(self) -> Control:
        return Control(self.asr.rate_fps, self.atr.update_interval_s if self.cfg.atr else self.cfg.t_update_s)

    def ingest(self, clip_seq: int, timestamps: list[float], frames: list[np.ndarray], labels: list[np.ndarray],
               probs: list[np.ndarray]) -> tuple[int, bool]:
        """Add labelled frames to B (trimmed to T_horizon); update φ, ASR and ATR.
        Returns (frames in buffer, whether the control values changed). Idempotent per clip_seq."""
        with self.ingest_lock:
            if clip_seq <= self.last_clip_seq:
                return len(self.store.frame_keys(self.sid)), False
            before = self.control()
            order = np.argsort(timestamps)
            for i in order:
                if self.prev_label is not None and self.prev_label.shape == labels[i].shape:
                    phi = phi_score(probs[i], self.prev_label)
                    if self.asr.observe(timestamps[i], phi):
                        if self.cfg.atr:
                            self.atr.decide(self.asr.rate_fps)
                        log.info("session %s at %.1fs: mean φ %.3f -> sampling %.2f fps, T_update %.0f s", self.sid,
                                 timestamps[i], self.asr.last_phi_mean, self.asr.rate_fps, self.control().update_interval_s)
                self.prev_label = labels[i]
            buffered = self.store.add_frames(self.sid, list(timestamps), frames, labels, self.cfg.t_horizon_s)
            self.latest_ts = max(self.latest_ts, max(timestamps))
            self.last_clip_seq = clip_seq
            self.store.save_meta(self.sid, self.meta())
            return buffered, self.control() != before

    # --- training phase (Alg. 1 lines 10–17, Alg. 2) ----------------------------------------------
    def _minibatch_loss(self, keys: list[str]):
        h, w = self.student_config.get("input_height"), self.student_config.get("input_width")

        def loss_fn(model: torch.nn.Module) -> torch.Tensor:
            picks = np.sort(self.rng.integers(0, len(keys), size=self.cfg.batch_size))   # uniform over B
            chosen = [keys[i] for i in picks]   # in capture order (keys are sorted), for students that pair frames
            frames, labels = self.store.load_frames(self.sid, chosen)
            x = batch_tensor(frames)   # (B, 3, H, W)
            y = torch.from_numpy(np.stack(labels)).long()                                  # (B, H, W)
            if h and w and x.shape[-2:] != (h, w):
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
                y = F.interpolate(y[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
            student_loss = getattr(model, "training_loss", None)   # a student may define its own (see lowlatency)
            return student_loss(x, y) if student_loss else F.cross_entropy(model(x), y)
        return loss_fn

    def train_phase(self) -> tuple[SparseUpdate | None, dict]:
        """Run K masked Adam iterations on mini-batches from the horizon; return the update to send."""
        seq_seen = self.last_clip_seq
        keys = self.store.frame_keys(self.sid)
        if not keys:
            self.trained_clip_seq = seq_seen
            return None, {"frames": 0}
        started = time.perf_counter()
        torch.set_num_threads(self.cfg.torch_threads)
        indices, losses = train_phase(self.model, self._minibatch_loss(keys), self.adam, self.adam_cfg, self.rng)
        flat = flat_parameters(self.model)
        round_to_float16(flat, indices)           # the edge receives float16: keep the very same bits here
        load_flat_parameters(self.model, flat)
        with self.lock:
            base, self.version, self.phase = self.version, self.version + 1, self.phase + 1
            update = make_update(self.sid, base, self.version, flat, indices, self.phase, self.latest_ts)
            self.flat = flat
            self.trained_clip_seq = seq_seen
        return update, {"frames": len(keys), "loss_first": losses[0], "loss_last": losses[-1],
                        "seconds": time.perf_counter() - started}

    def state_dict_copy(self) -> tuple[int, dict[str, torch.Tensor]]:
        """(version, state_dict) of the parameters the edge holds; safe to call during training."""
        with self.lock:
            version, flat = self.version, self.flat.copy()
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        offset = 0
        for name, p in self.model.named_parameters():
            n = p.numel()
            state[name] = torch.from_numpy(flat[offset:offset + n].reshape(p.shape).copy())
            offset += n
        return version, state

    def meta(self) -> dict:
        return {
            "device_id": self.device_id, "architecture": self.architecture, "version": self.version,
            "phase": self.phase, "last_clip_seq": self.last_clip_seq, "trained_clip_seq": self.trained_clip_seq,
            "rate_fps": self.asr.rate_fps, "update_interval_s": self.atr.update_interval_s,
            "slowdown": int(self.atr.slowdown), "latest_ts": self.latest_ts,
        }

    def restore_meta(self, meta: dict[str, str]) -> None:
        """Resume counters and rates after a trainer restart."""
        self.phase = int(meta.get("phase", 0))
        self.last_clip_seq = int(meta.get("last_clip_seq", 0))
        self.trained_clip_seq = int(meta.get("trained_clip_seq", 0))
        self.asr.rate_fps = float(meta.get("rate_fps", self.asr.rate_fps))
        self.atr.update_interval_s = float(meta.get("update_interval_s", self.atr.update_interval_s))
        self.atr.slowdown = bool(int(meta.get("slowdown", 0)))
        self.latest_ts = float(meta.get("latest_ts", "-inf"))
