"""The auto codec: candidate search under an exact byte budget, report, persistence."""

import numpy as np
import pytest

from mmcompress.codecs import auto_candidates, load_codec, make_codec
from mmcompress.codecs.auto import _family_rank
from mmcompress.errors import CodecError

CANDIDATES = ["PQ8x8", "PCA,NUQ8", "PCA16,SQ4", "PCA8,SQ8", "PQ16x4"]


@pytest.fixture(scope="module")
def auto(digits):
    return make_codec("auto", budget_bytes=8, metric="ip", candidates=CANDIDATES).fit(digits)


def test_auto_picks_the_best_candidate_and_reports(auto):
    assert auto.code_size == 8
    assert auto.spec in CANDIDATES
    report = auto.auto_report_
    assert [r["spec"] for r in report] == sorted(CANDIDATES, key=_family_rank)
    ok = [r for r in report if r["status"] in ("ok", "chosen")]
    chosen = [r for r in report if r["status"] == "chosen"]
    assert len(chosen) == 1 and chosen[0]["spec"] == auto.spec
    assert chosen[0]["recall_at_10"] == max(r["recall_at_10"] for r in ok)
    for r in ok:
        assert 0.0 <= r["recall_at_10"] <= 1.0 and r["fit_seconds"] >= 0 and r["encode_per_s"] > 0


def test_auto_codec_works_like_its_choice(auto, split, recall10):
    base, queries = split
    codes = auto.encode(base)
    assert codes.shape == (len(base), 8)
    assert recall10(auto, base, queries) >= 0.7
    assert auto.decode(codes).shape == base.shape


def test_auto_round_trip(auto, digits, tmp_path):
    auto.save(tmp_path / "auto.json")
    again = load_codec(tmp_path / "auto.json")
    assert again.spec == auto.spec and again.auto_report_ == auto.auto_report_
    codes = auto.encode(digits)
    np.testing.assert_array_equal(again.encode(digits), codes)
    np.testing.assert_array_equal(again.search(codes, digits[:5], 4)[1], auto.search(codes, digits[:5], 4)[1])


def test_slow_encoders_are_refused(digits):
    codec = make_codec("auto", budget_bytes=8, candidates=["PCA8,SQ8", "PQ16x4"], min_encode_per_s=1e15)
    with pytest.raises(CodecError, match="encodes .* vectors/s"):
        codec.fit(digits)


def test_wrong_size_and_failing_candidates_are_recorded(digits):
    codec = make_codec("auto", budget_bytes=8, candidates=["PQ4x8", "PQ7x8", "PCA8,SQ8"]).fit(digits)
    status = {r["spec"]: r["status"] for r in codec.auto_report_}
    assert status["PQ4x8"] == "refused" and status["PQ7x8"] == "error"
    assert codec.spec == "PCA8,SQ8"


def test_default_candidates_cover_every_family():
    specs = auto_candidates(16, 384, "ip")
    for family in ("PQ16x8", "OPQ16,PQ16x8", "RQ16x8", "PCA,NUQ16", "PCA16,SQ8", "PCA32,SQ4"):
        assert family in specs
    assert all(make_codec(s).code_size == 16 for s in specs if "SQ" not in s)


@pytest.mark.slow
def test_default_candidates_at_8_bytes(split, recall10):
    base, queries = split
    codec = make_codec("auto", budget_bytes=8, max_candidates=4).fit(base)
    assert codec.code_size == 8
    assert len(codec.auto_report_) == 4
    assert recall10(codec, base, queries) >= 0.75


def test_winner_is_refitted_on_every_training_row(auto, digits):
    chosen = next(r for r in auto.auto_report_ if r["status"] == "chosen")
    assert chosen["refit_rows"] == len(digits) and chosen["refit_seconds"] >= 0
    direct = make_codec(auto.spec, metric="ip", random_state=0, max_train_rows=20000).fit(digits)
    np.testing.assert_array_equal(auto.encode(digits), direct.encode(digits))


def test_without_refit_the_winner_is_the_candidate_fitted_during_the_search(digits):
    codec = make_codec("auto", budget_bytes=8, candidates=["PCA,NUQ8", "PQ8x8"], refit=False,
                       keep_candidates=True).fit(digits)
    assert codec.chosen_ is codec.candidates_[codec.spec]
    assert "refit_rows" not in next(r for r in codec.auto_report_ if r["status"] == "chosen")


def test_a_winner_whose_spec_resolves_differently_is_still_marked_and_refitted(digits):
    codec = make_codec("auto", budget_bytes=8, candidates=["RQ8x8_b4", "PCA8,SQ8"]).fit(digits)
    assert codec.spec == "RQ8x8"  # the default beam drops out of the resolved spec
    chosen = [r for r in codec.auto_report_ if r["status"] == "chosen"]
    assert [r["spec"] for r in chosen] == ["RQ8x8_b4"] and chosen[0]["refit_rows"] == len(digits)
