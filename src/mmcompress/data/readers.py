"""Bring a user's own catalog or precomputed embeddings into an :class:`ItemCatalog`.

- :func:`read_catalog`: a catalog directory (``catalog.parquet`` + ``schema.json``) or a
  ``.parquet`` file, either in the catalog layout (``item_id``, ``emb__<name>`` list columns,
  optional ``has__<name>``) or with plain list columns named by modality. Text columns can be
  embedded into a ``text`` modality.
- :func:`read_precomputed_modality`: one modality's vectors keyed by item id, from Parquet,
  ``.npy`` (+ an ids ``.npy``) or ``.npz`` (``ids`` + ``vectors``).
- :func:`attach_modality`: align such vectors to a catalog by id; items without a vector
  are masked.

Every refusal is a :class:`CatalogError` naming the file, column, row and expected vs found.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmcompress.data.catalog import (
    EMB_PREFIX,
    MASK_PREFIX,
    ItemCatalog,
    ModalitySpec,
    item_id_array,
    list_column_to_matrix,
)
from mmcompress.encoders.text import DIM as TEXT_DIM
from mmcompress.encoders.text import TextEncoder, TextEncoderConfig
from mmcompress.errors import CatalogError

log = logging.getLogger(__name__)


@dataclass
class PrecomputedModality:
    """Vectors of one modality keyed by item id; ``present`` False where a row had no vector."""

    name: str
    item_ids: np.ndarray
    vectors: np.ndarray
    present: np.ndarray
    source: str = ""

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


# ---- shared checks ------------------------------------------------------------------------------
def _read_parquet(path: Path) -> pa.Table:
    if not path.exists():
        raise CatalogError("file not found", file=str(path))
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CatalogError(f"unreadable Parquet file: {e}", file=str(path)) from e
    if table.num_rows == 0:
        raise CatalogError("empty catalog", file=str(path), expected="at least 1 row", found=0)
    return table


def _is_vector_column(t: pa.DataType) -> bool:
    return ((pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))
            and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)))


def vector_column(table: pa.Table, column: str, *, file: str | None,
                  dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) float32 from a list column; null rows become zero rows with ``present`` False."""
    if column not in table.column_names:
        raise CatalogError("missing column", file=file, column=column,
                           expected=column, found=table.column_names)
    col = table.column(column).combine_chunks()
    t = col.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise CatalogError("column is not a list of floats", file=file, column=column,
                           expected="list<float32>", found=str(t))
    present = ~col.is_null().to_numpy(zero_copy_only=False).astype(bool)
    rows = np.flatnonzero(present)
    if len(rows) == 0:
        raise CatalogError("no vectors in column (all null)", file=file, column=column,
                           expected="at least one vector", found="all null")
    sub = col if len(rows) == len(col) else pc.filter(col, pa.array(present))
    try:
        Xs = list_column_to_matrix(sub, file=file, column=column)
    except CatalogError as e:
        row = rows[e.row] if isinstance(e.row, int | np.integer) else e.row
        raise CatalogError(str(e).split(";")[0], file=file, column=column, row=row,
                           expected=e.expected, found=e.found) from e
    if dim is not None and Xs.shape[1] != dim:
        raise CatalogError("wrong vector dimension", file=file, column=column, row=int(rows[0]),
                           expected=dim, found=Xs.shape[1])
    X = np.zeros((len(col), Xs.shape[1]), dtype=np.float32)
    X[rows] = Xs
    return X, present


def _check_ids(ids: np.ndarray, *, file: str | None, column: str) -> None:
    if len(ids) == 0:
        raise CatalogError("empty catalog", file=file, column=column, expected="at least 1 id", found=0)
    _, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup_value = ids[first[counts > 1][0]]
        rows = np.flatnonzero(ids == dup_value)
        raise CatalogError("duplicate item id", file=file, column=column, row=int(rows[1]),
                           expected="unique ids", found=f"{int(dup_value)} (also at row {int(rows[0])})")


# ---- whole catalogs ------------------------------------------------------------------------------
def read_catalog(
    path: str | Path,
    *,
    id_column: str = "item_id",
    modalities: Sequence[str] | None = None,
    dims: dict[str, int] | None = None,
    text_columns: Sequence[str] | None = None,
    text: TextEncoderConfig | dict[str, Any] | None = None,
    progress: bool = True,
) -> ItemCatalog:
    """Read a user's catalog.

    ``path`` is a saved catalog directory or a ``.parquet`` file. In the catalog layout every
    ``emb__<name>`` column is a modality; otherwise ``modalities`` names the list columns to
    use (default: every numeric list column). A null vector marks the item as lacking that
    modality. ``dims`` pins expected dimensions. ``text_columns`` are joined per item and
    embedded as the ``text`` modality with the ``text`` encoder config.
    """
    path = Path(path)
    if path.is_dir():
        if (path / "schema.json").exists():
            catalog = ItemCatalog.load(path)
            _check_dims(catalog, dims, file=str(path))
            return catalog
        raise CatalogError("not a catalog directory", file=str(path),
                           expected="schema.json + catalog.parquet", found=sorted(p.name for p in path.iterdir())[:10])
    file = str(path)
    table = _read_parquet(path)
    if id_column not in table.column_names:
        raise CatalogError("missing column", file=file, column=id_column,
                           expected=id_column, found=table.column_names)
    ids = item_id_array(table.column(id_column), file=file, column=id_column)
    _check_ids(ids, file=file, column=id_column)
    names = table.column_names
    layout = any(c.startswith(EMB_PREFIX) for c in names)
    if layout:
        chosen = [c[len(EMB_PREFIX):] for c in names if c.startswith(EMB_PREFIX)]
        if modalities is not None:
            missing = [m for m in modalities if m not in chosen]
            if missing:
                raise CatalogError("modality column missing", file=file, column=EMB_PREFIX + missing[0],
                                   expected=[EMB_PREFIX + m for m in modalities],
                                   found=[c for c in names if c.startswith(EMB_PREFIX)])
            chosen = list(modalities)
        columns = {m: EMB_PREFIX + m for m in chosen}
    else:
        if modalities is None:
            chosen = [c for c in names if c != id_column and _is_vector_column(table.schema.field(c).type)]
        else:
            chosen = list(modalities)
        columns = {m: m for m in chosen}
    mods: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    schema: dict[str, ModalitySpec] = {}
    for name, col in columns.items():
        X, present = vector_column(table, col, file=file, dim=(dims or {}).get(name))
        mask_col = MASK_PREFIX + name
        if mask_col in names:
            has = table.column(mask_col).to_numpy(zero_copy_only=False)
            if has.dtype != bool:
                raise CatalogError("mask column is not boolean", file=file, column=mask_col,
                                   expected="bool", found=str(table.schema.field(mask_col).type))
            present = present & has
        X[~present] = 0.0
        mods[name], masks[name] = X, present
        schema[name] = ModalitySpec(name=name, dim=X.shape[1], source=f"{file}:{col}")
    skip = set(columns.values()) | {MASK_PREFIX + m for m in columns} | {id_column}
    attr_cols = [c for c in names if c not in skip and not c.startswith(EMB_PREFIX)
                 and not c.startswith(MASK_PREFIX)]
    attrs = table.select(attr_cols).to_pandas() if attr_cols else None
    if attrs is not None and "item_id" in attrs.columns and id_column != "item_id":
        attrs = attrs.rename(columns={"item_id": "item_id_attr"})
    if text_columns:
        if "text" in mods:
            raise CatalogError("catalog already has a text modality; drop text_columns or the column",
                               file=file, column="text")
        missing = [c for c in text_columns if c not in names]
        if missing:
            raise CatalogError("missing text column", file=file, column=missing[0],
                               expected=list(text_columns), found=names)
        texts = _join_text_columns(table, text_columns)
        cfg = text if isinstance(text, TextEncoderConfig) else TextEncoderConfig(**(text or {}))
        enc = TextEncoder(cfg, progress=progress)
        mods["text"] = enc.encode(texts)
        masks["text"] = np.array([bool(t) for t in texts])
        mods["text"][~masks["text"]] = 0.0
        schema["text"] = ModalitySpec("text", TEXT_DIM, source=f"{enc.model_id}; columns {list(text_columns)}")
    if not mods:
        raise CatalogError("no modality columns found", file=file,
                           expected="emb__<name> or list<float> columns", found=names)
    try:
        return ItemCatalog(ids, mods, masks, attrs, schema)
    except CatalogError as e:
        if e.file is None:
            raise CatalogError(str(e), file=file) from e
        raise


def _join_text_columns(table: pa.Table, columns: Sequence[str]) -> list[str]:
    parts = []
    for c in columns:
        values = table.column(c).to_pylist()
        parts.append(["" if v is None else (" ".join(map(str, v)) if isinstance(v, list) else str(v)).strip()
                      for v in values])
    return [". ".join(p for p in row if p) for row in zip(*parts, strict=True)]


def _check_dims(catalog: ItemCatalog, dims: dict[str, int] | None, *, file: str) -> None:
    for name, d in (dims or {}).items():
        if name not in catalog.modalities:
            raise CatalogError("modality missing", file=file, column=EMB_PREFIX + name,
                               expected=name, found=catalog.modality_names)
        if catalog.schema[name].dim != d:
            raise CatalogError("wrong vector dimension", file=file, column=EMB_PREFIX + name,
                               expected=d, found=catalog.schema[name].dim)


# ---- one precomputed modality -------------------------------------------------------------------
def read_precomputed_modality(
    path: str | Path,
    name: str,
    *,
    id_column: str = "item_id",
    vector_column: str | None = None,
    ids_path: str | Path | None = None,
    dim: int | None = None,
) -> PrecomputedModality:
    """Read one modality's vectors keyed by item id.

    Parquet: ``id_column`` + a list column (``vector_column``, else ``name``, ``emb__<name>``
    or the only list column). ``.npy``: an (n, d) matrix with ids in ``ids_path`` (default
    ``<stem>.ids.npy`` or ``<stem>_ids.npy`` beside it). ``.npz``: arrays ``ids`` and ``vectors``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _precomputed_parquet(path, name, id_column, vector_column, dim)
    if suffix in (".npy", ".npz"):
        return _precomputed_numpy(path, name, ids_path, dim)
    raise CatalogError("unsupported file type", file=str(path),
                       expected=".parquet, .npy or .npz", found=path.suffix or "(none)")


def _precomputed_parquet(path: Path, name: str, id_column: str, column: str | None,
                         dim: int | None) -> PrecomputedModality:
    file = str(path)
    table = _read_parquet(path)
    if id_column not in table.column_names:
        raise CatalogError("missing column", file=file, column=id_column,
                           expected=id_column, found=table.column_names)
    if column is None:
        candidates = [c for c in (name, EMB_PREFIX + name) if c in table.column_names]
        if not candidates:
            lists = [c for c in table.column_names
                     if c != id_column and _is_vector_column(table.schema.field(c).type)]
            if len(lists) != 1:
                raise CatalogError("cannot tell which column holds the vectors", file=file,
                                   column=name, expected=f"{name!r}, {EMB_PREFIX + name!r} or one list column",
                                   found=table.column_names)
            candidates = lists
        column = candidates[0]
    ids = item_id_array(table.column(id_column), file=file, column=id_column)
    _check_ids(ids, file=file, column=id_column)
    X, present = vector_column(table, column, file=file, dim=dim)
    return PrecomputedModality(name, ids, X, present, source=f"{file}:{column}")


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.exists():
        raise CatalogError(f"{what} file not found", file=str(path))
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CatalogError(f"unreadable {what} file: {e}", file=str(path)) from e


def _precomputed_numpy(path: Path, name: str, ids_path: str | Path | None,
                       dim: int | None) -> PrecomputedModality:
    file = str(path)
    if path.suffix.lower() == ".npz":
        z = _load_npy(path, "vectors")
        with z:
            missing = [k for k in ("ids", "vectors") if k not in z.files]
            if missing:
                raise CatalogError("missing array", file=file, column=missing[0],
                                   expected=["ids", "vectors"], found=z.files)
            ids_raw, X = z["ids"], z["vectors"]
        ids_file = file
    else:
        X = _load_npy(path, "vectors")
        if ids_path is None:
            options = [path.with_name(path.stem + ".ids.npy"), path.with_name(path.stem + "_ids.npy")]
            found = [p for p in options if p.exists()]
            if not found:
                raise CatalogError("ids file not found", file=file,
                                   expected=f"{options[0].name} or {options[1].name} (or ids_path)")
            ids_path = found[0]
        ids_raw = _load_npy(Path(ids_path), "ids")
        ids_file = str(ids_path)
    if X.ndim != 2:
        raise CatalogError("vectors must be a 2-D matrix", file=file, expected="(n, d)", found=X.shape)
    if X.shape[0] == 0:
        raise CatalogError("empty catalog", file=file, expected="at least 1 vector", found=0)
    if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
        raise CatalogError("vectors are not numeric", file=file, expected="float32", found=str(X.dtype))
    if dim is not None and X.shape[1] != dim:
        raise CatalogError("wrong vector dimension", file=file, expected=dim, found=X.shape[1])
    if ids_raw.ndim != 1 or len(ids_raw) != X.shape[0]:
        raise CatalogError("ids do not match the vectors", file=ids_file, column="ids",
                           expected=f"({X.shape[0]},)", found=ids_raw.shape)
    if not np.issubdtype(ids_raw.dtype, np.integer):
        raise CatalogError("ids are not integers", file=ids_file, column="ids",
                           expected="int64", found=str(ids_raw.dtype))
    ids = ids_raw.astype(np.int64)
    _check_ids(ids, file=ids_file, column="ids")
    with np.errstate(over="ignore"):
        X32 = X.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(X32).all(axis=1))
    if len(bad):
        raise CatalogError("non-finite values (NaN/inf)", file=file, row=int(bad[0]),
                           expected="finite floats", found=f"{len(bad)} bad rows")
    return PrecomputedModality(name, ids, X32, np.ones(len(ids), dtype=bool), source=file)


def attach_modality(
    catalog: ItemCatalog,
    modality: PrecomputedModality,
    *,
    metric: str = "ip",
    unknown_ids: str = "ignore",
) -> ItemCatalog:
    """A copy of ``catalog`` with ``modality`` aligned by item id.

    Catalog items without a vector get zeros and mask False. Ids unknown to the catalog are
    ignored (``unknown_ids="ignore"``) or refused (``"error"``). Replacing an existing modality
    requires the same dimension. No overlap at all is refused (usually a wrong id column).
    """
    if unknown_ids not in ("ignore", "error"):
        raise ValueError(f"unknown_ids must be 'ignore' or 'error', found {unknown_ids!r}")
    name = modality.name
    pos = catalog.row_of()
    rows = np.array([pos.get(int(i), -1) for i in modality.item_ids], dtype=np.int64)
    unknown = np.flatnonzero(rows < 0)
    if len(unknown) and unknown_ids == "error":
        raise CatalogError("item id not in the catalog", file=modality.source or None, column="item_id",
                           row=int(unknown[0]), expected="an id of the catalog",
                           found=int(modality.item_ids[unknown[0]]))
    ok = (rows >= 0) & modality.present
    if not ok.any():
        raise CatalogError("no item of the modality matches the catalog ids", file=modality.source or None,
                           column="item_id", expected=f"ids like {catalog.item_ids[:3].tolist()}",
                           found=f"ids like {modality.item_ids[:3].tolist()}")
    old = catalog.schema.get(name)
    if old is not None and old.dim != modality.dim:
        raise CatalogError(f"modality {name!r} already in the catalog with another dimension",
                           file=modality.source or None, column=name, expected=old.dim, found=modality.dim)
    X = np.zeros((len(catalog), modality.dim), dtype=np.float32)
    mask = np.zeros(len(catalog), dtype=bool)
    X[rows[ok]] = modality.vectors[ok]
    mask[rows[ok]] = True
    if len(unknown):
        log.info("attach_modality(%s): %d ids not in the catalog ignored", name, len(unknown))
    spec = ModalitySpec(name=name, dim=modality.dim, metric=metric, source=modality.source)
    return catalog.with_modality(spec, X, mask)
