from ams.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LabelFramesRequest(_message.Message):
    __slots__ = ("frames", "want_probabilities")
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    WANT_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[_common_pb2.Frame]
    want_probabilities: bool
    def __init__(self, frames: _Optional[_Iterable[_Union[_common_pb2.Frame, _Mapping]]] = ..., want_probabilities: _Optional[bool] = ...) -> None: ...

class FrameLabel(_message.Message):
    __slots__ = ("class_map", "probabilities", "error")
    CLASS_MAP_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    class_map: _common_pb2.Tensor
    probabilities: _common_pb2.Tensor
    error: str
    def __init__(self, class_map: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., probabilities: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class LabelFramesResponse(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[FrameLabel]
    def __init__(self, labels: _Optional[_Iterable[_Union[FrameLabel, _Mapping]]] = ...) -> None: ...

class DescribeTeacherRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeTeacherResponse(_message.Message):
    __slots__ = ("backend", "classes", "input_height", "input_width")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    backend: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    input_height: int
    input_width: int
    def __init__(self, backend: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ...) -> None: ...
