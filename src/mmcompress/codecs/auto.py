"""``make_codec("auto", budget_bytes=B)``: pick the best spec that fits exactly B bytes per item.

Candidates come from every registered quantizer family (:func:`spec.auto_candidates`:
PQ, OPQ+PQ, RQ with beam search, NUQ after PCA, SQ after PCA, the neural residual quantizer
up to 8 bytes, and any plugin family that offers candidates); ``exclude`` drops families by
their token (``exclude=["QINCO"]`` skips the minutes-long neural fits). Each is fitted on (a subsample of) the training rows and scored by
recall@10 of its compressed-domain search for held-out training rows used as queries, against
exact search over an evaluation sample. Candidates that encode slower than
``min_encode_per_s`` are refused. The winner is then refitted on all the training rows
(``refit=True``, like scikit-learn's grid search: the held-out queries were only needed to choose;
codebooks fitted on every row fit the catalog they will encode); ``spec`` resolves to its spec
and ``auto_report_`` lists what was tried, with scores, fit seconds, encode rates and why each
was kept or refused (``keep_candidates=True`` also keeps every fitted candidate in
``candidates_``, for benchmarks).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mmcompress.codecs.base import Codec, exact_search
from mmcompress.codecs.faiss_quantizers import subsample_rows
from mmcompress.errors import ArtifactError, CodecError

#: Order in which families are tried: cheap fits first, so a time limit cuts the slow ones.
_FAMILY_ORDER = ("SQ", "NUQ", "PQ", "OPQ", "RQ", "QINCO")  # stacks ("RQ..+PQ..") sort with RQ


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


def _excluded(spec: str, families: tuple[str, ...]) -> bool:
    """Whether the spec's quantizer token starts with one of ``families`` (e.g. ``"QINCO"``)."""
    last = spec.split(",")[-1]
    return any(last.startswith(f) for f in families)


class AutoCodec(Codec):
    """Searches candidate specs under a byte budget and wraps the winner."""

    kind = "auto"

    def __init__(self, budget_bytes: int, metric: str = "ip", random_state: int = 0,
                 progress: bool = False, candidates: list[str] | None = None, n_queries: int = 500,
                 max_eval_rows: int = 10000, max_train_rows: int = 20000,
                 min_encode_per_s: float = 5000.0, max_candidates: int = 10,
                 max_fit_seconds: float | None = None, keep_candidates: bool = False,
                 exclude: list[str] | tuple[str, ...] | None = None, refit: bool = True,
                 **options: Any) -> None:
        super().__init__(metric)
        if not isinstance(budget_bytes, int | np.integer) or budget_bytes < 1:
            raise CodecError(f"budget_bytes must be a positive integer; found {budget_bytes!r}")
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
        self.options = options

    @property
    def spec(self) -> str:
        return self.chosen_.spec if hasattr(self, "chosen_") else "auto"

    @property
    def code_size(self) -> int:
        return self.budget_bytes

    @property
    def field_bits(self) -> list[int]:
        self._check_fitted()
        return self.chosen_.field_bits

    @property
    def is_binary(self) -> bool:  # type: ignore[override]
        return hasattr(self, "chosen_") and self.chosen_.is_binary

    def candidate_specs(self, d: int) -> list[str]:
        """The specs ``fit`` will try for input dimension ``d``, in order."""
        from mmcompress.codecs.spec import auto_candidates

        specs = list(self.candidates) if self.candidates else auto_candidates(self.budget_bytes, d, self.metric)
        specs = [s for s in specs if not _excluded(s, self.exclude)]
        specs = sorted(specs, key=_family_rank)
        return specs[:self.max_candidates]

    # ---- fitting ---------------------------------------------------------------------------
    def _fit(self, X: np.ndarray) -> None:
        from mmcompress.codecs.spec import make_codec

        n, d = X.shape
        specs = self.candidate_specs(d)
        if not specs:
            raise CodecError(f"no codec fits budget_bytes={self.budget_bytes} for d={d}; "
                             f"try a budget between 1 and {d} bytes")
        if n < 60:
            raise CodecError(f"auto codec search needs at least 60 training rows; found {n}")
        rng = np.random.default_rng(self.random_state)
        perm = rng.permutation(n)
        nq = min(self.n_queries, n // 5)
        xq, rest = X[perm[:nq]], X[np.sort(perm[nq:])]
        xb = subsample_rows(rest, self.max_eval_rows, self.random_state)
        xt = subsample_rows(rest, self.max_train_rows, self.random_state + 1)
        _, truth = exact_search(xb, xq, 10, self.metric)
        report: list[dict[str, Any]] = []
        fitted: dict[str, Codec] = {}
        best: tuple[float, float, Codec, dict[str, Any]] | None = None
        start = time.perf_counter()
        iterator = specs
        if self.progress:
            from tqdm.auto import tqdm

            iterator = tqdm(specs, desc=f"auto codec ({self.budget_bytes} B)")
        for spec in iterator:
            entry: dict[str, Any] = {"spec": spec, "recall_at_10": None, "fit_seconds": None,
                                     "encode_per_s": None, "status": "", "reason": ""}
            report.append(entry)
            if self.max_fit_seconds is not None and time.perf_counter() - start > self.max_fit_seconds:
                entry.update(status="skipped", reason=f"fit time limit {self.max_fit_seconds}s reached")
                continue
            try:
                codec = make_codec(spec, metric=self.metric, random_state=self.random_state,
                                   max_train_rows=self.max_train_rows, **self.options)
                t0 = time.perf_counter()
                codec.fit(xt)
                entry["fit_seconds"] = round(time.perf_counter() - t0, 3)
                if codec.code_size != self.budget_bytes:
                    entry.update(status="refused", reason=f"makes {codec.code_size}-byte codes")
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
            key = (entry["recall_at_10"], -entry["fit_seconds"])
            if best is None or key > best[:2]:
                best = (key[0], key[1], codec, entry)
        if best is None:
            reasons = "; ".join(f"{e['spec']}: {e['status']} {e['reason']}" for e in report)
            raise CodecError(f"no candidate codec fits budget_bytes={self.budget_bytes} for d={d} "
                             f"({reasons})")
        self.chosen_, entry = best[2], best[3]
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

    def _timed_encode(self, codec: Codec, xb: np.ndarray) -> tuple[np.ndarray, float]:
        """Encode the evaluation rows and the encode rate they show.

        The rate uses the smaller of wall time and process CPU time: on a busy machine wall
        time counts other people's work, while CPU time counts only this encoder (as if it ran
        on one core), so a candidate is not refused for the load around it.
        """
        w0, c0 = time.perf_counter(), time.process_time()
        codes = codec.encode(xb)
        seconds = min(time.perf_counter() - w0, time.process_time() - c0)
        return codes, len(xb) / max(seconds, 1e-9)

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
