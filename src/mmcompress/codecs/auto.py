"""``make_codec("auto", budget_bytes=B)``: pick the best spec whose codes take at most B bytes.

The budget is an upper bound, not a target. Candidates come from every registered quantizer
family (:func:`spec.auto_candidates`: PQ, OPQ+PQ, RQ with beam search, NUQ after PCA, SQ after
PCA, residual stacks, the neural residual quantizer up to 8 bytes, and any plugin family that
offers candidates) at B itself and at the ``smaller_sizes`` halvings below it (default 2: B/2
and B/4). A smaller size adds only the families that no larger size offers (at 64 bytes the
32-byte residual quantizer, which has no 64-byte candidate because its encoding would fall below
the encode-rate floor) and never the neural or plugin families (minutes-long fits); the B/2
candidates of the families already offered are fallbacks, fitted only when no larger code of
their family was accepted (``RQ16x8_r4`` when ``RQ32x8_b2`` encodes below the floor on wide
vectors). So the search stays about as long as an exact-budget one; when ``max_candidates``
cuts the list, the candidates of the budget itself are kept first, fallbacks last.
``smaller_sizes=0`` searches the budget's own candidates only. ``exclude`` drops families by
their token (``exclude=["QINCO"]`` skips the minutes-long neural fits).

Each candidate is fitted on (a subsample of) the training rows and scored by recall@10 of its
compressed-domain search for held-out training rows used as queries, against exact search over
an evaluation database shaped like the catalog the winner will serve: rows the candidates were
fitted on, plus a share ``unseen_share`` (default 0.2) of rows none was fitted on, standing for
the items added between refits. Either alone misleads. Scored on its own training rows only, a
codec that memorises them wins: on the fused MovieLens vectors (16 B, fitted on 80% of 8,742
items, 1,000 held-out queries) refined residual codebooks (``RQ16x8_r4``) reach recall@10 0.836
on the rows they were fitted on and 0.713 on the other 20%, plain ones (``RQ16x8_b2``) 0.783 and
0.719; 12 codebooks of 1,024 entries (``RQ12x10``) 0.864 and 0.701 (``benchmarks/bench_unseen.py``
measures this for the benchmark's catalogs). Scored on unseen rows only, near ties there decide
codes that differ widely on the catalog itself (see :data:`UNSEEN_SHARE`); ``unseen_share=1``
scores on unseen rows only, ``0`` on fitted rows only.
A candidate whose codes are larger than B is refused (before fitting when its spec fixes its
size); one whose codebooks have more entries than the training rows can
fit (fewer than ``min_rows_per_entry`` rows per k-means centroid, see :func:`codebook_entries`)
is skipped unfitted; one that encodes slower than ``min_encode_per_s`` (rows per CPU second times
the usable cores, so the verdict does not move with machine load) is refused. The best
recall wins; equal recall goes to the smaller code, then to the faster fit. The winner is then
refitted on all the training rows (``refit=True``, like scikit-learn's grid search: the
held-out queries were only needed to choose; codebooks fitted on every row fit the catalog they
will encode); ``spec`` resolves to its spec, ``code_size`` to the winner's code size (at most
B), and ``auto_report_`` lists what was tried, with code sizes, scores, fit seconds, encode
rates and why each was kept, refused or skipped (``keep_candidates=True`` also keeps every
fitted candidate in ``candidates_``, for benchmarks).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import numpy as np

from mmcompress.codecs.base import Codec, exact_search
from mmcompress.codecs.faiss_quantizers import subsample_rows
from mmcompress.errors import ArtifactError, CodecError

#: Order in which families are tried: cheap fits first, so a time limit cuts the slow ones.
#: LSQ is not offered: measured on scikit-learn digits (L2, 1,438 items), where faiss's LSQ8x8
#: had looked best only because its encoder replayed its training codes (see
#: ``LocalSearchQuantizer``), it trails RQ at 8 B (recall@10 0.659 against 0.918; 0.877 at best
#: with a 100x stronger codebook ridge) and 16 B (0.897 against 0.979), as it does on the
#: inner-product catalogs (fused MovieLens, 8 B: 0.555 against 0.623), and encodes below the
#: 5,000 vectors/s floor (1,739 and 389 vectors/s on digits at 8 and 16 B).
_FAMILY_ORDER = ("SQ", "NUQ", "PQ", "OPQ", "RQ", "QINCO")  # stacks ("RQ..+PQ..") sort with RQ

#: Training rows per codebook entry below which a candidate is skipped. faiss's k-means refuses
#: fewer rows than centroids (Clustering.cpp: "nx >= k") and warns below 39 per centroid
#: (``min_points_per_centroid``), which its FAQ ("Can I ignore warning clustering XXX points to
#: YYY centroids?") says "may still be ok if the dataset to index is as small as the training
#: set" -- auto's case, since it encodes the catalog it is fitted on; faiss's author adds that
#: "it does not make much sense to have 2 training points per centroid" (faiss issue #1205).
#: Measured on scikit-learn digits (L2, 300 held-out queries, new rows reconstructed): RQ8x8
#: fitted on 300 rows (1.2 per entry) reconstructs new rows with 1.9x the squared error of
#: RQ16x4 (247 vs 127), on 500 rows (2.0 per entry) with the same (113 vs 113), on 800 rows
#: (3.1) with less (86 vs 102), while 8-bit codebooks beat 4-bit ones on recall from 300 rows
#: on. So 2 rows per entry: below it a 256-entry codebook memorises its rows; above it the
#: 39-per-centroid warning would refuse codecs that win (faiss RQ32x8 on the 4,500-item catalog
#: of issue 18: 17.6 rows per entry).
MIN_ROWS_PER_ENTRY = 2.0

#: Share of the evaluation database drawn from rows no candidate was fitted on; the rest are
#: rows every candidate was fitted on. A catalog is encoded by codebooks fitted on it (the
#: winner is refitted on every row) and gains new items between refits, so most of what a
#: query searches was fitted on and some was not. Scored on unseen rows alone, auto chose codes
#: that serve the catalog itself far worse: on the Debian catalog (10,000 items, 32 B) PCA,NUQ32
#: tied RQ32x8_b2 on unseen rows (recall@10 0.750 / 0.748) and then reached 0.732 on the encoded
#: catalog against 0.883; scored on fitted rows alone, codes that memorise their rows win even
#: where they lose on every new item (``RQ12x10`` on fused MovieLens: 0.864 fitted, 0.701 not).
UNSEEN_SHARE = 0.2

_CODEBOOK_TOKEN = re.compile(r"(?:PQ|RQ|LSQ|QINCO)(?P<M>\d+)(?:x(?P<nbits>\d+))?")
_OPQ_TOKEN = re.compile(r"OPQ\d+(?:_\d+)?")


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the true top-``k`` ids that appear in the found top-``k``."""
    hits = sum(len(np.intersect1d(f[:k], t[:k])) for f, t in zip(found, truth, strict=True))
    return hits / (len(truth) * k)


def _family_rank(spec: str) -> int:
    last = spec.split(",")[-1]
    first = spec.split(",")[0]
    for i, fam in enumerate(_FAMILY_ORDER):
        if fam == "OPQ" and first.startswith("OPQ"):
            return i
        if last.startswith(fam) and not first.startswith("OPQ"):
            return i
    return len(_FAMILY_ORDER)


def _family(spec: str) -> str:
    """The family a spec belongs to: ``OPQ``, ``stack`` (``RQ..+PQ..``) or the letters that
    start its quantizer token (``PQ``, ``RQ``, ``SQ``, ``NUQ``, ``QINCO`` ...)."""
    tokens = spec.split(",")
    if tokens[0].startswith("OPQ"):
        return "OPQ"
    if "+" in tokens[-1]:
        return "stack"
    m = re.match(r"[A-Z]+", tokens[-1])
    return m.group(0) if m else tokens[-1]


def _excluded(spec: str, families: tuple[str, ...]) -> bool:
    """Whether the spec's quantizer token starts with one of ``families`` (e.g. ``"QINCO"``)."""
    last = spec.split(",")[-1]
    return any(last.startswith(f) for f in families)


def codebook_entries(spec: str) -> int | None:
    """Entries of the largest k-means codebook a spec trains (``2**nbits`` per sub-quantizer or
    residual stage; 256 for an OPQ rotation, which trains an 8-bit PQ), or None without any."""
    tokens = spec.split(",")
    k = 256 if any(_OPQ_TOKEN.fullmatch(t) for t in tokens[:-1]) else 0
    for part in tokens[-1].split("+"):
        m = _CODEBOOK_TOKEN.match(part)
        if m:
            k = max(k, 1 << int(m["nbits"] or 8))
    return k or None


def _choice_key(entry: dict[str, Any]) -> tuple[float, int, float]:
    """The order candidates win in: best recall; equal recall, the smaller code, then the
    faster fit."""
    return entry["recall_at_10"], -entry["code_size"], -entry["fit_seconds"]


def _static_size(spec: str, d: int, metric: str) -> int | None:
    """A spec's code size for ``d``-dimensional input when the spec fixes it (most do:
    :func:`~mmcompress.codecs.sizing.planned_code_size`), else None (known after fitting; a
    spec that does not parse fails when it is built)."""
    from mmcompress.codecs.sizing import planned_code_size

    try:
        return planned_code_size(spec, d, metric)
    except CodecError:
        return None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class AutoCodec(Codec):
    """Searches candidate specs under a byte budget (an upper bound) and wraps the winner."""

    kind = "auto"

    def __init__(self, budget_bytes: int, metric: str = "ip", random_state: int = 0,
                 progress: bool = False, candidates: list[str] | None = None, n_queries: int = 500,
                 max_eval_rows: int = 10000, max_train_rows: int = 20000,
                 min_encode_per_s: float = 5000.0, max_candidates: int = 10,
                 max_fit_seconds: float | None = None, keep_candidates: bool = False,
                 exclude: list[str] | tuple[str, ...] | None = None, refit: bool = True,
                 smaller_sizes: int = 2, min_rows_per_entry: float = MIN_ROWS_PER_ENTRY,
                 unseen_share: float = UNSEEN_SHARE, **options: Any) -> None:
        super().__init__(metric)
        if not isinstance(budget_bytes, int | np.integer) or budget_bytes < 1:
            raise CodecError(f"budget_bytes must be a positive integer; found {budget_bytes!r}")
        if not isinstance(smaller_sizes, int | np.integer) or smaller_sizes < 0:
            raise CodecError(f"smaller_sizes must be an integer >= 0; found {smaller_sizes!r}")
        self.budget_bytes = int(budget_bytes)
        self.random_state = random_state
        self.progress = progress
        self.candidates = candidates
        self.n_queries = n_queries
        self.max_eval_rows = max_eval_rows
        self.max_train_rows = max_train_rows
        self.min_encode_per_s = min_encode_per_s
        self.max_candidates = max_candidates
        self.max_fit_seconds = max_fit_seconds
        self.keep_candidates = keep_candidates
        self.exclude = tuple(exclude or ())
        self.refit = refit
        self.smaller_sizes = int(smaller_sizes)
        self.min_rows_per_entry = float(min_rows_per_entry)
        if isinstance(unseen_share, bool) or not isinstance(unseen_share, int | float) or not 0 <= unseen_share <= 1:
            raise CodecError(f"unseen_share must be a number in [0, 1]; found {unseen_share!r}")
        self.unseen_share = float(unseen_share)
        self.options = options

    @property
    def spec(self) -> str:
        return self.chosen_.spec if hasattr(self, "chosen_") else "auto"

    @property
    def code_size(self) -> int:
        """The chosen codec's code size once fitted (at most ``budget_bytes``); before, the budget."""
        return self.chosen_.code_size if hasattr(self, "chosen_") else self.budget_bytes

    @property
    def field_bits(self) -> list[int]:
        self._check_fitted()
        return self.chosen_.field_bits

    @property
    def is_binary(self) -> bool:  # type: ignore[override]
        return hasattr(self, "chosen_") and self.chosen_.is_binary

    def candidate_sizes(self) -> list[int]:
        """The code sizes the default candidates come in: the budget, then its halvings."""
        sizes = [self.budget_bytes]
        while len(sizes) <= self.smaller_sizes and sizes[-1] // 2 >= 1:
            sizes.append(sizes[-1] // 2)
        return sizes

    def candidate_specs(self, d: int) -> list[str]:
        """The specs ``fit`` will try for input dimension ``d``, in order."""
        return [spec for spec, _ in self._candidate_plan(d)]

    def _candidate_plan(self, d: int) -> list[tuple[str, bool]]:
        """``(spec, fallback)`` pairs in the order ``fit`` tries them.

        Given ``candidates`` are used as they are (any size; larger than the budget is refused
        at fit). Otherwise: the budget's own candidates; per smaller size, those of the cheap
        families (ranked before ``QINCO``) that no larger size offers; then fallbacks: the
        budget/2 candidates of the cheap families already offered, costliest family first,
        tried only when no larger candidate of their family was accepted (e.g. ``RQ16x8_r4`` when
        ``RQ32x8_b2`` encodes below the floor on wide vectors). ``max_candidates`` keeps that
        many in this order; they are then tried cheap families first, larger codes first within
        a family.
        """
        from mmcompress.codecs.spec import auto_candidates

        if self.candidates:
            specs = [s for s in self.candidates if not _excluded(s, self.exclude)]
            return [(s, False) for s in sorted(specs, key=_family_rank)[:self.max_candidates]]
        cheap = _FAMILY_ORDER.index("QINCO")
        plan: list[tuple[str, bool]] = []
        size_of: dict[str, int] = {}
        families: set[str] = set()
        fallbacks: list[str] = []
        for i, size in enumerate(self.candidate_sizes()):
            offered = [s for s in auto_candidates(size, d, self.metric)
                       if not _excluded(s, self.exclude) and s not in size_of]
            if i > 0:
                if i == 1:
                    fallbacks = [s for s in offered if _family(s) in families and _family_rank(s) < cheap]
                offered = [s for s in offered if _family(s) not in families and _family_rank(s) < cheap]
            families |= {_family(s) for s in offered}
            for s in sorted(offered, key=_family_rank):
                plan.append((s, False))
                size_of[s] = size
        for s in sorted(fallbacks, key=_family_rank, reverse=True):
            plan.append((s, True))
            size_of[s] = self.budget_bytes // 2
        plan = plan[:self.max_candidates]
        return sorted(plan, key=lambda p: (_family_rank(p[0]), -size_of[p[0]]))

    # ---- fitting ---------------------------------------------------------------------------
    def _fit(self, X: np.ndarray) -> None:
        from mmcompress.codecs.spec import make_codec

        n, d = X.shape
        plan = self._candidate_plan(d)
        if not plan:
            raise CodecError(f"no codec fits budget_bytes={self.budget_bytes} for d={d}; "
                             f"try a budget between 1 and {d} bytes")
        if n < 60:
            raise CodecError(f"auto codec search needs at least 60 training rows; found {n}")
        rng = np.random.default_rng(self.random_state)
        perm = rng.permutation(n)
        nq = min(self.n_queries, n // 5)
        xq, xt, xb = self._split(X, perm, nq)
        _, truth = exact_search(xb, xq, 10, self.metric)
        report: list[dict[str, Any]] = []
        fitted: dict[str, Codec] = {}
        best: tuple[tuple[float, int, float], Codec, dict[str, Any]] | None = None
        start = time.perf_counter()
        iterator = plan
        if self.progress:
            from tqdm.auto import tqdm

            iterator = tqdm(plan, desc=f"auto codec (<= {self.budget_bytes} B)")
        for spec, fallback in iterator:
            size = _static_size(spec, d, self.metric)
            entry: dict[str, Any] = {"spec": spec, "code_size": size, "recall_at_10": None,
                                     "fit_seconds": None, "encode_per_s": None, "status": "",
                                     "reason": ""}
            report.append(entry)
            if fallback:
                kept = [e["spec"] for e in report[:-1]
                        if e["status"] == "ok" and _family(e["spec"]) == _family(spec)]
                if kept:
                    entry.update(status="skipped", reason=f"fallback not needed: {kept[0]} was accepted")
                    continue
            if size is not None and size > self.budget_bytes:
                entry.update(status="refused", reason=f"makes {size}-byte codes, over the "
                                                      f"budget of {self.budget_bytes}")
                continue
            entries = codebook_entries(spec)
            if entries is not None and len(xt) < self.min_rows_per_entry * entries:
                entry.update(status="skipped",
                             reason=f"codebooks of {entries} entries need at least "
                                    f"{self.min_rows_per_entry:g} x {entries} = "
                                    f"{int(np.ceil(self.min_rows_per_entry * entries))} training rows; "
                                    f"the search has {len(xt)}")
                continue
            if self.max_fit_seconds is not None and time.perf_counter() - start > self.max_fit_seconds:
                entry.update(status="skipped", reason=f"fit time limit {self.max_fit_seconds}s reached")
                continue
            try:
                codec = make_codec(spec, metric=self.metric, random_state=self.random_state,
                                   max_train_rows=self.max_train_rows, **self.options)
                t0 = time.perf_counter()
                codec.fit(xt)
                entry["fit_seconds"] = round(time.perf_counter() - t0, 3)
                entry["code_size"] = int(codec.code_size)
                if codec.code_size > self.budget_bytes:
                    entry.update(status="refused", reason=f"makes {codec.code_size}-byte codes, over "
                                                          f"the budget of {self.budget_bytes}")
                    continue
                codes, rate = self._timed_encode(codec, xb)
                entry["encode_per_s"] = round(rate, 1)
                _, found = codec.search(codes, xq, 10)
                entry["recall_at_10"] = round(recall_at_k(found, truth), 4)
                entry["norm_weight"] = float(getattr(codec, "norm_weight_", 0.0))
                if self.keep_candidates:
                    fitted[spec] = codec
            except (CodecError, RuntimeError) as e:  # RuntimeError: faiss refusing the data
                entry.update(status="error", reason=str(e).splitlines()[0][:300])
                continue
            if rate < self.min_encode_per_s:
                entry.update(status="refused", reason=f"encodes {rate:.0f} vectors/s < {self.min_encode_per_s:.0f}")
                continue
            entry["status"] = "ok"
            key = _choice_key(entry)
            if best is None or key > best[0]:
                best = (key, codec, entry)
        if best is None:
            reasons = "; ".join(f"{e['spec']}: {e['status']} {e['reason']}" for e in report)
            raise CodecError(f"no candidate codec fits budget_bytes={self.budget_bytes} for d={d} "
                             f"({reasons})")
        self.chosen_, entry = best[1], best[2]
        entry["status"] = "chosen"  # by entry: a spec may resolve to another string (defaults dropped)
        if self.refit:
            t0 = time.perf_counter()
            self.chosen_ = make_codec(entry["spec"], metric=self.metric, random_state=self.random_state,
                                      max_train_rows=self.max_train_rows, **self.options)
            rows = subsample_rows(X, self.max_train_rows, self.random_state + 1)
            self.chosen_.fit(rows)
            entry["refit_seconds"] = round(time.perf_counter() - t0, 3)
            entry["refit_rows"] = len(rows)
        self.auto_report_ = report
        if self.keep_candidates:
            self.candidates_ = fitted

    def _split(self, X: np.ndarray, perm: np.ndarray, nq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Queries, training rows and the evaluation database (module docstring): up to
        ``max_eval_rows`` rows, ``unseen_share`` of them held out of training (at most a fifth of
        the non-query rows or as many as the queries, so training keeps the rest), the others
        drawn from the training rows in proportion."""
        u, rest = self.unseen_share, len(X) - nq
        n_db = min(self.max_eval_rows, rest)
        n_unseen = min(int(round(u * n_db)), max(nq, rest // 5))
        unseen = X[np.sort(perm[nq:nq + n_unseen])]
        xt = subsample_rows(X[np.sort(perm[nq + n_unseen:])], self.max_train_rows, self.random_state + 1)
        n_seen = n_db - n_unseen if u == 0 else int(round(n_unseen * (1 - u) / u))
        n_seen = min(n_seen, n_db - n_unseen, len(xt))
        rng = np.random.default_rng(self.random_state + 2)
        seen = xt[np.sort(rng.choice(len(xt), n_seen, replace=False))]
        return X[perm[:nq]], xt, np.concatenate([seen, unseen])

    def _timed_encode(self, codec: Codec, xb: np.ndarray) -> tuple[np.ndarray, float]:
        """Encode the evaluation rows and the encode rate they show: rows per second of this
        process's CPU time, times the cores it may run on (the rate of the machine's cores
        encoding shards side by side, as the pipeline's workers do).

        CPU time counts only this encoder's work, so a candidate is neither refused for the load
        around it nor, on an idle machine, judged by a faster wall clock than under load. (The
        smaller of wall and CPU time, used before, was a two-thread wall rate when the machine
        was idle and a one-core CPU rate when it was busy: under a concurrent test run auto
        refused fused MovieLens's RQ32x8_b2 at 3,635 vectors/s and fell back to a code 0.17
        recall@10 worse.)
        """
        c0 = time.process_time()
        codes = codec.encode(xb)
        return codes, len(xb) * usable_cores() / max(time.process_time() - c0, 1e-9)

    # ---- delegation ------------------------------------------------------------------------
    def _encode(self, X: np.ndarray) -> np.ndarray:
        return self.chosen_._encode(X)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self.chosen_._decode(codes)

    def _search(self, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.chosen_._search(codes, queries, k)

    def search_hamming(self, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.chosen_.search_hamming(codes, queries, k)  # type: ignore[attr-defined]

    def search_tables(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
        self._check_fitted()
        return self.chosen_.search_tables(queries)

    def _scan_norms(self, codes: np.ndarray) -> np.ndarray:
        return self.chosen_._scan_norms(codes)

    # ---- state -----------------------------------------------------------------------------
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta, arrays = self.chosen_._get_state()
        state = {"budget_bytes": self.budget_bytes, "chosen_kind": self.chosen_.kind,
                 "chosen_spec": self.chosen_.spec, "chosen_state": meta, "chosen_d": self.chosen_.d_,
                 "chosen_norm_weight": float(getattr(self.chosen_, "norm_weight_", 0.0)),
                 "report": self.auto_report_}
        return state, {f"c.{k}": v for k, v in arrays.items()}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError("AutoCodec is restored by _from_state")

    @classmethod
    def _from_state(cls, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Codec:
        from mmcompress.codecs.spec import make_codec

        state = header["state"]
        codec = cls(budget_bytes=int(state["budget_bytes"]), metric=header["metric"])
        chosen = make_codec(state["chosen_spec"], metric=header["metric"])
        if chosen.kind != state["chosen_kind"]:
            raise ArtifactError(f"auto codec: spec {state['chosen_spec']!r} builds {chosen.kind!r}, "
                                f"file says {state['chosen_kind']!r}")
        chosen._set_state(state["chosen_state"], {k[2:]: v for k, v in arrays.items() if k.startswith("c.")})
        chosen.d_ = int(state["chosen_d"])
        chosen.norm_weight_ = float(state["chosen_norm_weight"])
        codec.chosen_ = chosen
        codec.auto_report_ = list(state["report"])
        codec.d_ = int(header["d"])
        codec.norm_weight_ = 0.0
        return codec
