"""Packed item ids: round trip, width chosen by the id span."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcompress.index.cascade import PackedIds


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=50, unique=True))
def test_round_trip_any_ids(ids):
    ids = np.array(ids, dtype=np.int64)
    packed = PackedIds.pack(ids)
    np.testing.assert_array_equal(np.asarray(packed), ids)
    rows = np.arange(len(ids))[::-1]
    np.testing.assert_array_equal(packed[rows], ids[rows])
    span = int(ids.max()) - int(ids.min())
    assert packed.width == max(1, -(-span.bit_length() // 8)) and packed.nbytes == packed.width * len(ids)


def test_movielens_sized_ids_take_three_bytes():
    ids = np.array([1, 193609, 5000])  # the MovieLens movieId range
    assert PackedIds.pack(ids).width == 3
