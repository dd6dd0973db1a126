"""Expectations for codec outputs: code values, code usage per sub-quantizer, error and size bounds.

Three derived frames: ``codes`` (one row per item, one column ``c<j>`` per code field — a byte,
or a sub-quantizer's index when the codec packs fields of other widths, see ``field_bits``),
``code_usage`` (one row per field: entropy of its values in bits, distinct values, share of the
most common value) and ``code_summary`` (one row: reconstruction MSE and index bytes).
A collapsed codebook shows as a field whose entropy is near zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import great_expectations as gx
import numpy as np
import pandas as pd

from mmcompress.drift.statistics import code_entropy, unpack_fields
from validation.checkpoint import ROW_COLUMN

E = gx.expectations


@dataclass
class CodesContract:
    """Bounds on a code array; ``None`` leaves a bound out (``max_code``: the field's full range)."""

    entropy_floor: float
    max_code: int | list[int] | None = None
    mse_max: float | None = None
    index_bytes_max: int | None = None


def codes_frames(codes: np.ndarray, *, item_ids: np.ndarray | None = None, mse: float | None = None,
                 index_bytes: int | None = None, field_bits: list[int] | None = None) -> dict[str, pd.DataFrame]:
    """The three frames the codes suites run on (``field_bits`` splits packed uint8 codes)."""
    n_bytes = np.asarray(codes).shape[1]
    codes = unpack_fields(np.asarray(codes), field_bits)
    n, m = codes.shape
    per_item = pd.DataFrame(codes, columns=[f"c{j}" for j in range(m)])
    per_item.insert(0, ROW_COLUMN, np.arange(n))
    if item_ids is not None:
        per_item.insert(1, "item_id", np.asarray(item_ids))
    top_share = [np.unique(codes[:, j], return_counts=True)[1].max() / n if n else 0.0 for j in range(m)]
    usage = pd.DataFrame({
        "column": [f"c{j}" for j in range(m)],
        "entropy_bits": code_entropy(codes) if n else np.zeros(m),
        "n_distinct": [len(np.unique(codes[:, j])) for j in range(m)],
        "top_value_share": top_share,
    })
    summary = pd.DataFrame({
        "n_items": [n], "code_size": [n_bytes],
        "mse": [np.nan if mse is None else float(mse)],
        "index_bytes": [np.nan if index_bytes is None else float(index_bytes)],
    })
    return {"codes": per_item, "code_usage": usage, "code_summary": summary}


def codes_suites(contract: CodesContract, field_bits: list[int]) -> dict[str, gx.ExpectationSuite]:
    """One suite per frame of :func:`codes_frames`; ``field_bits`` are the widths of the fields."""
    values = gx.ExpectationSuite(name="codes")
    n_fields = len(field_bits)
    if contract.max_code is None:
        maxes = [(1 << int(w)) - 1 for w in field_bits]
    elif isinstance(contract.max_code, list):
        maxes = list(contract.max_code)
    else:
        maxes = [contract.max_code] * n_fields
    if len(maxes) != n_fields:
        raise ValueError(f"max_code has {len(maxes)} entries for {n_fields} code fields")
    for j, hi in enumerate(maxes):
        values.add_expectation(E.ExpectColumnValuesToBeBetween(
            column=f"c{j}", min_value=0, max_value=int(hi),
            meta={"description": f"code value out of range for field {j}", "row_level": True}))
        values.add_expectation(E.ExpectColumnValuesToNotBeNull(
            column=f"c{j}", meta={"description": "missing code value", "row_level": True}))
    usage = gx.ExpectationSuite(name="code_usage")
    usage.add_expectation(E.ExpectTableRowCountToBeBetween(
        min_value=n_fields, max_value=n_fields,
        meta={"description": "one usage row per code field", "row_level": False}))
    usage.add_expectation(E.ExpectColumnValuesToBeBetween(
        column="entropy_bits", min_value=float(contract.entropy_floor),
        meta={"description": "code-usage entropy below the floor (collapsed codebook)", "row_level": False}))
    summary = gx.ExpectationSuite(name="code_summary")
    summary.add_expectation(E.ExpectColumnValuesToBeBetween(
        column="n_items", min_value=1, meta={"description": "codes are not empty", "row_level": False}))
    if contract.mse_max is not None:
        summary.add_expectation(E.ExpectColumnValuesToNotBeNull(
            column="mse", meta={"description": "reconstruction MSE is reported", "row_level": False}))
        summary.add_expectation(E.ExpectColumnValuesToBeBetween(
            column="mse", min_value=0.0, max_value=float(contract.mse_max),
            meta={"description": "reconstruction error above its bound", "row_level": False}))
    if contract.index_bytes_max is not None:
        summary.add_expectation(E.ExpectColumnValuesToNotBeNull(
            column="index_bytes", meta={"description": "index size is reported", "row_level": False}))
        summary.add_expectation(E.ExpectColumnValuesToBeBetween(
            column="index_bytes", min_value=0, max_value=float(contract.index_bytes_max),
            meta={"description": "index size above its bound", "row_level": False}))
    return {"codes": values, "code_usage": usage, "code_summary": summary}
