"""Prometheus metrics of an edge device (`ams-edge --metrics-port`); no session or device ids as labels
(one edge process is one device: Prometheus's `instance` label tells them apart)."""
from prometheus_client import Counter, Gauge, Histogram

FRAMES = Counter("ams_edge_frames_total", "Frames segmented")
FRAMES_DROPPED = Counter("ams_edge_frames_dropped_total", "Frames dropped in live mode (behind capture: a newer one was there)")
FRAME_SECONDS = Histogram("ams_edge_frame_seconds", "Seconds to segment one frame",
                          buckets=(0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1))
FPS = Gauge("ams_edge_fps", "Frames per second the segmenter sustains (over the last 50 frames)")
MODEL_VERSION = Gauge("ams_edge_model_version", "Version of the model the device runs")
UPDATES_APPLIED = Counter("ams_edge_updates_applied_total", "Sparse updates applied (hot-swapped)")
UPDATES_REFUSED = Counter("ams_edge_updates_refused_total",
                          "Updates refused (wrong base, corrupt, checksum mismatch, unknown codec)")
RESYNCS = Counter("ams_edge_resyncs_total", "Resyncs by snapshot after a refused update")
UPLINK_BYTES = Counter("ams_edge_uplink_bytes_total", "Bytes of uploaded clips")
DOWNLINK_BYTES = Counter("ams_edge_downlink_bytes_total", "Bytes received from the trainer, by kind", ["kind"])
UPLOAD_FAILURES = Counter("ams_edge_upload_failures_total", "Clip uploads that failed (after gRPC's retries)")
HINTS_REFUSED = Counter("ams_edge_hints_refused_total", "Label hints refused (not a grey PNG of the student's size)")
FRAMES_SHOWN_HINT = Counter("ams_edge_frames_shown_hint_total",
                            "Frames whose output was the trainer's carried label hint instead of the student's")
CLIPS_DROPPED = Counter("ams_edge_clips_dropped_total",
                        "Clips never uploaded: the trainer was away longer than the uplink's queue or retries last")
SOURCE_RECONNECTS = Counter("ams_edge_source_reconnects_total", "Live source reconnects after the stream dropped")
