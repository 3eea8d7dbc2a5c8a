"""numpy <-> ams.v1.Tensor and ams.v1.Frame conversion (the serde of the wire)."""
from __future__ import annotations

from typing import Any, cast

import io

import cv2
from PIL import Image
import numpy as np

from ams.errors import InvalidArgument
from ams.v1 import common_pb2

# ImageNet's per-channel mean and std on RGB in [0, 1]: the students normalise with them inside, and an
# operator's ONNX teacher trained on ImageNet is told them (AMS_TEACHER_ONNX_MEAN=imagenet)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ALLOWED_DTYPES = {"float32", "float16", "uint8", "int64", "int32", "float64", "bool"}


def to_tensor(array: np.ndarray) -> common_pb2.Tensor:
    """Encode an array as raw little-endian bytes + dtype + shape."""
    array = np.asarray(array, order="C")  # keeps 0-d arrays 0-d (ascontiguousarray would not)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    return common_pb2.Tensor(dtype=dtype.name, shape=list(array.shape), data=array.astype(dtype, copy=False).tobytes())


def from_tensor(msg: common_pb2.Tensor) -> np.ndarray:
    """Decode a Tensor; raise InvalidArgument when dtype, shape and byte count disagree."""
    if msg.dtype not in _ALLOWED_DTYPES:
        raise InvalidArgument(f"unsupported tensor dtype {msg.dtype!r}")
    dtype = np.dtype(msg.dtype).newbyteorder("<")
    shape = tuple(int(s) for s in msg.shape)
    if any(s < 0 for s in shape):
        raise InvalidArgument(f"negative dimension in tensor shape {shape}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if expected != len(msg.data):
        raise InvalidArgument(f"tensor of shape {shape} and dtype {msg.dtype} needs {expected} bytes, got {len(msg.data)}")
    return np.frombuffer(msg.data, dtype=dtype).reshape(shape)


def encode_frame(rgb: np.ndarray, timestamp_s: float, encoding: int = common_pb2.Frame.PNG) -> common_pb2.Frame:
    """Encode an (H, W, 3) uint8 RGB frame."""
    h, w = rgb.shape[:2]
    if encoding == common_pb2.Frame.RAW_RGB8:
        data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    else:
        ext = ".png" if encoding == common_pb2.Frame.PNG else ".jpg"
        ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise InvalidArgument("could not encode frame")
        data = buf.tobytes()
    return common_pb2.Frame(encoding=cast(Any, encoding), data=data, width=w, height=h, timestamp_s=timestamp_s)


def _header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG/JPEG header, read by Pillow without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Image.DecompressionBombError as exc:
        raise InvalidArgument(f"frame header exceeds Pillow's pixel limit ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - UnidentifiedImageError, truncated headers, ...
        raise InvalidArgument(f"frame bytes are not a PNG/JPEG image ({type(exc).__name__})") from exc


def decode_frame(msg: common_pb2.Frame, max_pixels: int = 4096 * 4096) -> np.ndarray:
    """Decode a Frame to (H, W, 3) uint8 RGB; raise InvalidArgument on anything malformed."""
    if msg.encoding == common_pb2.Frame.RAW_RGB8:
        if msg.width <= 0 or msg.height <= 0 or msg.width * msg.height > max_pixels:
            raise InvalidArgument(f"bad raw frame size {msg.width}x{msg.height}")
        if len(msg.data) != msg.width * msg.height * 3:
            raise InvalidArgument(f"raw frame {msg.width}x{msg.height} needs {msg.width * msg.height * 3} bytes, "
                                  f"got {len(msg.data)}")
        return np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.width, 3)
    if msg.encoding in (common_pb2.Frame.PNG, common_pb2.Frame.JPEG):
        w, h = _header_size(msg.data)
        if w * h > max_pixels:   # checked from the header: a small PNG of 20000² is never inflated
            raise InvalidArgument(f"frame {w}x{h} exceeds {max_pixels} pixels")
        try:
            bgr = cv2.imdecode(np.frombuffer(msg.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        except cv2.error:
            bgr = None
        if bgr is None:
            raise InvalidArgument(f"frame bytes are not a decodable PNG/JPEG image of at most {max_pixels} pixels")
        if bgr.shape[0] * bgr.shape[1] > max_pixels:
            raise InvalidArgument(f"frame {bgr.shape[1]}x{bgr.shape[0]} exceeds {max_pixels} pixels")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    raise InvalidArgument(f"unsupported frame encoding {msg.encoding}")
