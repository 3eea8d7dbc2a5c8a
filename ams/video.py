"""H.264 clip encode/decode with PyAV (libx264), for the uplink of sampled frames."""
from __future__ import annotations

from fractions import Fraction
from typing import Callable

import av
import numpy as np

from ams.errors import InvalidArgument


CLIP_CRF = 23   # the uplink's constant quality (x264's CRF): 5.5 KB for a 144×256 frame of the long scene


def encode_clip(frames: list[np.ndarray], bit_rate: int = 0, preset: str = "medium", fps: int = 1,
                crf: int = CLIP_CRF) -> bytes:
    """Encode (H, W, 3) uint8 RGB frames of one size as a raw Annex-B H.264 stream, at constant
    quality `crf`, or at an average `bit_rate` (bit/s of the nominal `fps`) when it is > 0.

    The clip's own frame rate is nominal: capture timestamps travel beside it, so a bit rate spreads
    over frames sampled seconds apart (a 1-frame clip at 200 kbit/s took 14.7 KB, 2.6× its size at
    CRF 23). Sizes must be even (yuv420p); odd sizes are cropped by one pixel.
    """
    if not frames:
        raise ValueError("no frames to encode")
    h, w = frames[0].shape[:2]
    h, w = h - h % 2, w - w % 2
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = w, h, "yuv420p"
    codec.time_base = Fraction(1, fps)
    codec.framerate = Fraction(fps, 1)
    codec.options = {"preset": preset, "tune": "stillimage" if len(frames) < 3 else "film"}
    if bit_rate > 0:
        codec.bit_rate = bit_rate
    else:
        codec.options = {**codec.options, "crf": str(crf)}
    out = bytearray()
    for i, rgb in enumerate(frames):
        if rgb.shape[:2] != frames[0].shape[:2]:
            raise ValueError("all frames of a clip must have the same size")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h, :w]), format="rgb24")
        frame.pts = i
        for packet in codec.encode(frame):
            out += bytes(packet)
    for packet in codec.encode(None):
        out += bytes(packet)
    return bytes(out)


def decode_clip(data: bytes, expected_frames: int | None = None, max_pixels: int = 4096 * 4096,
                transform: Callable[[np.ndarray], np.ndarray] | None = None) -> list[np.ndarray]:
    """Decode a raw H.264 stream to RGB frames, each passed through `transform` as soon as it is
    decoded (so only transformed frames are held). Raises InvalidArgument if the stream is not valid
    H.264, at the first frame larger than `max_pixels`, or as soon as it holds more frames than
    `expected_frames` (a tiny stream of many large frames is never decoded whole)."""
    if not data:
        raise InvalidArgument("empty clip")
    codec = av.CodecContext.create("h264", "r")
    frames: list[np.ndarray] = []
    try:
        packets = codec.parse(data) + codec.parse(None)  # the final parse(None) flushes the last frame
        for packet in packets + [None]:
            for frame in codec.decode(packet):
                if frame.width * frame.height > max_pixels:
                    raise InvalidArgument(f"clip frame {frame.width}x{frame.height} exceeds {max_pixels} pixels")
                if expected_frames is not None and len(frames) >= expected_frames:
                    raise InvalidArgument(f"clip has more frames than its {expected_frames} timestamps")
                rgb = frame.to_ndarray(format="rgb24")
                frames.append(transform(rgb) if transform else rgb)
    except av.FFmpegError as exc:
        raise InvalidArgument(f"clip is not a decodable H.264 stream: {exc}") from exc
    if not frames:
        raise InvalidArgument("clip decoded to no frames (not H.264?)")
    if expected_frames is not None and len(frames) != expected_frames:
        raise InvalidArgument(f"clip has {len(frames)} frames but {expected_frames} timestamps")
    return frames
