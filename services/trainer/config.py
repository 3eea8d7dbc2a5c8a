"""Trainer service configuration (AMS_* environment variables, CLI overrides)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ams.config import ConfigError, check_tls, env_name
from ams.device import resolve_device, resolve_precision
from ams.update_codec import parse_codecs
from services.trainer.coordinate_descent import SELECTIONS


# The paper's settings (AMS §4.1): T_update 10 s, T_horizon 240 s, K 20, lr 1e-3, γ 5 %, batch 4, ASR from
# 1 fps within [0.1, 1] every 10 s, ATR on. `TrainerConfig.paper()` starts from them; the evaluation, the
# fleet benchmark and chaos override what they must, by name.
PAPER = {"t_update_s": 10.0, "t_horizon_s": 240.0, "k_iters": 20, "lr": 1e-3, "gamma": 0.05, "batch_size": 4,
         "r_init": 1.0, "r_min": 0.1, "r_max": 1.0, "asr_delta_t_s": 10.0, "atr": True}


def _f(default, help_: str, env: str | None = None):
    return field(default=default, metadata={"help": help_, **({"env": env} if env else {})})


@dataclass(frozen=True)
class TrainerConfig:
    host: str = _f("0.0.0.0", "address to bind", "AMS_TRAINER_HOST")
    port: int = _f(50052, "gRPC port (0 = any free port)", "AMS_TRAINER_PORT")
    metrics_port: int = _f(9102, "Prometheus /metrics port (0 = off)", "AMS_TRAINER_METRICS_PORT")
    redis_url: str = _f("redis://127.0.0.1:6379/0", "Redis holding frame buffers and session state (memory:// keeps them in "
                        "this process: one trainer, nothing survives a restart; for trying it out and tests)")
    teacher_addr: str = _f("127.0.0.1:50051", "teacher service host:port")
    # transport security (ams-admin makes these files)
    tls_ca: str = _f("", "CA certificate: device and teacher certificates must be signed by it")
    tls_cert: str = _f("", "the trainer's certificate (served to devices, presented to the teacher)")
    tls_key: str = _f("", "the trainer's private key")
    trusted_proxy_sha256: str = _f("", "SHA-256 fingerprints (comma-separated; ams-admin fingerprint) of the load "
                                       "balancers whose forwarded client certificates this trainer believes; empty: "
                                       "none, an ams-proxy certificate is PERMISSION_DENIED")
    insecure: bool = _f(False, "plain text, device id from the ams-device-id header: for a local demo only")
    reflection: bool = _f(False, "gRPC server reflection on the device port")
    checkpoint_dir: str = _f("assets/students", "directory of pretrained student checkpoints (*.pt)")
    # Algorithm 1 / 2 (AMS paper defaults)
    t_update_s: float = _f(10.0, "T_update: seconds of video between model updates (τ_min of ATR)")
    t_horizon_s: float = _f(240.0, "T_horizon: seconds of video the training buffer keeps")
    k_iters: int = _f(20, "K: Adam iterations per training phase when AMS_PHASE_SHARE=0 (the paper's fixed K); with "
                          "compute-aware phases, a student's first phase, before its cost is measured")
    lr: float = _f(1e-3, "Adam learning rate α")
    beta1: float = _f(0.9, "Adam β1")
    beta2: float = _f(0.999, "Adam β2")
    gamma: float = _f(0.05, "γ: fraction of parameters sent per update")
    selection_block: int = _f(1, "structured selection: > 1 chooses I_n as whole aligned blocks of this many "
                                 "consecutive coordinates (ranked by their mean absolute Adam update); "
                                 "1 = per coordinate, as the paper")
    update_codecs: str = _f("int4,int8,float16", "update codecs in order of preference: each session gets the first "
                                                 "its edge decodes (int4/int8: quantised changes + entropy-coded "
                                                 "positions; float16: new values + gzip'd bitmask, for old edges)")
    phase_share: float = _f(0.4, "compute-aware phases (phase_budget.py): K sized from the measured cost of a phase so "
                                 "that one phase of every session, the workers taking them in turn, fills this share "
                                 "of T_update (a GPU trains far more than k_iters, a loaded CPU fewer; at most 0.5 keeps a "
                                 "clip's update within T_update in fast start); 0 = K is k_iters")
    k_min: int = _f(2, "compute-aware phases: fewest iterations a phase gets")
    k_max: int = _f(200, "compute-aware phases: most iterations a phase gets")
    batch_size: int = _f(4, "frames per mini-batch S_k")
    selection: str = _f("gradient", "coordinate selection: gradient (AMS), or the evaluation's ablations random, "
                                    "first, last, first_last")
    # ASR (§3.2) and ATR (App. D)
    r_init: float = _f(1.0, "initial sampling rate (fps)")
    r_min: float = _f(0.1, "minimum sampling rate (fps)")
    r_max: float = _f(1.0, "maximum sampling rate (fps)")
    asr_eta: float = _f(0.5, "η_r: ASR step size (fps per unit of φ)")
    phi_target: float = _f(0.3, "φ_target: target φ-score (pixel-mean cross-entropy)")
    asr_delta_t_s: float = _f(10.0, "δt: seconds of video between rate decisions")
    atr: bool = _f(True, "adapt T_update (slowdown mode for stationary scenes)")
    atr_delta_s: float = _f(2.0, "Δ: T_update growth per decision in slowdown mode")
    atr_max_s: float = _f(60.0, "largest T_update in slowdown mode")
    # fast start and scene changes (services/trainer/pace.py)
    t_fast_s: float = _f(1.0, "fast start and scene changes (pace.py): the device uploads a clip every this many "
                              "seconds and every clip gets a phase while the session is unsettled (from its first clip "
                              "until the held model's mIoU on new frames reaches settle_miou, and again after a drop); "
                              "settled, a phase runs every T_update (0 = off: the paper's fixed T_update)")
    settle_miou: float = _f(0.9, "newest-frames mIoU (held model vs teacher) at which a session is settled")
    change_jump: float = _f(0.15, "a drop of the newest-frames mIoU this far below its running level is a scene change")
    recent_share: float = _f(0.5, "after a scene change, the share of each mini-batch drawn from frames since it")
    hint_miou: float = _f(1.0, "label hints: while the held student's newest-frames mIoU is below this (or not yet "
                               "measured), an edge that carries labels (OpenSession's label_hints) gets the teacher's "
                               "label of each clip's newest frame as soon as it is labelled and shows it, carried by "
                               "optical flow, unless its HintJudge finds its student better (1 = always: the edge "
                               "chooses; 0 = never; needs t_fast_s > 0)")
    hint_paced: bool = _f(True, "while a device is shown label hints, its student's phases run every T_update (as "
                                "settled), not one per clip: fewer updates, less downlink; the device shows the "
                                "teacher's labels meanwhile")
    hint_gamma: float = _f(0.02, "γ of the phases that run while a device is shown label hints: its student is shown only "
                                 "where it beats the carried labels (the edge's HintJudge), so its updates are smaller")
    # limits and operations
    session_ttl_s: int = _f(900, "seconds after which an abandoned session's keys expire")
    max_sessions: int = _f(16, "sessions served at once")
    max_sessions_per_device: int = _f(1, "sessions one device may hold; opening one more replaces its oldest")
    max_opens_per_minute: float = _f(6.0, "OpenSession calls one device may make per minute (token bucket)")
    allow_custom_students: bool = _f(False, "let devices open sessions on their own architecture/config (within "
                                            "the two limits below); otherwise only on installed checkpoints")
    max_student_params: int = _f(5_000_000, "largest custom student (parameters)")
    max_student_pixels: int = _f(512 * 1024, "largest custom student input (input_height × input_width)")
    max_clip_frames: int = _f(128, "frames in one uploaded clip: twice what an honest device sends at most (r_max × "
                                   "the longest T_update, 1 fps × 60 s, at the defaults)")
    max_clip_scale: float = _f(4.0, "largest uploaded frame, in multiples of the student's input pixels (a clip is "
                                    "refused at its first larger frame)")
    max_message_mb: int = _f(64, "gRPC message size limit")
    max_buffer_frames: int = _f(0, "frames one session's buffer holds at most, the oldest trimmed first (0 = "
                                   "⌈r_max × T_horizon⌉ + 16: what an honest device sends, and a margin)")
    max_upload_fps: float = _f(4.0, "frames per second one device may upload, averaged (token bucket of "
                                    "max_clip_frames): an honest device sends ≤ r_max")
    max_calls_per_device: int = _f(8, "calls of one device in flight at once, update streams included (one more is "
                                      "RESOURCE_EXHAUSTED)")
    max_streams_per_connection: int = _f(64, "HTTP/2 streams one connection may hold open (grpc.max_concurrent_streams)")
    snapshot_interval_s: float = _f(10.0, "a session is sent at most 2 snapshots at once, then one per this many "
                                          "seconds (each is a whole model)")
    redis_threads: int = _f(8, "threads for Redis calls: a pool of their own, so no other work queues in front")
    ingest_threads: int = _f(2, "threads decoding, resizing and buffering uploaded clips")
    encode_threads: int = _f(1, "threads encoding snapshots (once per session and version)")
    torch_threads: int = _f(2, "intra-op threads per training worker")
    train_workers: int = _f(1, "phases of different sessions trained at once (threads); on a CPU box, workers × "
                               "torch_threads = cores (a fleet gets more phases per second from 2 × 1 than 1 × 2)")
    train_graph: bool = _f(True, "train DeepLabV3-MobileNetV2 students through the training graph "
                                 "(ams/models/train_graph.py; 1.26× at 144×256 and 1.30× at 256×512 on one CPU "
                                 "core, make bench-train-step); false = the module's own forward")
    train_precision: str = _f("auto", "the training forward's arithmetic: fp32; bf16 (autocast: matrix products and "
                                      "convolutions in bfloat16; parameters, gradients and Adam's state float32); auto = "
                                      "bf16 through the training graph on a device with native bfloat16 (AVX512-BF16/AMX, "
                                      "CUDA ≥ sm80), else fp32 (1.44× at 144×256, 1.80× at 256×512 on one CPU core, "
                                      "make bench-train-step; the same mIoU, docs/benchmarks.md)")
    batch_sessions: int = _f(1, "due sessions of one student shape trained together in one phase (one forward and "
                                "backward over all their mini-batches, per-session weights and Adam state); 1 = one "
                                "at a time, EDF (on a CPU batching does not pay: 0.5–1.15× per session; for GPUs)")
    seed: int = _f(0, "seed for I_1 and mini-batch sampling")
    updates_kept: int = _f(32, "updates kept per session for catch-up after a reconnect")
    checkpoint_every: int = _f(20, "phases between full checkpoints of model + Adam state in Redis (between them "
                                   "a phase writes only its update; ≤ updates_kept)")
    device: str = _f("auto", "where training runs: auto (CUDA when present), cpu or cuda")
    replica_id: str = _f("", "this replica's name in session leases (default: the host name; in Kubernetes the pod "
                             "name); its process id and a random suffix are added, so a restarted replica never "
                             "reuses its predecessor's leases")
    lease_ttl_s: float = _f(6.0, "seconds a replica owns a session without renewing its lease (renewed every third "
                                  "of it): a crashed replica's sessions move to a survivor after at most this long")
    shutdown_grace_s: float = _f(20.0, "on SIGTERM: NOT_SERVING and no new sessions at once, then this long for calls in "
                                       "flight, then the running phase finishes and sessions are checkpointed (compose's "
                                       "stop_grace_period leaves room for all of it)")

    def validate(self) -> None:
        check_tls(self.insecure, self.tls_ca, self.tls_cert, self.tls_key, "AMS_")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"AMS_GAMMA={self.gamma} must be in (0, 1]")
        if not 0 < self.hint_gamma <= 1:
            raise ConfigError(f"AMS_HINT_GAMMA={self.hint_gamma} must be in (0, 1]")
        if self.max_sessions_per_device < 1 or self.max_opens_per_minute <= 0 or self.max_clip_scale < 1:
            raise ConfigError("need AMS_MAX_SESSIONS_PER_DEVICE ≥ 1, AMS_MAX_OPENS_PER_MINUTE > 0, AMS_MAX_CLIP_SCALE ≥ 1")
        try:
            parse_codecs(self.update_codecs)
        except ValueError as exc:
            raise ConfigError(f"AMS_UPDATE_CODECS={self.update_codecs!r}: {exc}") from exc
        if self.selection not in SELECTIONS:
            raise ConfigError(f"AMS_SELECTION={self.selection!r} must be one of {', '.join(SELECTIONS)}")
        if min(self.k_iters, self.batch_size, self.train_workers, self.selection_block, self.batch_sessions) < 1:
            raise ConfigError("AMS_K_ITERS, AMS_BATCH_SIZE, AMS_TRAIN_WORKERS, AMS_SELECTION_BLOCK and "
                              "AMS_BATCH_SESSIONS must be ≥ 1")
        if not (0 <= self.phase_share <= 1 and 1 <= self.k_min <= self.k_max):
            raise ConfigError("need 0 ≤ AMS_PHASE_SHARE ≤ 1 and 1 ≤ AMS_K_MIN ≤ AMS_K_MAX")
        if not 0 < self.r_min <= self.r_init <= self.r_max:
            raise ConfigError("need 0 < AMS_R_MIN ≤ AMS_R_INIT ≤ AMS_R_MAX")
        resolve_precision(self.train_precision, resolve_device(self.device))
        if not 1 <= self.checkpoint_every <= self.updates_kept:
            raise ConfigError("need 1 ≤ AMS_CHECKPOINT_EVERY ≤ AMS_UPDATES_KEPT (restore replays the kept chain)")
        if self.lease_ttl_s < 1:
            raise ConfigError("AMS_LEASE_TTL_S must be ≥ 1 (renewals every third of it)")
        if min(self.max_calls_per_device, self.max_streams_per_connection, self.redis_threads, self.ingest_threads,
               self.encode_threads) < 1 or self.max_buffer_frames < 0:
            raise ConfigError("the AMS_MAX_CALLS_PER_DEVICE, AMS_MAX_STREAMS_PER_CONNECTION and AMS_*_THREADS limits "
                              "must be ≥ 1, AMS_MAX_BUFFER_FRAMES ≥ 0")
        if self.max_upload_fps <= 0 or self.snapshot_interval_s < 0:
            raise ConfigError("need AMS_MAX_UPLOAD_FPS > 0 and AMS_SNAPSHOT_INTERVAL_S ≥ 0")
        if (self.t_fast_s < 0 or not 0 <= self.recent_share <= 1 or not 0 < self.settle_miou <= 1
                or not 0 <= self.hint_miou <= 1 or self.change_jump <= 0):
            raise ConfigError("need AMS_T_FAST_S ≥ 0, 0 ≤ AMS_RECENT_SHARE ≤ 1, 0 < AMS_SETTLE_MIOU ≤ 1, "
                              "0 ≤ AMS_HINT_MIOU ≤ 1, AMS_CHANGE_JUMP > 0")
        if self.t_update_s <= 0 or self.t_horizon_s < self.t_update_s:
            raise ConfigError("need 0 < AMS_T_UPDATE_S ≤ AMS_T_HORIZON_S")

    @classmethod
    def paper(cls, **overrides) -> TrainerConfig:
        """The paper's settings (PAPER), then `overrides`; everything else at its default."""
        return cls(**{**PAPER, **overrides})

    def env(self, names: list[str] | tuple[str, ...]) -> dict[str, str]:
        """These fields as the AMS_* environment variables the trainer process reads."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        out = {}
        for name in names:
            value = getattr(self, name)
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            out[fields[name].metadata.get("env") or env_name("AMS_", name)] = text
        return out

    def buffer_cap(self) -> int:
        """Frames one session's buffer may hold (AMS_MAX_BUFFER_FRAMES, or what r_max × T_horizon needs)."""
        return self.max_buffer_frames or math.ceil(self.r_max * self.t_horizon_s) + 16

    def codec_preference(self) -> list[int]:
        """AMS_UPDATE_CODECS as wire values, most preferred first."""
        return parse_codecs(self.update_codecs)
