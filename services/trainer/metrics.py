"""Prometheus metrics of the trainer service (no session ids as labels)."""
from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80)

SESSIONS_ACTIVE = Gauge("ams_trainer_sessions_active", "Sessions held in memory")
SESSIONS_OPENED = Counter("ams_trainer_sessions_opened_total", "Sessions opened (new or resumed)")
SESSION_FAILURES = Counter("ams_trainer_session_failures_total", "Training phases that failed")
PHASE_SECONDS = Histogram("ams_trainer_phase_seconds", "Seconds per training phase (K iterations)", buckets=_SECONDS)
TEACHER_SECONDS = Histogram("ams_trainer_teacher_seconds", "Seconds labelling one uploaded clip", buckets=_SECONDS)
UPDATES = Counter("ams_trainer_updates_total", "Sparse model updates produced")
UPDATE_BYTES = Counter("ams_trainer_update_bytes_total", "Downlink bytes of updates and snapshots sent")
UPLOAD_BYTES = Counter("ams_trainer_upload_bytes_total", "Uplink bytes of uploaded clips")
FRAMES_RECEIVED = Counter("ams_trainer_frames_received_total", "Frames received in uploaded clips")
REQUESTS = Counter("ams_trainer_requests_total", "Trainer RPCs by method and status code", ["method", "code"])
