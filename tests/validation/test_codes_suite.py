"""The codes suites on real codec output (product quantizer codes of the digits data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.datasets import load_digits

from mmcompress.drift.statistics import unpack_fields
from validation import ValidationError, raise_for_failure, validate_codes


@pytest.fixture(scope="module")
def pq_codes():
    from mmcompress.codecs import make_codec
    from mmcompress.evaluation.metrics import reconstruction_mse

    X = load_digits().data.astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    codec = make_codec("PQ8x6", metric="ip").fit(X)
    codes = codec.encode(X)
    return codes, reconstruction_mse(X, codec.decode(codes)), codec.field_bits


def test_real_codes_pass(pq_codes, tmp_path):
    codes, mse, field_bits = pq_codes
    assert field_bits == [6] * 8 and codes.shape[1] == 6
    result = validate_codes(codes, entropy_floor=2.0, mse=mse, mse_max=2 * mse, index_bytes=codes.nbytes,
                            index_bytes_max=codes.nbytes + 1, field_bits=field_bits, out_dir=tmp_path)
    assert result.success, result.summary
    entropy = result.statistics["entropy_bits"]
    assert len(entropy) == 8 and 4.0 < min(entropy) and max(entropy) <= 6.0
    # read byte-wise, packed 6-bit fields look like 8-bit values: the range check catches it
    bytewise = validate_codes(codes, entropy_floor=2.0, max_code=63, data_docs=False)
    assert not bytewise.success and "code value out of range" in bytewise.summary
    saved = json.loads(result.results_path.read_text())
    assert saved["success"] is True and set(saved["results"]) == {"codes", "code_usage", "code_summary"}
    assert result.docs_path.exists()


def test_collapsed_codebook_fails_the_entropy_check(pq_codes):
    codes = pq_codes[0].copy()           # read byte-wise here
    codes[:, 3] = 7
    codes[:, 5] = np.where(np.arange(len(codes)) % 100 == 0, 1, 2)
    result = validate_codes(codes, entropy_floor=2.0, data_docs=False)
    assert not result.success
    (failure,) = result.failures
    assert failure.column == "entropy_bits" and failure.unexpected_count == 2
    assert "c3 (entropy 0.000 bits)" in result.summary and "c5 (entropy" in result.summary
    assert "collapsed codebook" in result.summary
    with pytest.raises(ValidationError, match="entropy_bits"):
        raise_for_failure(result)


def test_value_range_error_and_size_bounds(pq_codes):
    codes, mse, field_bits = pq_codes
    ids = np.arange(1000, 1000 + len(codes))
    # one byte per 6-bit sub-quantizer index: values above 63 cannot come from the codebooks
    wide = unpack_fields(codes, field_bits).astype(np.uint8)
    wide[[4, 9], 2] = 200
    result = validate_codes(wide, entropy_floor=2.0, max_code=63, item_ids=ids, mse=mse, mse_max=mse / 2,
                            index_bytes=10**6, index_bytes_max=10**5, data_docs=False)
    assert not result.success
    cols = {f.column: f for f in result.failures}
    assert cols["c2"].unexpected_count == 2 and cols["c2"].example_ids == [1004, 1009]
    assert "reconstruction error above its bound" in result.summary
    assert "index size above its bound" in result.summary
    missing = validate_codes(codes, entropy_floor=2.0, mse_max=1.0, data_docs=False)
    with pytest.raises(ValueError, match="field_bits"):
        validate_codes(codes, entropy_floor=2.0, field_bits=[8, 8])
    assert not missing.success and "reconstruction MSE is reported" in missing.summary
