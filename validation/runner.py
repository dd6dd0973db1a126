"""Validate catalogs and code arrays; used by the ``validate`` stage and after compression.

    result = validate_catalog(catalog, norm_range=(0.5, 1.5), min_coverage={"text": 0.99},
                              on_row_error="quarantine", out_dir="reports/validation")
    raise_for_failure(result)          # ValidationError with the readable summary
    clean = result.clean               # the catalog without the quarantined rows

Files under ``out_dir``: ``<suite>_results.json`` (every expectation result), ``summary.txt``,
``data_docs/index.html`` (GX data docs) and, with quarantine, ``quarantine.csv`` (row, item_id,
reason) of the rows set aside.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmcompress.artifacts import atomic_path, write_bytes_atomic
from mmcompress.data.catalog import ItemCatalog, ModalitySpec
from mmcompress.errors import CatalogError
from validation.catalog_suite import (
    DEFAULT_ATTRIBUTE_RANGES,
    catalog_frame,
    catalog_suite,
    contract_for,
)
from validation.checkpoint import (
    ROW_COLUMN,
    SuiteRunner,
    failing_rows,
    failures_of,
    result_dict,
    write_results_json,
)
from validation.codes_suite import CodesContract, codes_frames, codes_suites
from validation.result import (
    ExpectationFailure,
    ValidationError,
    ValidationResult,
    make_summary,
    raise_for_failure,
)

__all__ = ["validate_catalog", "validate_codes", "raise_for_failure", "ValidationError", "ValidationResult"]
ROW_ERROR_MODES = ("fail", "quarantine")
QUARANTINE_FILE = "quarantine.csv"


def validate_catalog(catalog: ItemCatalog | pa.Table | str | Path, *,
                     norm_range: tuple[float, float] | Mapping[str, tuple[float, float]] | None = None,
                     min_coverage: Mapping[str, float] | None = None, on_row_error: str = "fail",
                     out_dir: str | Path | None = None,
                     schema: Mapping[str, ModalitySpec | int] | None = None,
                     required_columns: tuple[str, ...] = ("item_id",),
                     attribute_ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
                     data_docs: bool = True) -> ValidationResult:
    """Run the catalog suite on an ``ItemCatalog``, an Arrow table in the catalog layout, or a
    catalog directory / parquet file (a file is checked before it can become an ItemCatalog).

    ``norm_range``: a (lo, hi) pair for the inner-product modalities, or a dict per modality.
    ``min_coverage``: modality → minimum fraction of items having it. ``schema``: modality →
    dimension (default: the catalog's schema, or the most common vector length of a table).
    ``on_row_error="quarantine"`` writes failing rows with reasons to ``out_dir/quarantine.csv``,
    re-validates the rest and returns it as ``result.clean``; ``"fail"`` leaves the data as is.
    """
    if on_row_error not in ROW_ERROR_MODES:
        raise ValueError(f"on_row_error must be one of {ROW_ERROR_MODES}; found {on_row_error!r}")
    if on_row_error == "quarantine" and out_dir is None:
        raise ValueError("on_row_error='quarantine' needs out_dir to write the quarantined rows to")
    data, specs = _load(catalog)
    if schema is not None:
        specs = dict(schema)
    frame = catalog_frame(data)
    if not specs:
        specs = _infer_dims(frame)
    contract = contract_for(specs, norm_range=norm_range, min_coverage=min_coverage,
                            required_columns=tuple(required_columns),
                            attribute_ranges=dict(DEFAULT_ATTRIBUTE_RANGES if attribute_ranges is None
                                                  else attribute_ranges))
    out = Path(out_dir) if out_dir is not None else None
    runner = SuiteRunner(out / "data_docs" if (out is not None and data_docs) else None)
    suite_name = "item_catalog"
    vr = runner.validate(catalog_suite(contract, list(frame.columns)), frame,
                         index_columns=_index_columns(frame))
    failures = failures_of(vr)
    payload: dict[str, Any] = {"suite": suite_name, "n_rows": len(frame), "success": bool(vr.success),
                               "results": result_dict(vr)}
    success, n_quarantined, q_path, clean = bool(vr.success), 0, None, None
    final_failures = failures
    if on_row_error == "quarantine":
        bad = failing_rows(vr)
        keep = np.setdiff1d(np.arange(len(frame)), np.fromiter(bad, dtype=np.int64, count=len(bad)))
        q_path = out / QUARANTINE_FILE
        _write_quarantine(q_path, frame, bad)
        n_quarantined = len(bad)
        if len(keep) == 0:
            success = False
            final_failures = [f for f in failures if not f.row_level] + [ExpectationFailure(
                expectation="quarantine", column=None, description="every row failed a row-level check",
                row_level=False, unexpected_count=len(frame), element_count=len(frame))]
        else:
            clean_data = _take(data, keep)
            clean_frame = catalog_frame(clean_data)
            clean_frame[ROW_COLUMN] = keep
            vr_clean = runner.validate(
                catalog_suite(contract, list(clean_frame.columns), name=f"{suite_name}_clean"),
                clean_frame, index_columns=_index_columns(clean_frame))
            final_failures = failures_of(vr_clean)
            success = bool(vr_clean.success)
            payload.update(clean_results=result_dict(vr_clean))
            if success:
                clean = _as_catalog(clean_data, specs)
        payload.update(n_quarantined=n_quarantined, clean_success=success)
    elif success:
        clean = _as_catalog(data, specs)
    results_path = docs_path = None
    if out is not None:
        results_path = out / f"{suite_name}_results.json"
        docs_path = runner.docs_index if data_docs else None
    n_expectations = len(vr.results)
    summary = make_summary(suite_name, success, len(frame), final_failures, n_expectations=n_expectations,
                           n_quarantined=n_quarantined, quarantine_path=q_path,
                           results_path=results_path, docs_path=docs_path)
    if on_row_error == "quarantine" and n_quarantined:
        summary += "\n  quarantined rows failed:\n" + "\n".join(f"    - {f.line()}" for f in failures if f.row_level)
    result = ValidationResult(suite=suite_name, success=success, summary=summary, failures=final_failures,
                              n_rows=len(frame), n_quarantined=n_quarantined, quarantine_path=q_path,
                              results_path=results_path, docs_path=docs_path, clean=clean,
                              statistics=dict(vr.statistics))
    if out is not None:
        payload["summary"] = summary
        payload["failures"] = [f.__dict__ for f in final_failures]
        write_results_json(results_path, payload)
        write_bytes_atomic(out / "summary.txt", (summary + "\n").encode())
    return result


def validate_codes(codes: np.ndarray, *, entropy_floor: float, mse: float | None = None,
                   mse_max: float | None = None, index_bytes: int | None = None,
                   index_bytes_max: int | None = None, max_code: int | list[int] | None = None,
                   field_bits: list[int] | None = None, item_ids: np.ndarray | None = None,
                   out_dir: str | Path | None = None, data_docs: bool = True) -> ValidationResult:
    """Run the codes suites on uint8 codes (n, code_size).

    Checks: field values in ``[0, max_code]`` (default: the field's full range), code-usage
    entropy of every field >= ``entropy_floor`` bits, ``mse <= mse_max`` and ``index_bytes <=
    index_bytes_max`` (a bound given without its value fails as unreported). ``field_bits`` (the
    codec's ``field_bits``) splits packed codes into sub-quantizer fields; default one per byte.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.dtype != np.uint8:
        raise ValueError(f"codes must be a uint8 (n, code_size) array; found {codes.dtype} {codes.shape}")
    field_bits = [8] * codes.shape[1] if field_bits is None else [int(b) for b in field_bits]
    if sum(field_bits) != 8 * codes.shape[1]:
        raise ValueError(f"field_bits sum to {sum(field_bits)} bits; codes have {8 * codes.shape[1]}")
    contract = CodesContract(entropy_floor=entropy_floor, max_code=max_code, mse_max=mse_max,
                             index_bytes_max=index_bytes_max)
    frames = codes_frames(codes, item_ids=item_ids, mse=mse, index_bytes=index_bytes, field_bits=field_bits)
    suites = codes_suites(contract, field_bits)
    out = Path(out_dir) if out_dir is not None else None
    runner = SuiteRunner(out / "data_docs" if (out is not None and data_docs) else None)
    failures, payload, stats, success, n_exp = [], {}, {}, True, 0
    for name, frame in frames.items():
        id_col = "item_id" if "item_id" in frame.columns else ("column" if name == "code_usage" else None)
        index_columns = [c for c in (ROW_COLUMN, "item_id", "column") if c in frame.columns]
        vr = runner.validate(suites[name], frame, index_columns=index_columns)
        fs = failures_of(vr, id_column=id_col)
        if id_col == "column":
            for f in fs:
                f.example_values, f.example_ids = [f"{c} (entropy {e:.3f} bits)" for c, e in zip(
                    frame["column"], frame["entropy_bits"], strict=True) if e < entropy_floor][:10], []
        failures += fs
        success &= bool(vr.success)
        n_exp += len(vr.results)
        stats[name] = dict(vr.statistics)
        payload[name] = result_dict(vr)
    results_path = out / "codes_results.json" if out is not None else None
    docs_path = runner.docs_index if (out is not None and data_docs) else None
    summary = make_summary("codes", success, len(codes), failures, n_expectations=n_exp,
                           results_path=results_path, docs_path=docs_path)
    result = ValidationResult(suite="codes", success=success, summary=summary, failures=failures,
                              n_rows=len(codes), results_path=results_path, docs_path=docs_path,
                              statistics={**stats, "entropy_bits": frames["code_usage"]["entropy_bits"].tolist()})
    if out is not None:
        write_results_json(results_path, {"suite": "codes", "success": success, "summary": summary,
                                          "failures": [f.__dict__ for f in failures], "results": payload,
                                          "entropy_bits": result.statistics["entropy_bits"]})
        write_bytes_atomic(out / "codes_summary.txt", (summary + "\n").encode())
    return result


# ---- helpers -----------------------------------------------------------------------------

def _load(catalog: ItemCatalog | pa.Table | str | Path) -> tuple[ItemCatalog | pa.Table, dict]:
    if isinstance(catalog, ItemCatalog):
        return catalog, dict(catalog.schema)
    if isinstance(catalog, pa.Table):
        return catalog, {}
    path = Path(catalog)
    if path.is_dir():
        schema_path = path / "schema.json"
        specs = {}
        if schema_path.exists():
            try:
                specs = {k: ModalitySpec(**v) for k, v in json.loads(schema_path.read_text())["modalities"].items()}
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CatalogError(f"catalog schema is unreadable: {e}", file=str(schema_path)) from e
        path = path / "catalog.parquet"
    else:
        specs = {}
    if not path.exists():
        raise CatalogError("catalog file not found", file=str(path))
    return pq.read_table(path), specs


def _infer_dims(frame: pd.DataFrame) -> dict[str, int]:
    dims = {}
    for c in frame.columns:
        if c.endswith("__dim"):
            lengths = frame[c][frame[c] >= 0]
            dims[c[: -len("__dim")]] = int(lengths.mode().iloc[0]) if len(lengths) else 0
    return dims


def _index_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in (ROW_COLUMN, "item_id") if c in frame.columns]


def _take(data: ItemCatalog | pa.Table, rows: np.ndarray) -> ItemCatalog | pa.Table:
    return data.subset(rows) if isinstance(data, ItemCatalog) else data.take(pa.array(rows, type=pa.int64()))


def _as_catalog(data: ItemCatalog | pa.Table, specs: Mapping[str, Any]) -> ItemCatalog | None:
    if isinstance(data, ItemCatalog):
        return data
    full = {k: v for k, v in specs.items() if isinstance(v, ModalitySpec)}
    dims = {k: ModalitySpec(name=k, dim=int(v)) for k, v in specs.items() if not isinstance(v, ModalitySpec)}
    return ItemCatalog.from_arrow(data, {**dims, **full})


def _write_quarantine(path: Path, frame: pd.DataFrame, bad: Mapping[int, list[str]]) -> None:
    rows = sorted(bad)
    table = pd.DataFrame({
        ROW_COLUMN: rows,
        "item_id": frame["item_id"].to_numpy()[rows] if rows else [],
        "reason": ["; ".join(bad[r]) for r in rows],
    })
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
