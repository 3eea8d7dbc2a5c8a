"""Quantised changes: the values both sides compute from the wire bytes are bit-identical to the
trainer's, the ANS-coded values round-trip, the error is bounded by half a step, and bad bytes are refused."""
import numpy as np
import pytest

from ams.delta_codec import QuantisedDeltas, applied, quantise
from ams.errors import InvalidArgument


@pytest.mark.parametrize("bits,block", [(8, 64), (8, 1000), (4, 64), (4, 7)])
def test_the_device_computes_the_trainers_exact_values(bits, block):
    rng = np.random.default_rng(bits + block)
    held = rng.normal(0, 0.1, 1001).astype(np.float32)
    delta = (rng.laplace(0, 1e-3, 1001) * (rng.random(1001) < 0.9)).astype(np.float32)
    delta[:block] = 0                                       # an all-zero block
    sent = quantise(delta, bits, block)
    received = QuantisedDeltas.from_bytes(bits, block, delta.size, *sent.to_bytes())
    assert np.array_equal(received.q, sent.q) and np.array_equal(received.scales, sent.scales)
    assert applied(held, received).tobytes() == applied(held, sent).tobytes()
    step = np.repeat(sent.scales.astype(np.float32), block)[:delta.size]
    assert np.all(np.abs(applied(held, sent) - (held + delta)) <= 0.5 * step * 1.01 + 1e-7)
    assert np.array_equal(applied(held, sent)[:block], held[:block])


def test_malformed_deltas_are_refused():
    sent = quantise(np.linspace(-1, 1, 100, dtype=np.float32), 4, 16)
    packed, scales = sent.to_bytes()
    for args in ((4, 16, 101, packed, scales), (4, 16, 100, packed[:-1], scales), (3, 16, 100, packed, scales),
                 (4, 16, 100, packed, b"\x00\x7c" * 7), (8, 16, 100, b"\x80" * 100, scales)):
        with pytest.raises(InvalidArgument):
            QuantisedDeltas.from_bytes(*args)
