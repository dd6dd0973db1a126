"""The auto codec: candidate search under a byte budget (an upper bound), report, persistence."""

import numpy as np
import pytest

from mmcompress.codecs import auto_candidates, load_codec, make_codec
from mmcompress.codecs.auto import _choice_key, _family_rank, _static_size, codebook_entries
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


def test_oversized_and_failing_candidates_are_recorded_with_their_code_sizes(digits):
    codec = make_codec("auto", budget_bytes=8, candidates=["PQ16x8", "PQ7x8", "PCA8,SQ8", "PQ4x8"]).fit(digits)
    report = {r["spec"]: r for r in codec.auto_report_}
    assert report["PQ16x8"]["status"] == "refused" and report["PQ16x8"]["code_size"] == 16
    assert report["PQ16x8"]["fit_seconds"] is None  # refused from its spec, never fitted
    assert "16-byte codes, over the budget of 8" in report["PQ16x8"]["reason"]
    assert report["PQ7x8"]["status"] == "error"
    assert report["PCA8,SQ8"]["code_size"] == 8 and report["PQ4x8"]["code_size"] == 4
    # a code under the budget is a candidate like any other, and the codec takes its size
    scored = [r for r in report.values() if r["status"] in ("ok", "chosen")]
    assert {r["spec"] for r in scored} == {"PCA8,SQ8", "PQ4x8"}
    best = max(scored, key=lambda r: (r["recall_at_10"], -r["code_size"]))
    assert codec.spec == best["spec"] and codec.code_size == best["code_size"]
    assert codec.encode(digits[:5]).shape == (5, codec.code_size)


def test_default_candidates_cover_every_family():
    specs = auto_candidates(16, 384, "ip")
    for family in ("PQ16x8", "OPQ16,PQ16x8", "RQ16x8_b2", "RQ16x8_r4", "RQ16x8_b2_r4", "PCA,NUQ16", "PCA16,SQ8", "PCA32,SQ4"):
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


# ---- budget as an upper bound, small catalogs ------------------------------------------------
#: At 16 bytes: scalar codes after PCA, Lloyd-Max levels and a 4-bit product quantizer; and an
#: 8-byte residual quantizer encoded with a beam of 2, which on scikit-learn digits (L2) beats every one of them.
FULL_16 = ["PCA16,SQ8", "PCA32,SQ4", "PCA,NUQ16", "PQ32x4"]
SMALLER = "RQ8x8_b2"  # plain RQ8x8 led by only 0.008 on one machine (0.906 vs 0.898), under the premise's 0.01


@pytest.fixture(scope="module")
def digits_l2() -> np.ndarray:
    """scikit-learn digits as they come (pixel values 0-16, not normalised): an L2 catalog."""
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float32)


def test_premise_an_8_byte_code_beats_every_16_byte_candidate_on_digits(digits_l2, recall10):
    """Checked on a split of its own (not auto's), so the next test can fail honestly."""
    perm = np.random.default_rng(7).permutation(len(digits_l2))
    base, queries = digits_l2[np.sort(perm[300:])], digits_l2[perm[:300]]
    recall = {s: recall10(make_codec(s, metric="l2").fit(base), base, queries, "l2") for s in FULL_16 + [SMALLER]}
    assert make_codec(SMALLER).code_size == 8
    assert all(make_codec(s, metric="l2").fit(base[:300]).code_size == 16 for s in FULL_16)
    assert recall[SMALLER] > max(recall[s] for s in FULL_16) + 0.01, recall


def test_auto_returns_the_smaller_code_when_it_wins(digits_l2, tmp_path):
    codec = make_codec("auto", budget_bytes=16, metric="l2", candidates=FULL_16 + [SMALLER]).fit(digits_l2)
    assert codec.spec == SMALLER and codec.code_size == 8 and codec.budget_bytes == 16
    report = {r["spec"]: r for r in codec.auto_report_}
    assert report[SMALLER]["status"] == "chosen" and report[SMALLER]["code_size"] == 8
    assert all(report[s]["code_size"] == 16 and report[s]["status"] == "ok" for s in FULL_16)
    assert report[SMALLER]["recall_at_10"] > max(report[s]["recall_at_10"] for s in FULL_16)
    codes = codec.encode(digits_l2)
    assert codes.shape == (len(digits_l2), 8)
    # saved and loaded, it keeps the chosen size and the budget it was searched under
    codec.save(tmp_path / "auto.json")
    again = load_codec(tmp_path / "auto.json")
    assert again.code_size == 8 and again.budget_bytes == 16 and again.spec == SMALLER
    np.testing.assert_array_equal(again.search(codes, digits_l2[:5], 10)[1], codec.search(codes, digits_l2[:5], 10)[1])


def test_equal_recall_goes_to_the_smaller_code_then_the_faster_fit():
    entries = [{"spec": "A", "recall_at_10": 0.9, "code_size": 16, "fit_seconds": 0.1},
               {"spec": "B", "recall_at_10": 0.9, "code_size": 8, "fit_seconds": 5.0},
               {"spec": "C", "recall_at_10": 0.9, "code_size": 8, "fit_seconds": 1.0},
               {"spec": "D", "recall_at_10": 0.8, "code_size": 4, "fit_seconds": 0.1}]
    assert max(entries, key=_choice_key)["spec"] == "C"
    assert max(entries[:2], key=_choice_key)["spec"] == "B"


def test_codebook_entries_of_specs():
    assert codebook_entries("PQ8x8") == 256 and codebook_entries("PQ16x4") == 16
    assert codebook_entries("PCA48,RQ16x8+PQ48x8") == 256 and codebook_entries("RQ32x8_b2") == 256
    assert codebook_entries("OPQ16,PQ32x4") == 256  # the rotation trains an 8-bit PQ
    assert codebook_entries("QINCO8x8_b2") == 256
    assert codebook_entries("PCA,NUQ16") is None and codebook_entries("PCA16,SQ8") is None


def test_a_small_catalog_skips_codebooks_it_cannot_fit(digits):
    rows = digits[:400]  # auto holds out 80 as queries and fits on 320: 1.25 rows per 8-bit entry
    codec = make_codec("auto", budget_bytes=8, candidates=["PQ8x8", "OPQ8,PQ8x8", "PQ16x4", "PCA8,SQ8"]).fit(rows)
    report = {r["spec"]: r for r in codec.auto_report_}
    for spec in ("PQ8x8", "OPQ8,PQ8x8"):
        assert report[spec]["status"] == "skipped" and report[spec]["fit_seconds"] is None
        assert "256 entries" in report[spec]["reason"] and "512 training rows" in report[spec]["reason"]
        assert "the search has 320" in report[spec]["reason"]
    assert report["PQ16x4"]["status"] in ("ok", "chosen")  # 16 entries: 32 rows are enough
    assert codec.spec in ("PQ16x4", "PCA8,SQ8")
    # with enough rows per entry the same candidate is fitted
    wide = make_codec("auto", budget_bytes=8, candidates=["PQ8x8"], min_rows_per_entry=1.0).fit(rows)
    assert wide.auto_report_[0]["status"] == "chosen"


def test_default_candidates_reach_below_the_budget():
    plan = make_codec("auto", budget_bytes=64)._candidate_plan(384)
    specs = [s for s, _ in plan]
    assert set(auto_candidates(64, 384, "ip")) <= set(specs)
    assert "RQ32x8_b2" in specs  # no 64-byte RQ: the 32-byte one is tried
    sizes = {s: _static_size(s, 384, "ip") for s in specs}
    assert all(size is None or size <= 64 for size in sizes.values()) and sizes["RQ32x8_b2"] == 32
    # at 16 bytes the budget's own candidates come first in priority, and neural fits stay at
    # their own budget: no 8-byte QINCo is added
    auto16 = make_codec("auto", budget_bytes=16)
    assert not any(s.split(",")[-1].startswith("QINCO") for s in auto16.candidate_specs(384))
    assert set(auto_candidates(16, 384, "ip")) <= set(auto16.candidate_specs(384))
    capped = make_codec("auto", budget_bytes=64, max_candidates=6, exclude=["QINCO"]).candidate_specs(384)
    assert set(capped) == set(auto_candidates(64, 384, "ip"))
    # smaller_sizes=0 is the exact-budget search
    exact = make_codec("auto", budget_bytes=64, smaller_sizes=0).candidate_specs(384)
    assert set(exact) == set(auto_candidates(64, 384, "ip"))


def test_half_budget_fallbacks_are_fitted_only_when_their_family_has_no_accepted_code(digits):
    plan = dict(make_codec("auto", budget_bytes=32)._candidate_plan(384))
    assert plan["RQ32x8_b2"] is False and plan["RQ16x8_r4"] is True  # RQ16x8_r4 backs up the beam-2 RQ32
    codec = make_codec("auto", budget_bytes=16, exclude=["RQ", "SQ"]).fit(digits)
    report = {r["spec"]: r for r in codec.auto_report_}
    assert report["PQ8x8"]["status"] == "skipped" and report["PQ8x8"]["fit_seconds"] is None
    assert report["PQ8x8"]["reason"] == "fallback not needed: PQ16x8 was accepted"
    assert report["PCA,NUQ8"]["reason"] == "fallback not needed: PCA,NUQ16 was accepted"
    assert all(r["code_size"] <= 16 for r in report.values())


def test_a_file_saved_before_budgets_were_upper_bounds_still_loads(auto, digits, tmp_path):
    """Files written by the exact-budget search have no per-candidate code sizes in their report;
    their chosen code is the budget's size, which is what the loaded codec reports."""
    import json

    auto.save(tmp_path / "old.json")
    header = json.loads((tmp_path / "old.json").read_text())
    for entry in header["meta"]["state"]["report"]:
        entry.pop("code_size")
    (tmp_path / "old.json").write_text(json.dumps(header))
    again = load_codec(tmp_path / "old.json")
    assert again.code_size == again.budget_bytes == 8 and again.spec == auto.spec
    np.testing.assert_array_equal(again.encode(digits[:50]), auto.encode(digits[:50]))


def test_residual_codes_up_to_16_bytes_are_offered_with_both_beams():
    for budget in (4, 8, 16):
        specs = auto_candidates(budget, 64, "l2")
        assert {f"RQ{budget}x8_r4", f"RQ{budget}x8_b2_r4", f"RQ{budget}x8_b2"} <= set(specs)
    assert "RQ32x8" not in auto_candidates(32, 64, "l2")  # at 32 bytes only the beam of 2 encodes fast enough


def test_auto_beats_faiss_residual_codes_on_digits_at_8_bytes(digits_l2):
    """The L2 catalog where auto trailed faiss at 8 bytes (RQ8x8 with the default beam, 0.914
    against faiss's 0.918): with both beams offered, auto's held-out recall picks the narrow
    beam, ahead of faiss's residual quantizer on queries auto never saw."""
    import faiss

    from mmcompress.codecs import exact_search

    perm = np.random.default_rng(0).permutation(len(digits_l2))
    base, queries = digits_l2[np.sort(perm[359:])], digits_l2[perm[:359]]
    _, truth = exact_search(base, queries, 10, "l2")

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))

    codec = make_codec("auto", budget_bytes=8, metric="l2", candidates=["RQ8x8", "RQ8x8_b2"]).fit(base)
    assert codec.spec == "RQ8x8_b2"
    ours = recall(codec.search(codec.encode(base), queries, 10)[1])
    rq = faiss.IndexResidualQuantizer(base.shape[1], 8, 8, faiss.METRIC_L2)
    rq.train(base)
    rq.add(base)
    theirs = recall(rq.search(queries, 10)[1])
    assert ours >= theirs + 0.005, (ours, theirs)
