"""The fitted / unseen codec benchmark: disjoint parts, both measured, outputs written."""

import json

import numpy as np
import pytest

from benchmarks import bench_unseen


def test_the_unseen_part_is_disjoint_from_the_fitted_one_and_sized_by_the_holdout():
    fitted, unseen = bench_unseen.split_fit(1000, 0.2, seed=0)
    assert len(unseen) == 200 and len(fitted) == 800
    assert not set(fitted) & set(unseen) and set(fitted) | set(unseen) == set(range(1000))
    assert np.all(np.diff(fitted) > 0) and np.all(np.diff(unseen) > 0)
    with pytest.raises(SystemExit):
        bench_unseen.parse_args(["--holdout", "1.0"])


@pytest.mark.slow
def test_benchmark_measures_fitted_and_unseen_items_and_writes_its_tables(digits, tmp_path):
    path = tmp_path / "digits.npy"
    np.save(path, digits)
    out = tmp_path / "results"
    bench_unseen.main(["--vectors", f"digits={path}", "--budgets", "4", "--n-queries", "100", "--out", str(out)])
    result = json.loads((out / "unseen.json").read_text())
    rows = {r["label"]: r for r in result["rows"]}
    assert set(rows) == {"auto", "RQ (plain)", "RQ+refine", "faiss RQ", "faiss RQ+refine"}
    for r in rows.values():
        assert r["code_bytes"] <= 4
        for part in ("fitted", "unseen"):
            assert 0.0 < r[part]["recall_at_10"] <= 1.0 and r[part]["mse"] > 0
    # refined codebooks fit the rows they were refined on better than rows they never saw
    refined = rows["RQ+refine"]
    assert refined["fitted"]["mse"] < refined["unseen"]["mse"]
    sizes = result["datasets"]["digits"]
    assert sizes["n_unseen"] == round(0.2 * (sizes["n_fitted"] + sizes["n_unseen"]))
    md = (out / "unseen.md").read_text()
    assert "## digits, 4 bytes" in md and "| faiss RQ+refine |" in md
    # one codec run again: the other rows are kept as they were
    again = bench_unseen.main(["--vectors", f"digits={path}", "--budgets", "4", "--n-queries", "100",
                               "--out", str(out), "--resume", "--only", "faiss RQ"])
    assert [r["label"] for r in again["rows"]] == [r["label"] for r in result["rows"]]
    assert [r for r in again["rows"] if r["label"] != "faiss RQ"] == \
        [r for r in result["rows"] if r["label"] != "faiss RQ"]
