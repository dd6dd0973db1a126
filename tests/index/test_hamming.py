"""The popcount kernel and the counting top-s selection, against brute-force definitions."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mmcompress.index.cascade import smallest_per_row
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


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 60), st.integers(1, 70), st.integers(1, 20), st.data())
def test_counting_selection_matches_a_stable_sort(nq, w, s, sentinel, data):
    buf = data.draw(arrays(np.int32, (nq, w), elements=st.integers(0, sentinel)))
    qi, col = smallest_per_row(buf, s, sentinel)
    for i in range(nq):
        valid = np.flatnonzero(buf[i] < sentinel)
        want = valid[np.argsort(buf[i][valid], kind="stable")][:s]
        np.testing.assert_array_equal(col[qi == i], np.sort(want))
    assert np.all(np.diff(qi) >= 0)
