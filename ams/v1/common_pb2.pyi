from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("encoding", "data", "width", "height", "timestamp_s")
    class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ENCODING_UNSPECIFIED: _ClassVar[Frame.Encoding]
        RAW_RGB8: _ClassVar[Frame.Encoding]
        PNG: _ClassVar[Frame.Encoding]
        JPEG: _ClassVar[Frame.Encoding]
    ENCODING_UNSPECIFIED: Frame.Encoding
    RAW_RGB8: Frame.Encoding
    PNG: Frame.Encoding
    JPEG: Frame.Encoding
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_S_FIELD_NUMBER: _ClassVar[int]
    encoding: Frame.Encoding
    data: bytes
    width: int
    height: int
    timestamp_s: float
    def __init__(self, encoding: _Optional[_Union[Frame.Encoding, str]] = ..., data: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., timestamp_s: _Optional[float] = ...) -> None: ...

class EncodedClip(_message.Message):
    __slots__ = ("codec", "data", "timestamps_s", "width", "height")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_S_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    codec: str
    data: bytes
    timestamps_s: _containers.RepeatedScalarFieldContainer[float]
    width: int
    height: int
    def __init__(self, codec: _Optional[str] = ..., data: _Optional[bytes] = ..., timestamps_s: _Optional[_Iterable[float]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...
