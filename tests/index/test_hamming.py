"""The popcount kernel: faiss and numpy paths agree with a bit-by-bit count."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmcompress.index.hamming import hamming_distances, popcount_rows


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 5), st.integers(1, 7), st.data())
def test_hamming_matches_bitwise_definition(nbytes, na, nb, data):
    a = data.draw(arrays(np.uint8, (na, nbytes)))
    b = data.draw(arrays(np.uint8, (nb, nbytes)))
    expected = np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(axis=2)
    np.testing.assert_array_equal(hamming_distances(a, b), expected)
    np.testing.assert_array_equal(hamming_distances(a, b, use_faiss=False), expected)
    np.testing.assert_array_equal(popcount_rows(a), np.unpackbits(a, axis=1).sum(axis=1))
