"""Tensor/frame serde and the H.264 clip codec."""
import numpy as np
import pytest

from ams.errors import InvalidArgument
from ams.tensors import decode_frame, encode_frame, from_tensor, to_tensor
from ams.v1 import common_pb2
from ams.video import decode_clip, encode_clip


def test_tensor_round_trip_and_bad_sizes():
    a = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    np.testing.assert_array_equal(from_tensor(to_tensor(a)), a)
    msg = to_tensor(a)
    msg.shape[:] = [2, 3, 5]
    with pytest.raises(InvalidArgument, match="needs"):
        from_tensor(msg)
    msg.dtype = "object"
    with pytest.raises(InvalidArgument, match="dtype"):
        from_tensor(msg)


@pytest.mark.parametrize("encoding", [common_pb2.Frame.RAW_RGB8, common_pb2.Frame.PNG])
def test_frame_round_trip(encoding):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_frame(encode_frame(rgb, 1.5, encoding)), rgb)


def test_malformed_frames_are_invalid_arguments():
    with pytest.raises(InvalidArgument):
        decode_frame(common_pb2.Frame(encoding=common_pb2.Frame.PNG, data=b"\x89PNG garbage"))
    with pytest.raises(InvalidArgument):
        decode_frame(common_pb2.Frame(encoding=common_pb2.Frame.RAW_RGB8, data=b"\x00" * 10, width=4, height=4))
    with pytest.raises(InvalidArgument):
        decode_frame(common_pb2.Frame(encoding=common_pb2.Frame.ENCODING_UNSPECIFIED, data=b"x"))


def test_h264_clip_round_trip():
    rng = np.random.default_rng(0)
    frames = [np.clip(rng.normal(120, 30, (72, 128, 3)), 0, 255).astype(np.uint8) for _ in range(5)]
    data = encode_clip(frames, bit_rate=400_000)
    out = decode_clip(data, expected_frames=5)
    assert len(out) == 5 and out[0].shape == (72, 128, 3)
    assert np.abs(out[-1].astype(int) - frames[-1]).mean() < 25   # lossy, but the last frame is there


def test_garbage_and_mismatched_clips_are_invalid_arguments():
    with pytest.raises(InvalidArgument):
        decode_clip(b"")
    with pytest.raises(InvalidArgument):
        decode_clip(np.random.default_rng(0).bytes(4000))
    data = encode_clip([np.zeros((16, 16, 3), dtype=np.uint8)] * 2)
    with pytest.raises(InvalidArgument, match="timestamps"):
        decode_clip(data, expected_frames=3)


def test_a_png_bomb_is_refused_from_its_header():
    """1.2 MB of PNG that would inflate to 20000×20000 RGB (1.2 GB): refused before decoding."""
    import resource
    import struct
    import zlib

    from ams.tensors import decode_frame
    from ams.v1 import common_pb2

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    def png(w: int, h: int) -> bytes:
        z = zlib.compressobj(9)
        idat = b"".join(z.compress(b"\x00" + bytes(w * 3)) for _ in range(h)) + z.flush()
        head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        return head + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InvalidArgument, match="5000x5000 exceeds 16777216 pixels"):    # our limit, from the header
        decode_frame(common_pb2.Frame(encoding=common_pb2.Frame.PNG, data=png(5000, 5000)))
    with pytest.raises(InvalidArgument, match="exceeds"):                            # Pillow's bomb limit
        decode_frame(common_pb2.Frame(encoding=common_pb2.Frame.PNG, data=png(20000, 20000)))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024   # KiB: far below 1.2 GB
