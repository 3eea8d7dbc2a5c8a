"""Prometheus metrics of the trainer service (no session ids as labels)."""
import statistics
from typing import Callable

from prometheus_client import Counter, Gauge, Histogram

from ams.rpc_metrics import RpcMetrics

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)
_LAG_SECONDS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120)

SESSIONS_ACTIVE = Gauge("ams_trainer_sessions_active", "Sessions held in memory")
SESSIONS_OPENED = Counter("ams_trainer_sessions_opened_total", "Sessions opened (new or resumed)")
SESSIONS_BY_CODEC = Counter("ams_trainer_sessions_by_codec_total",
                            "New sessions by the update codec negotiated with the device", ["codec"])
MAX_SESSIONS = Gauge("ams_trainer_max_sessions", "Sessions this trainer serves at most (AMS_MAX_SESSIONS)")
UPDATE_INTERVAL = Gauge("ams_trainer_update_interval_seconds", "T_update this trainer is configured with (τ_min of ATR)")
DEPENDENCY_UP = Gauge("ams_trainer_dependency_up", "1 while a dependency answers (redis; the teacher's health: SERVING)",
                      ["dependency"])
PHASES_RUNNING = Gauge("ams_trainer_phases_running", "Sessions whose training phase runs now (≤ AMS_TRAIN_WORKERS × "
                       "AMS_BATCH_SESSIONS)")
GROUPED_PHASES = Counter("ams_trainer_batched_phases_total", "Session phases trained in one batch with other sessions' "
                         "(AMS_BATCH_SESSIONS > 1)")
SESSIONS_WAITING = Gauge("ams_trainer_sessions_waiting", "Sessions with uploaded frames waiting for a training phase")
PHASE_FAILURES = Counter("ams_trainer_phase_failures_total", "Training phases that failed (rolled back, nothing sent)")
PHASE_SECONDS = Histogram("ams_trainer_phase_seconds", "Seconds per training phase (K iterations)", buckets=_SECONDS)
PHASE_ITERATIONS = Histogram("ams_trainer_phase_iterations", "Adam iterations K per committed phase (k_iters, or "
                             "sized from the measured phase cost with AMS_PHASE_SHARE)",
                             buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500))
UPDATE_LAG = Histogram("ams_trainer_update_lag_seconds",
                       "Wall seconds from a clip's upload to the publication of the update trained on it",
                       buckets=_LAG_SECONDS)
TEACHER_SECONDS = Histogram("ams_trainer_teacher_seconds", "Seconds labelling one uploaded clip", buckets=_SECONDS)
PACE_EVENTS = Counter("ams_trainer_pace_events_total", "Pace changes of sessions (AMS_T_FAST_S > 0): settled (the "
                      "held model reached AMS_SETTLE_MIOU on new frames: the paper's T_update from now), scene_change "
                      "(its mIoU on new frames dropped: short intervals again)", ["event"])
# Are devices getting better? (no session or device ids as labels: ams-admin sessions gives the detail)
NEWEST_MIOU = Histogram("ams_trainer_newest_frames_miou", "Live mIoU: the model a device holds, scored against the "
                        "teacher on the frames new to a phase before training on them (the paper's accuracy measure)",
                        buckets=(0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0))
PHASE_LOSS = Histogram("ams_trainer_phase_loss", "Training loss (cross-entropy vs the teacher) of a committed phase's "
                       "last iteration", buckets=(0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2))
PHI = Histogram("ams_trainer_phi", "Mean φ per sampling-rate decision (ASR: how fast a device's scene changes)",
                buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5))
SESSION_RATES = Gauge("ams_trainer_session_sampling_rate_fps", "Sampling rate (ASR) over the sessions held: "
                      "min, median, max", ["stat"])
SESSION_INTERVALS = Gauge("ams_trainer_session_update_interval_seconds", "T_update (ATR) over the sessions held: "
                          "min, median, max", ["stat"])

UPDATES = Counter("ams_trainer_updates_total", "Sparse model updates produced")
UPDATES_REFUSED = Counter("ams_trainer_updates_refused_total",
                          "Updates devices reported refusing (a resync asked for a snapshot)")
STATE_BYTES = Counter("ams_trainer_state_bytes_total", "Bytes of session state written to Redis (updates, checkpoints)")
UPDATE_BYTES = Counter("ams_trainer_update_bytes_total", "Downlink bytes sent to devices, by kind: update, snapshot, "
                       "control, hint (OpenSession replies count as snapshot)", ["kind"])
UPLOAD_BYTES = Counter("ams_trainer_upload_bytes_total", "Uplink bytes of uploaded clips")
FRAMES_RECEIVED = Counter("ams_trainer_frames_received_total", "Frames received in uploaded clips")
HANDOFFS = Counter("ams_trainer_session_handoffs_total", "Session ownership among replicas: asked (another replica "
                   "holds a session whose calls came here), released (handed over on request), lost (taken over "
                   "after this replica's lease expired)", ["event"])
QUOTA_REFUSALS = Counter("ams_trainer_quota_refusals_total", "Calls refused by a per-device or per-session limit, by "
                         "quota: calls (in flight per device), upload_rate, upload_in_flight, timestamps (not after "
                         "the session's last frame), snapshots (per session), store_full (Redis at maxmemory)", ["quota"])
BUFFERED_FRAMES = Histogram("ams_trainer_buffered_frames", "Frames in a session's buffer after an upload (≤ its cap)",
                            buckets=(8, 16, 32, 64, 128, 192, 256, 320, 512, 1024))
RPC = RpcMetrics("ams_trainer", "Trainer")   # requests, latency and streams of every method (server interceptor)


def track_sessions(values: Callable[[], list[tuple[float, float]]]) -> None:
    """Set the rate and interval gauges to be read at scrape time from `values()`: (rate, T_update) per session."""
    def reader(index: int, pick: Callable[[list[float]], float]) -> Callable[[], float]:
        return lambda: float(pick([v[index] for v in values()] or [0.0]))
    for index, gauge in ((0, SESSION_RATES), (1, SESSION_INTERVALS)):
        for stat, pick in (("min", min), ("median", statistics.median), ("max", max)):
            gauge.labels(stat).set_function(reader(index, pick))
