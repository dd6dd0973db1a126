"""Bad input is refused with a clear CodecError / ArtifactError."""

import json

import numpy as np
import pytest

from mmcompress.artifacts import arrays_path
from mmcompress.codecs import load_codec, make_codec
from mmcompress.errors import ArtifactError, CodecError


def test_nan_and_inf_rows_are_named(digits):
    X = digits.copy()
    X[7, 3] = np.nan
    with pytest.raises(CodecError, match="non-finite.*row 7"):
        make_codec("SQ8").fit(X)
    codec = make_codec("SQ8").fit(digits)
    X = digits[:20].copy()
    X[4, 0] = np.inf
    with pytest.raises(CodecError, match="row 4"):
        codec.encode(X)
    with pytest.raises(CodecError, match="queries"):
        codec.search(codec.encode(digits[:20]), X, 3)


def test_wrong_dimensionality(digits):
    codec = make_codec("PQ8x8").fit(digits)
    with pytest.raises(CodecError, match="dimension 32.*d=64"):
        codec.encode(digits[:, :32])
    with pytest.raises(CodecError, match="2-D"):
        codec.encode(digits[0])
    with pytest.raises(CodecError, match=r"codes must be uint8 of shape \(n, 8\)"):
        codec.decode(np.zeros((3, 7), dtype=np.uint8))
    with pytest.raises(CodecError, match="multiple of M"):
        make_codec("PQ7x8").fit(digits)


def test_too_few_training_rows(digits):
    with pytest.raises(CodecError, match="256 centroids.*at least 256.*found 100"):
        make_codec("PQ8x8").fit(digits[:100])
    with pytest.raises(CodecError, match="at least"):
        make_codec("RQ4x8").fit(digits[:200])
    with pytest.raises(CodecError, match="too few|do not fit"):
        make_codec("NUQ60").fit(digits[:40, :32])


def test_unfitted_and_bad_k(digits):
    with pytest.raises(CodecError, match="not fitted"):
        make_codec("SQ8").encode(digits)
    codec = make_codec("SQ8").fit(digits)
    with pytest.raises(CodecError, match="k must be"):
        codec.search(codec.encode(digits[:5]), digits[:2], 0)
    with pytest.raises(CodecError, match="empty"):
        codec.search(codec.encode(digits[:0]), digits[:2], 3)


def test_budget_no_codec_fits(digits):
    with pytest.raises(CodecError, match="no .*fits budget_bytes=100000"):
        make_codec("auto", budget_bytes=100000).fit(digits)
    with pytest.raises(CodecError, match="positive integer"):
        make_codec("auto", budget_bytes=0)


@pytest.fixture
def saved(digits, tmp_path):
    path = tmp_path / "codec.json"
    make_codec("PCA32,PQ8x8").fit(digits).save(path)
    return path


def test_truncated_arrays_are_refused(saved):
    npz = arrays_path(saved, json.loads(saved.read_text()))
    npz.write_bytes(npz.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match="checksum"):
        load_codec(saved)


def test_tampered_arrays_are_refused(saved):
    npz = arrays_path(saved, json.loads(saved.read_text()))
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0x55
    npz.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        load_codec(saved)


def test_tampered_header_is_refused(saved):
    header = json.loads(saved.read_text())
    header["format_version"] = 99
    saved.write_text(json.dumps(header))
    with pytest.raises(ArtifactError, match="format_version"):
        load_codec(saved)
    header["format_version"] = 1
    header["meta"]["codec_kind"] = "nonexistent"
    saved.write_text(json.dumps(header))
    with pytest.raises(ArtifactError, match="unknown codec kind"):
        load_codec(saved)
    saved.write_text("{not json")
    with pytest.raises(ArtifactError, match="JSON"):
        load_codec(saved)


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_codec(tmp_path / "absent.json")
