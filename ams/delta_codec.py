"""Quantised changes of a sparse update's chosen coordinates (the int8 / int4 update codecs).

Instead of each chosen coordinate's new value in float16, send its change d = w_new − w_held,
quantised per block of `block` consecutive chosen coordinates: scale = max|d| / qmax in float16,
q = round(d / scale) in [−qmax, qmax] (int8: qmax 127; int4: qmax 7). Both sides then hold exactly
w_held + float32(q) · float32(scale), computed in float32 element by element (numpy's float32
multiply and add are exactly rounded, so the bits agree on every machine): the trainer adopts those
values as its own, the quantisation error stays in the weights both sides hold and the next phase's
gradients see it, and the update's SHA-256 check keeps working. The q values are ANS-coded
(`constriction`) with a categorical model fit to the update, whose counts travel in front.

Measured (`make bench-codec`, out/bench/codec.json) on AMS runs at the paper's settings: int8 with
blocks of 256 and int4 with blocks of 64; README's codec section has the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np

from ams.errors import InvalidArgument
from ams.index_coding import categorical

QMAX = {8: 127, 4: 7}
MAX_BLOCK = 1 << 16


@dataclass(frozen=True)
class QuantisedDeltas:
    bits: int                 # 8 or 4
    block: int                # chosen coordinates per scale
    scales: np.ndarray        # (ceil(k / block),) float16
    q: np.ndarray             # (k,) int8 in [−qmax, qmax]

    def to_bytes(self) -> tuple[bytes, bytes]:
        """(ANS-coded q, float16 scales): q's symbol counts (2·qmax + 1, uint32) head the ANS words."""
        qmax = QMAX[self.bits]
        symbols = self.q.astype(np.int32) + qmax
        counts = np.bincount(symbols, minlength=2 * qmax + 1).astype(np.int64)
        coder = constriction.stream.stack.AnsCoder()
        if np.count_nonzero(counts) > 1:
            coder.encode_reverse(symbols, categorical(counts))
        body = coder.get_compressed().astype("<u4").tobytes()
        return counts.astype("<u4").tobytes() + body, self.scales.astype("<f2").tobytes()

    @classmethod
    def from_bytes(cls, bits: int, block: int, k: int, coded: bytes, scales: bytes) -> "QuantisedDeltas":
        """Inverse of `to_bytes` for k chosen coordinates; InvalidArgument when malformed."""
        if bits not in QMAX or not 1 <= block <= MAX_BLOCK:
            raise InvalidArgument(f"unsupported delta quantisation: {bits} bits, block {block}")
        qmax = QMAX[bits]
        head = 4 * (2 * qmax + 1)
        if len(scales) != 2 * -(-k // block) or len(coded) < head or (len(coded) - head) % 4:
            raise InvalidArgument("quantised deltas do not match the index count")
        s = np.frombuffer(scales, "<f2").astype(np.float16)
        if not np.all(np.isfinite(s)):
            raise InvalidArgument("a delta scale is not finite")
        counts = np.frombuffer(coded, "<u4", 2 * qmax + 1).astype(np.int64)
        if counts.sum() != k:
            raise InvalidArgument("quantised deltas do not match the index count")
        if np.count_nonzero(counts) > 1:
            words = np.frombuffer(coded, "<u4", offset=head).astype(np.uint32)
            try:
                symbols = np.asarray(constriction.stream.stack.AnsCoder(words).decode(categorical(counts), k), np.int64)
            except (ValueError, RuntimeError, OverflowError) as exc:
                raise InvalidArgument(f"corrupt quantised deltas: {exc}") from exc
        else:
            symbols = np.full(k, int(np.argmax(counts)), np.int64)
        return cls(bits, block, s, (symbols - qmax).astype(np.int8))


def quantise(delta: np.ndarray, bits: int, block: int) -> QuantisedDeltas:
    """float32 changes (k,) -> per-block scaled integers."""
    if not np.all(np.isfinite(delta)):
        raise ValueError("a change to quantise is not finite")
    qmax = QMAX[bits]
    k = delta.size
    blocks = -(-k // block)
    padded = np.zeros(blocks * block, np.float32)
    padded[:k] = np.abs(delta)
    scales = (padded.reshape(blocks, block).max(1) / qmax).astype(np.float16)
    scales[scales == 0] = np.float16(1.0)     # an all-zero block: any scale gives q = 0
    per = np.repeat(scales.astype(np.float32), block)[:k]
    q = np.clip(np.rint(delta / per), -qmax, qmax).astype(np.int8)
    return QuantisedDeltas(bits, block, scales, q)


def applied(held: np.ndarray, deltas: QuantisedDeltas) -> np.ndarray:
    """The new float32 values of the chosen coordinates: held + q · scale, in float32."""
    per = np.repeat(deltas.scales.astype(np.float32), deltas.block)[:deltas.q.size]
    return (held.astype(np.float32) + deltas.q.astype(np.float32) * per).astype(np.float32)
