"""Teacher service configuration (AMS_TEACHER_* environment variables, CLI overrides)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ams.config import ConfigError, check_tls
from ams.revocation import normalize_fingerprint


@dataclass(frozen=True)
class TeacherConfig:
    host: str = field(default="0.0.0.0", metadata={"help": "address to bind"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0 = any free port)"})
    metrics_port: int = field(default=9101, metadata={"help": "Prometheus /metrics port (0 = off)"})
    backend: str = field(default="litert", metadata={"help": "litert (person vs background), parts (background, head, "
                         "torso, arms, legs: the selfie model with BlazePose's landmarks), oracle or onnx"})
    model_path: str = field(default="assets/teacher/selfie_segmentation_landscape.tflite", metadata={"help": "model file"})
    pose_model_path: str = field(default="assets/teacher/pose_landmark_full.tflite",
                                 metadata={"help": "the parts backend's BlazePose landmark model (its person "
                                           "detector and face mesh are read from the same folder)"})
    face_parts: bool = field(default=False, metadata={"help": "the parts backend also labels eyes, brows, nose and "
                             "mouth on faces large enough (9 classes; the face mesh face_landmark.tflite)"})
    scene: str = field(default="", metadata={"help": "the oracle backend's truth: a synthetic scene spec or "
                                                     "labels:PATH (a recorded label track)"})
    classes: str = field(default="", metadata={"help": "the onnx backend's class names, comma-separated (empty: "
                         "class0, class1, ... as many as the model's output channels)"})
    classes_file: str = field(default="", metadata={"help": "the onnx backend's class names from a file, one per line"})
    onnx_mean: str = field(default="none", metadata={"help": "the onnx backend's per-channel mean, on pixels scaled "
                           "to [0, 1] (R,G,B: three numbers), or imagenet, or none (0,0,0)"})
    onnx_std: str = field(default="none", metadata={"help": "the onnx backend's per-channel std (R,G,B), or imagenet, "
                          "or none (1,1,1): the model sees (pixel / 255 - mean) / std"})
    onnx_channels: str = field(default="rgb", metadata={"help": "the onnx model's channel order: rgb or bgr"})
    onnx_layout: str = field(default="nchw", metadata={"help": "the onnx model's layout: nchw or nhwc (TensorFlow's), "
                             "input and output alike"})
    onnx_output: str = field(default="", metadata={"help": "the onnx model's output to read (empty: the first)"})
    onnx_output_kind: str = field(default="logits", metadata={"help": "what that output holds: logits (a softmax "
                                  "is taken) or probabilities"})
    threads: int = field(default=2, metadata={"help": "inference threads"})
    device: str = field(default="auto", metadata={"env": "AMS_DEVICE", "help": "onnx backend: auto (CUDA when "
                        "onnxruntime has it), cpu or cuda; litert and oracle run on the CPU"})
    max_batch: int = field(default=8, metadata={"help": "frames per inference batch"})
    max_wait_ms: float = field(default=10.0, metadata={"help": "longest wait to fill a batch"})
    max_queue: int = field(default=512, metadata={"help": "frames queued before RESOURCE_EXHAUSTED"})
    max_message_mb: int = field(default=64, metadata={"help": "gRPC message size limit"})
    tls_ca: str = field(default="", metadata={"help": "CA certificate: callers' certificates must be signed by it"})
    tls_cert: str = field(default="", metadata={"help": "the teacher's certificate"})
    tls_key: str = field(default="", metadata={"help": "the teacher's private key"})
    trusted_proxy_sha256: str = field(default="", metadata={"help": "SHA-256 fingerprints (comma-separated; ams-admin "
                                      "fingerprint) of the load balancers whose forwarded client certificates the "
                                      "teacher believes; empty: none, an ams-proxy certificate is PERMISSION_DENIED"})
    redis_url: str = field(default="", metadata={"help": "Redis holding certificate revocations (ams-admin revoke), "
                           "checked on every call, UNAVAILABLE while it is down; empty: no revocation check "
                           "(a warning at start)"})
    insecure: bool = field(default=False, metadata={"help": "plain text, any caller: for a local demo only"})
    reflection: bool = field(default=False, metadata={"help": "gRPC server reflection"})
    max_frames_per_request: int = field(default=256, metadata={"help": "frames in one LabelFrames call"})
    shutdown_grace_s: float = field(default=5.0, metadata={"help": "on SIGTERM: NOT_SERVING at once, then this long "
                                                                   "for calls in flight"})

    def validate(self) -> None:
        check_tls(self.insecure, self.tls_ca, self.tls_cert, self.tls_key, "AMS_TEACHER_")
        for fingerprint in (f for f in self.trusted_proxy_sha256.split(",") if f.strip()):
            try:
                normalize_fingerprint(fingerprint)
            except ValueError as exc:
                raise ConfigError(f"AMS_TEACHER_TRUSTED_PROXY_SHA256: {exc}") from exc
        if self.backend not in ("litert", "parts", "oracle", "onnx"):
            raise ConfigError(f"AMS_TEACHER_BACKEND={self.backend!r}: use litert, parts, oracle or onnx")
        if self.backend == "onnx":
            from services.teacher.onnx_backend import OnnxSettings, read_classes
            try:
                OnnxSettings.parse(self.onnx_mean, self.onnx_std, self.onnx_channels, self.onnx_layout, self.onnx_output,
                                   self.onnx_output_kind)
                read_classes(self.classes, self.classes_file)
            except (ValueError, OSError) as exc:
                raise ConfigError(f"the onnx teacher (AMS_TEACHER_ONNX_*, AMS_TEACHER_CLASSES[_FILE]): {exc}") from exc
        if self.backend == "oracle" and not self.scene:
            raise ConfigError("the oracle backend needs AMS_TEACHER_SCENE (a synthetic scene spec or labels:PATH)")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"AMS_DEVICE={self.device!r}: want auto, cpu or cuda")
        if self.max_batch < 1 or self.max_wait_ms < 0:
            raise ConfigError("AMS_TEACHER_MAX_BATCH must be ≥ 1 and AMS_TEACHER_MAX_WAIT_MS ≥ 0")
