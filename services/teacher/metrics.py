"""Prometheus metrics of the teacher service."""
from prometheus_client import Counter, Gauge, Histogram

from ams.cert_expiry import CERT_EXPIRY  # noqa: F401 - registers ams_tls_certificate_expiry_timestamp_seconds (shared)
from ams.rpc_metrics import RpcMetrics

FRAMES = Counter("ams_teacher_frames_total", "Frames labelled by the teacher")
RPC = RpcMetrics("ams_teacher", "Teacher")   # requests, latency and streams of every method (server interceptor)
BATCH_SIZE = Histogram("ams_teacher_batch_size", "Frames per inference batch", buckets=(1, 2, 4, 8, 16, 32, 64))
INFERENCE_SECONDS = Histogram("ams_teacher_inference_seconds", "Seconds per inference batch",
                              buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
READY = Gauge("ams_teacher_ready", "1 once the teacher model is loaded")
