"""faiss ``index_factory`` codecs as reference points for the recall-versus-bytes comparison.

Each factory string is trained on the base vectors, the base vectors are added, and the
queries are searched with faiss's own compressed-domain search; recall@10 is measured
against the same exact ground truth the project's codecs are judged by, so the points sit
on the same axes as theirs. Kept quick: residual quantizers use a modest beam and local
search quantizers (slow to train) are left out of the defaults.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from mmcompress.evaluation.metrics import one_recall_at_1, recall_at_k


def default_factory_strings(d: int, budgets: Sequence[int] = (8, 16)) -> list[str]:
    """PQ, OPQ+PQ and RQ at each byte budget (8-bit codes), plus SQ4 and SQ8, for dimension ``d``.

    PQ needs ``d`` divisible by its sub-quantizer count: otherwise a random rotation (plain PQ;
    it needs no training and keeps the sub-spaces' variance balanced, unlike PCA) or the OPQ
    rotation first maps to the largest multiple below ``d``.
    """
    specs = []
    for m in budgets:
        d_m = d - d % m
        specs += [f"PQ{m}x8" if d % m == 0 else f"RR{d_m},PQ{m}x8",
                  f"OPQ{m},PQ{m}x8" if d % m == 0 else f"OPQ{m}_{d_m},PQ{m}x8",
                  f"RQ{m}x8"]
    return specs + ["SQ4", "SQ8"]


def evaluate_faiss_baselines(X_base: np.ndarray, X_query: np.ndarray, ground_truth_I: np.ndarray,
                             factory_strings: Sequence[str] | None = None,
                             metric: str = "ip", *, k: int = 10, rq_beam_size: int = 4,
                             max_train_rows: int | None = 5000, seed: int = 0) -> list[dict]:
    """Train and search each faiss factory string; one dict per string, in the given order.

    ``factory_strings=None`` uses :func:`default_factory_strings` for the vectors' dimension.

    Each dict: ``spec``, ``bytes_per_item`` (``sa_code_size()``), ``recall_at_10`` (k-recall@k
    against ``ground_truth_I``), ``one_recall_at_1``, ``train_s``, ``search_s``, ``train_rows``
    (training uses at most ``max_train_rows`` base rows, a seeded sample) and ``source="faiss"``. A string that faiss cannot build for this dimension (e.g. PQ with a
    sub-quantizer count that does not divide ``d``) gives ``{"spec", "source", "skipped": reason}``
    instead, so one bad entry in ``params.yaml`` does not hide the others.
    """
    import faiss

    xb = np.ascontiguousarray(X_base, dtype=np.float32)
    xq = np.ascontiguousarray(X_query, dtype=np.float32)
    I_true = np.asarray(ground_truth_I)
    assert xb.ndim == 2 and xq.ndim == 2 and xb.shape[1] == xq.shape[1], (xb.shape, xq.shape)
    assert I_true.shape[0] == len(xq) and I_true.shape[1] >= k, (I_true.shape, len(xq), k)
    assert metric in ("ip", "l2"), metric
    d = xb.shape[1]
    if factory_strings is None:
        factory_strings = default_factory_strings(d)
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    xt = xb
    if max_train_rows is not None and len(xb) > max_train_rows:
        rows = np.random.default_rng(seed).choice(len(xb), max_train_rows, replace=False)
        xt = np.ascontiguousarray(xb[np.sort(rows)])
    k_search = min(k, len(xb))

    out: list[dict] = []
    for spec in factory_strings:
        if len(xt) < d and any(t.startswith(("PCA", "OPQ")) for t in spec.split(",")):
            # faiss cannot fit these rotations on fewer rows than dimensions (OPQ corrupts memory)
            out.append({"spec": spec, "source": "faiss",
                        "skipped": f"needs at least d={d} training rows for PCA/OPQ; have {len(xt)}"})
            continue
        try:
            index = faiss.index_factory(d, spec, faiss_metric)
        except RuntimeError as e:
            out.append({"spec": spec, "source": "faiss", "skipped": _first_line(e)})
            continue
        _configure(index, rq_beam_size, seed, progressive_dim=len(xt) >= d)
        t0 = time.perf_counter()
        try:
            index.train(xt)
        except RuntimeError as e:
            out.append({"spec": spec, "source": "faiss", "skipped": _first_line(e)})
            continue
        train_s = time.perf_counter() - t0
        index.add(xb)
        t0 = time.perf_counter()
        _, I_found = index.search(xq, k_search)
        search_s = time.perf_counter() - t0
        out.append({
            "spec": spec,
            "source": "faiss",
            "bytes_per_item": float(index.sa_code_size()),
            f"recall_at_{k}": recall_at_k(I_true, I_found, k_search),
            "one_recall_at_1": one_recall_at_1(I_true, I_found, 1),
            "train_s": round(train_s, 4),
            "train_rows": int(len(xt)),
            "search_s": round(search_s, 4),
        })
    return out


def _configure(index, rq_beam_size: int, seed: int, progressive_dim: bool) -> None:
    """Quick, deterministic training: modest RQ beam, no polysemous PQ training, fixed seeds.

    RQ's progressive-dimension training runs a PCA, impossible on fewer rows than dimensions;
    plain k-means per stage is used then (``progressive_dim=False``).
    """
    import faiss

    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        for i in range(inner.chain.size()):
            vt = faiss.downcast_VectorTransform(inner.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                vt.niter = 25
                vt.verbose = False
        inner = faiss.downcast_index(inner.index)
    rq = getattr(inner, "rq", None)
    if rq is not None:
        rq.max_beam_size = rq_beam_size
        if not progressive_dim:
            rq.train_type = faiss.ResidualQuantizer.Train_default
        rq.cp.seed = seed
        rq.cp.min_points_per_centroid = 1
    if isinstance(inner, faiss.IndexPQ):
        inner.do_polysemous_training = False  # slow, and unused by the ADC search measured here
    pq = getattr(inner, "pq", None)
    if pq is not None:
        pq.cp.seed = seed
        pq.cp.min_points_per_centroid = 1


def _first_line(e: Exception) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    detail = [x for x in lines if x.lower().startswith("error")]
    return (detail or lines or [type(e).__name__])[0][:300]
