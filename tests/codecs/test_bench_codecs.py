"""The codec benchmark runs end to end on a small real dataset and writes its three outputs."""

import json

import numpy as np
import pytest

from benchmarks import bench_codecs


@pytest.mark.slow
def test_quick_benchmark_writes_json_markdown_and_plot(digits, tmp_path):
    path = tmp_path / "digits.npy"
    np.save(path, digits)
    out = tmp_path / "results"
    bench_codecs.main(["--quick", "--vectors", f"digits={path}", "--budgets", "8", "--out", str(out),
                       "--n-queries", "100", "--only", "NUQ", "PQ", "faiss PQ", "--throughput-items", "0"])
    results = json.loads((out / "codecs.json").read_text())
    labels = {r["label"] for r in results["rows"]}
    assert {"NUQ", "PQ", "faiss PQ", "faiss PQ (L2 scan)"} <= labels
    for row in results["rows"]:
        assert 0.0 <= row["recall_at_10"] <= 1.0
        assert row["code_bytes"] == 8 and row["encode_per_s"] > 0 and row["search_qps"] > 0
        assert row["ratio_vs_best_faiss"] is not None
    assert "| NUQ |" in (out / "codecs.md").read_text()
    assert (out / "codecs.png").read_bytes()[:4] == b"\x89PNG"
