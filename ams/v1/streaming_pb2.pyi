from ams.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdateCodec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_CODEC_UNSPECIFIED: _ClassVar[UpdateCodec]
    UPDATE_CODEC_FLOAT16: _ClassVar[UpdateCodec]
    UPDATE_CODEC_INT8_DELTA: _ClassVar[UpdateCodec]
    UPDATE_CODEC_INT4_DELTA: _ClassVar[UpdateCodec]
UPDATE_CODEC_UNSPECIFIED: UpdateCodec
UPDATE_CODEC_FLOAT16: UpdateCodec
UPDATE_CODEC_INT8_DELTA: UpdateCodec
UPDATE_CODEC_INT4_DELTA: UpdateCodec

class StudentSpec(_message.Message):
    __slots__ = ("architecture", "config_json", "checkpoint")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    config_json: str
    checkpoint: str
    def __init__(self, architecture: _Optional[str] = ..., config_json: _Optional[str] = ..., checkpoint: _Optional[str] = ...) -> None: ...

class ModelSnapshot(_message.Message):
    __slots__ = ("session_id", "version", "student", "names", "tensors", "params_sha256")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    NAMES_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SHA256_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    version: int
    student: StudentSpec
    names: _containers.RepeatedScalarFieldContainer[str]
    tensors: _containers.RepeatedCompositeFieldContainer[_common_pb2.Tensor]
    params_sha256: bytes
    def __init__(self, session_id: _Optional[str] = ..., version: _Optional[int] = ..., student: _Optional[_Union[StudentSpec, _Mapping]] = ..., names: _Optional[_Iterable[str]] = ..., tensors: _Optional[_Iterable[_Union[_common_pb2.Tensor, _Mapping]]] = ..., params_sha256: _Optional[bytes] = ...) -> None: ...

class QuantisedDelta(_message.Message):
    __slots__ = ("bits", "block", "scales_f16", "q_ans")
    BITS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    SCALES_F16_FIELD_NUMBER: _ClassVar[int]
    Q_ANS_FIELD_NUMBER: _ClassVar[int]
    bits: int
    block: int
    scales_f16: bytes
    q_ans: bytes
    def __init__(self, bits: _Optional[int] = ..., block: _Optional[int] = ..., scales_f16: _Optional[bytes] = ..., q_ans: _Optional[bytes] = ...) -> None: ...

class ModelUpdate(_message.Message):
    __slots__ = ("session_id", "base_version", "new_version", "num_params", "index_mask_gz", "values_f16", "params_sha256", "phase", "video_time_s", "codec", "index_ans", "delta")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMS_FIELD_NUMBER: _ClassVar[int]
    INDEX_MASK_GZ_FIELD_NUMBER: _ClassVar[int]
    VALUES_F16_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SHA256_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    VIDEO_TIME_S_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    INDEX_ANS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    base_version: int
    new_version: int
    num_params: int
    index_mask_gz: bytes
    values_f16: bytes
    params_sha256: bytes
    phase: int
    video_time_s: float
    codec: UpdateCodec
    index_ans: bytes
    delta: QuantisedDelta
    def __init__(self, session_id: _Optional[str] = ..., base_version: _Optional[int] = ..., new_version: _Optional[int] = ..., num_params: _Optional[int] = ..., index_mask_gz: _Optional[bytes] = ..., values_f16: _Optional[bytes] = ..., params_sha256: _Optional[bytes] = ..., phase: _Optional[int] = ..., video_time_s: _Optional[float] = ..., codec: _Optional[_Union[UpdateCodec, str]] = ..., index_ans: _Optional[bytes] = ..., delta: _Optional[_Union[QuantisedDelta, _Mapping]] = ...) -> None: ...

class LabelHint(_message.Message):
    __slots__ = ("clip_seq", "capture_time_s", "label_png")
    CLIP_SEQ_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_S_FIELD_NUMBER: _ClassVar[int]
    LABEL_PNG_FIELD_NUMBER: _ClassVar[int]
    clip_seq: int
    capture_time_s: float
    label_png: bytes
    def __init__(self, clip_seq: _Optional[int] = ..., capture_time_s: _Optional[float] = ..., label_png: _Optional[bytes] = ...) -> None: ...

class Control(_message.Message):
    __slots__ = ("sampling_rate_fps", "update_interval_s")
    SAMPLING_RATE_FPS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    sampling_rate_fps: float
    update_interval_s: float
    def __init__(self, sampling_rate_fps: _Optional[float] = ..., update_interval_s: _Optional[float] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("update", "snapshot", "control", "hint", "processed_clip_seq")
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    PROCESSED_CLIP_SEQ_FIELD_NUMBER: _ClassVar[int]
    update: ModelUpdate
    snapshot: ModelSnapshot
    control: Control
    hint: LabelHint
    processed_clip_seq: int
    def __init__(self, update: _Optional[_Union[ModelUpdate, _Mapping]] = ..., snapshot: _Optional[_Union[ModelSnapshot, _Mapping]] = ..., control: _Optional[_Union[Control, _Mapping]] = ..., hint: _Optional[_Union[LabelHint, _Mapping]] = ..., processed_clip_seq: _Optional[int] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("student", "resume_session_id", "held_version", "update_codecs", "label_hints")
    STUDENT_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HELD_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_CODECS_FIELD_NUMBER: _ClassVar[int]
    LABEL_HINTS_FIELD_NUMBER: _ClassVar[int]
    student: StudentSpec
    resume_session_id: str
    held_version: int
    update_codecs: _containers.RepeatedScalarFieldContainer[UpdateCodec]
    label_hints: bool
    def __init__(self, student: _Optional[_Union[StudentSpec, _Mapping]] = ..., resume_session_id: _Optional[str] = ..., held_version: _Optional[int] = ..., update_codecs: _Optional[_Iterable[_Union[UpdateCodec, str]]] = ..., label_hints: _Optional[bool] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session_id", "snapshot", "control", "resumed", "update_codec")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    UPDATE_CODEC_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    snapshot: ModelSnapshot
    control: Control
    resumed: bool
    update_codec: UpdateCodec
    def __init__(self, session_id: _Optional[str] = ..., snapshot: _Optional[_Union[ModelSnapshot, _Mapping]] = ..., control: _Optional[_Union[Control, _Mapping]] = ..., resumed: _Optional[bool] = ..., update_codec: _Optional[_Union[UpdateCodec, str]] = ...) -> None: ...

class UploadClipRequest(_message.Message):
    __slots__ = ("session_id", "clip_seq", "clip")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIP_SEQ_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    clip_seq: int
    clip: _common_pb2.EncodedClip
    def __init__(self, session_id: _Optional[str] = ..., clip_seq: _Optional[int] = ..., clip: _Optional[_Union[_common_pb2.EncodedClip, _Mapping]] = ...) -> None: ...

class UploadClipResponse(_message.Message):
    __slots__ = ("frames_accepted", "frames_buffered")
    FRAMES_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_BUFFERED_FIELD_NUMBER: _ClassVar[int]
    frames_accepted: int
    frames_buffered: int
    def __init__(self, frames_accepted: _Optional[int] = ..., frames_buffered: _Optional[int] = ...) -> None: ...

class StreamUpdatesRequest(_message.Message):
    __slots__ = ("session_id", "held_version", "refused_version")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    HELD_VERSION_FIELD_NUMBER: _ClassVar[int]
    REFUSED_VERSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    held_version: int
    refused_version: int
    def __init__(self, session_id: _Optional[str] = ..., held_version: _Optional[int] = ..., refused_version: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
