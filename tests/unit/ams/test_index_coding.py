"""Entropy-coded coordinate sets: exact round trips, near the information floor on a uniformly random
set, below it on a clustered one, and a clear error (never a crash) on corrupt bytes."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ams.errors import InvalidArgument
from ams.index_coding import decode_indices, encode_indices, floor_bits_per_index

P = 2_110_000


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 5000), st.sets(st.integers(0, 4999), max_size=300))
def test_round_trip_is_exact(num_params, chosen):
    idx = np.array(sorted(i for i in chosen if i < num_params), dtype=np.int64)
    decoded, n = decode_indices(encode_indices(idx, num_params))
    assert n == num_params and decoded.dtype == np.int64 and decoded.tolist() == idx.tolist()


def test_a_uniform_set_costs_within_2_percent_of_the_floor_and_a_clustered_one_less():
    rng = np.random.default_rng(0)
    k = int(0.05 * P)
    uniform = np.sort(rng.choice(P, k, replace=False))
    bits = 8 * len(encode_indices(uniform, P)) / k
    floor = floor_bits_per_index(P, k)
    assert floor == pytest.approx(5.73, abs=0.01) and floor <= bits < 1.02 * floor
    # the same k crowded into a tenth of the parameters (as gradient-guided choices crowd into tensors)
    clustered = np.sort(rng.choice(P // 10, k, replace=False))
    assert 8 * len(encode_indices(clustered, P)) / k < 0.7 * floor


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError):
        encode_indices(np.array([3, 2]), 10)
    with pytest.raises(ValueError):
        encode_indices(np.array([10]), 10)
    good = encode_indices(np.sort(np.random.default_rng(1).choice(P, 5000, replace=False)), P)
    for corrupt in (b"", good[:5], good[:-3], b"\xff" * 64, good[:9] + b"\x00" * 8 + good[17:]):
        with pytest.raises(InvalidArgument):
            decode_indices(corrupt)
