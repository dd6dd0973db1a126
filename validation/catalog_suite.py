"""Expectations for the item catalog, on scalar columns derived from it.

Great Expectations does not understand vector columns, so each modality ``m`` becomes scalar
columns per item: ``m__present`` (0/1), ``m__dim`` (vector length, -1 for a null vector),
``m__finite`` (all values finite) and ``m__norm`` (L2 norm of present, finite rows; NaN
otherwise, so range checks skip absent rows). Row-level expectations carry
``meta.row_level = True``: their failing rows can be quarantined.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mmcompress.data.catalog import EMB_PREFIX, MASK_PREFIX, ItemCatalog, ModalitySpec
from validation.checkpoint import ROW_COLUMN

SUITE_NAME = "item_catalog"
DEFAULT_ATTRIBUTE_RANGES: dict[str, tuple[float | None, float | None]] = {
    "year": (1870, 2030),
    "mean_rating": (0.5, 5.0),
    "n_ratings": (0, None),
}
E = gx.expectations


@dataclass
class CatalogContract:
    """What a valid catalog looks like.

    ``modalities`` maps each expected modality to its dimension. ``norm_ranges`` gives the L2
    norm range of present rows per modality (modalities not listed are not range-checked).
    ``min_coverage`` is the minimum fraction of items having each modality. ``attribute_ranges``
    apply to attribute columns when present (NaN counts as missing and is allowed).
    """

    modalities: dict[str, int]
    norm_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    min_coverage: dict[str, float] = field(default_factory=dict)
    required_columns: tuple[str, ...] = ("item_id",)
    attribute_ranges: dict[str, tuple[float | None, float | None]] = field(
        default_factory=lambda: dict(DEFAULT_ATTRIBUTE_RANGES))


def catalog_frame(data: ItemCatalog | pa.Table, modalities: Mapping[str, int] | None = None) -> pd.DataFrame:
    """One row per item: ``row``, ``item_id``, scalar attributes and the derived modality columns."""
    if isinstance(data, ItemCatalog):
        frame = pd.DataFrame({ROW_COLUMN: np.arange(len(data)), "item_id": data.item_ids})
        attrs = data.attributes.drop(columns=["item_id"], errors="ignore")
        derived = {}
        for name, X in data.modalities.items():
            derived.update(_modality_columns(name, X, data.masks[name]))
        return pd.concat([frame, _scalar_columns(attrs), pd.DataFrame(derived)], axis=1)
    table = data
    n = table.num_rows
    frame = pd.DataFrame({ROW_COLUMN: np.arange(n)})
    frame["item_id"] = (table.column("item_id").to_pandas() if "item_id" in table.column_names
                        else pd.Series([None] * n, dtype="Int64"))
    attr_names = [c for c in table.column_names
                  if c != "item_id" and not c.startswith((EMB_PREFIX, MASK_PREFIX))]
    attrs = table.select(attr_names).to_pandas() if attr_names else pd.DataFrame(index=range(n))
    derived = {}
    for c in table.column_names:
        if not c.startswith(EMB_PREFIX):
            continue
        name = c[len(EMB_PREFIX):]
        mask_col = MASK_PREFIX + name
        mask = (table.column(mask_col).to_numpy(zero_copy_only=False).astype(bool)
                if mask_col in table.column_names else np.ones(n, dtype=bool))
        derived.update(_list_modality_columns(name, table.column(c), mask))
    return pd.concat([frame, _scalar_columns(attrs), pd.DataFrame(derived, index=range(n))], axis=1)


def _modality_columns(name: str, X: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    finite = np.isfinite(X).all(1)
    norm = np.linalg.norm(np.where(finite[:, None], X, 0.0), axis=1)
    return {f"{name}__present": mask.astype(np.int64), f"{name}__dim": np.full(len(X), X.shape[1]),
            f"{name}__finite": finite, f"{name}__norm": np.where(mask & finite, norm, np.nan)}


def _list_modality_columns(name: str, col: pa.ChunkedArray, mask: np.ndarray) -> dict[str, np.ndarray]:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
            or pa.types.is_fixed_size_list(col.type)):
        bad = np.zeros(n, dtype=bool)
        return {f"{name}__present": mask.astype(np.int64), f"{name}__dim": np.full(n, -1),
                f"{name}__finite": bad, f"{name}__norm": np.full(n, np.nan)}
    null = col.is_null().to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.list_value_length(col), -1).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_fixed_size_list(col.type):
        lengths = np.where(null, -1, col.type.list_size)
    values = pc.list_flatten(col).cast(pa.float64()).to_numpy(zero_copy_only=False)
    owner = np.repeat(np.arange(n), np.maximum(lengths, 0))
    nonfinite = np.bincount(owner, weights=~np.isfinite(values), minlength=n) > 0
    sq = np.bincount(owner, weights=np.where(np.isfinite(values), values, 0.0) ** 2, minlength=n)
    finite = ~nonfinite & ~null
    return {f"{name}__present": mask.astype(np.int64), f"{name}__dim": lengths,
            f"{name}__finite": finite, f"{name}__norm": np.where(mask & finite, np.sqrt(sq), np.nan)}


def _scalar_columns(attrs: pd.DataFrame) -> pd.DataFrame:
    """Attribute columns GX can check: numbers, booleans, strings (lists and objects left out)."""
    keep = []
    for c in attrs.columns:
        s = attrs[c]
        if s.dtype.kind in "biufM" or pd.api.types.is_string_dtype(s.dtype) or isinstance(
                s.dtype, pd.CategoricalDtype):
            if s.dtype == object and s.map(lambda v: isinstance(v, (list, tuple, dict, np.ndarray))).any():
                continue
            keep.append(c)
    return attrs[keep].reset_index(drop=True)


def catalog_suite(contract: CatalogContract, columns: list[str], name: str = SUITE_NAME) -> gx.ExpectationSuite:
    """The catalog suite for a frame with ``columns`` (checks on absent columns are replaced by
    their existence check, which fails)."""
    suite = gx.ExpectationSuite(name=name)
    present = set(columns)
    add = suite.add_expectation

    def meta(description: str, row_level: bool) -> dict[str, Any]:
        return {"description": description, "row_level": row_level}

    add(E.ExpectTableRowCountToBeBetween(min_value=1, meta=meta("catalog is not empty", False)))
    for c in contract.required_columns:
        add(E.ExpectColumnToExist(column=c, meta=meta("required column", False)))
    if "item_id" in present:
        add(E.ExpectColumnValuesToNotBeNull(column="item_id", meta=meta("item id missing", True)))
        add(E.ExpectColumnValuesToBeUnique(column="item_id", meta=meta("duplicate item id", True)))
    expected_modalities = sorted(set(contract.modalities) | set(contract.min_coverage))
    for m in expected_modalities:
        cols = {k: f"{m}__{k}" for k in ("present", "dim", "finite", "norm")}
        if cols["present"] not in present:
            add(E.ExpectColumnToExist(column=cols["present"], meta=meta(f"modality {m!r} present", False)))
            continue
        add(E.ExpectColumnValuesToBeInSet(column=cols["finite"], value_set=[True],
                                          meta=meta(f"non-finite (NaN/inf) vector in {m!r}", True)))
        if m in contract.modalities:
            add(E.ExpectColumnValuesToBeInSet(column=cols["dim"], value_set=[int(contract.modalities[m])],
                                              meta=meta(f"vector dimension of {m!r} differs from the schema",
                                                        True)))
        if m in contract.norm_ranges:
            lo, hi = contract.norm_ranges[m]
            add(E.ExpectColumnValuesToBeBetween(column=cols["norm"], min_value=float(lo), max_value=float(hi),
                                                meta=meta(f"L2 norm of {m!r} out of range", True)))
        if m in contract.min_coverage:
            add(E.ExpectColumnMeanToBeBetween(column=cols["present"], min_value=float(contract.min_coverage[m]),
                                              max_value=1.0, meta=meta(f"coverage of modality {m!r}", False)))
    for c, (lo, hi) in contract.attribute_ranges.items():
        if c in present:
            add(E.ExpectColumnValuesToBeBetween(
                column=c, min_value=None if lo is None else float(lo),
                max_value=None if hi is None else float(hi), meta=meta(f"attribute {c!r} out of range", True)))
    return suite


def contract_for(specs: Mapping[str, ModalitySpec | int], *, norm_range: Any = None,
                 min_coverage: Mapping[str, float] | None = None, **kwargs: Any) -> CatalogContract:
    """A contract from modality specs (or dims): ``norm_range`` a (lo, hi) pair applies to the
    inner-product modalities (whose rows are L2-normalised), a dict sets it per modality."""
    dims = {k: (v.dim if isinstance(v, ModalitySpec) else int(v)) for k, v in specs.items()}
    if norm_range is None:
        norms = {}
    elif isinstance(norm_range, Mapping):
        norms = {k: (float(v[0]), float(v[1])) for k, v in norm_range.items()}
    else:
        lo, hi = norm_range
        norms = {k: (float(lo), float(hi)) for k, v in specs.items()
                 if not isinstance(v, ModalitySpec) or v.metric == "ip"}
    return CatalogContract(modalities=dims, norm_ranges=norms, min_coverage=dict(min_coverage or {}),
                           **kwargs)
