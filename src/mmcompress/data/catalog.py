"""`ItemCatalog`: item ids, one float32 matrix per modality with a presence mask, attributes.

On disk: ``catalog.parquet`` (one row per item: ``item_id``, attribute columns, and per modality
a fixed-size-list column ``emb__<name>`` plus a bool column ``has__<name>``) and ``schema.json``
(modality → dim, dtype, metric, source; format version; parquet checksum).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmcompress.artifacts import atomic_dir, recover_replaced_dir, sha256_file
from mmcompress.errors import CatalogError

FORMAT_VERSION = 1
EMB_PREFIX = "emb__"
MASK_PREFIX = "has__"


@dataclass(frozen=True)
class ModalitySpec:
    """What one modality's vectors are: dimension, dtype, similarity metric and provenance."""

    name: str
    dim: int
    dtype: str = "float32"
    metric: str = "ip"
    source: str = ""


@dataclass
class ItemCatalog:
    """Items with per-modality embeddings. Rows of a missing modality are zeros, masked False.

    ``attributes`` always starts with an ``item_id`` column equal to ``item_ids``.
    """

    item_ids: np.ndarray
    modalities: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    attributes: pd.DataFrame = field(default_factory=pd.DataFrame)
    schema: dict[str, ModalitySpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.item_ids = np.asarray(self.item_ids, dtype=np.int64)
        n = len(self.item_ids)
        if n == 0:
            raise CatalogError("empty catalog", expected="at least 1 item", found=0)
        dup = pd.Index(self.item_ids).duplicated()
        if dup.any():
            row = int(np.flatnonzero(dup)[0])
            raise CatalogError("duplicate item id", column="item_id", row=row,
                               expected="unique ids", found=int(self.item_ids[row]))
        for name, X in list(self.modalities.items()):
            X = np.asarray(X)
            if X.ndim != 2 or X.shape[0] != n:
                raise CatalogError(f"modality {name!r} has the wrong shape", column=name,
                                   expected=f"({n}, d)", found=X.shape)
            if not np.issubdtype(X.dtype, np.floating):
                raise CatalogError(f"modality {name!r} is not floating point", column=name,
                                   expected="float32", found=str(X.dtype))
            X = np.ascontiguousarray(X, dtype=np.float32)
            bad = ~np.isfinite(X).all(axis=1)
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise CatalogError(f"non-finite values (NaN/inf) in modality {name!r}", column=name,
                                   row=f"{row} (item_id={int(self.item_ids[row])})",
                                   expected="finite floats", found=f"{int(bad.sum())} bad rows")
            self.modalities[name] = X
            mask = self.masks.get(name)
            mask = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
            if mask.shape != (n,):
                raise CatalogError(f"mask of {name!r} has the wrong shape", column=MASK_PREFIX + name,
                                   expected=(n,), found=mask.shape)
            self.masks[name] = mask
            spec = self.schema.get(name)
            if spec is None:
                self.schema[name] = ModalitySpec(name=name, dim=X.shape[1])
            elif spec.dim != X.shape[1]:
                raise CatalogError(f"modality {name!r} dimension differs from its schema", column=name,
                                   expected=spec.dim, found=X.shape[1])
        if self.attributes is None or len(self.attributes.columns) == 0:
            self.attributes = pd.DataFrame(index=range(n))
        if len(self.attributes) != n:
            raise CatalogError("attributes table has the wrong number of rows",
                               expected=n, found=len(self.attributes))
        attrs = self.attributes.reset_index(drop=True)
        if "item_id" in attrs.columns:
            given = pd.to_numeric(attrs["item_id"], errors="coerce").to_numpy(np.float64)
            differ = np.flatnonzero(given != self.item_ids)
            if len(differ):
                r = int(differ[0])
                raise CatalogError("attributes item_id differs from the catalog ids", column="item_id",
                                   row=r, expected=int(self.item_ids[r]), found=attrs["item_id"].iloc[r])
            attrs = attrs.drop(columns=["item_id"])
        attrs.insert(0, "item_id", self.item_ids)
        self.attributes = attrs

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def modality_names(self) -> list[str]:
        return list(self.modalities)

    def row_of(self) -> dict[int, int]:
        """Map item id → row index."""
        return {int(i): r for r, i in enumerate(self.item_ids)}

    def subset(self, rows: np.ndarray | list[int]) -> ItemCatalog:
        """A new catalog holding only ``rows`` (indices or a boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return ItemCatalog(
            item_ids=self.item_ids[rows],
            modalities={k: v[rows] for k, v in self.modalities.items()},
            masks={k: v[rows] for k, v in self.masks.items()},
            attributes=self.attributes.iloc[rows].reset_index(drop=True),
            schema=dict(self.schema),
        )

    def with_modality(self, spec: ModalitySpec, X: np.ndarray, mask: np.ndarray | None = None) -> ItemCatalog:
        """A copy with one more (or a replaced) modality."""
        mods = dict(self.modalities)
        masks = dict(self.masks)
        schema = dict(self.schema)
        mods[spec.name] = X
        if mask is not None:
            masks[spec.name] = mask
        else:
            masks.pop(spec.name, None)
        schema[spec.name] = spec
        return ItemCatalog(self.item_ids, mods, masks, self.attributes.copy(), schema)

    # ---- persistence -------------------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        cols: dict[str, pa.Array] = {"item_id": pa.array(self.item_ids, type=pa.int64())}
        attrs = self.attributes.drop(columns=["item_id"], errors="ignore")
        for c in attrs.columns:
            try:
                cols[c] = pa.Array.from_pandas(attrs[c])
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise CatalogError(f"attribute column cannot be stored: {e}", column=c) from e
        for name, X in self.modalities.items():
            d = X.shape[1]
            flat = pa.array(X.reshape(-1), type=pa.float32())
            cols[EMB_PREFIX + name] = pa.FixedSizeListArray.from_arrays(flat, d)
            cols[MASK_PREFIX + name] = pa.array(self.masks[name], type=pa.bool_())
        return pa.table(cols)

    def save(self, directory: str | Path) -> Path:
        """Write ``catalog.parquet`` + ``schema.json`` into ``directory`` atomically."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            pq.write_table(self.to_arrow(), tmp / "catalog.parquet")
            schema = {
                "format_version": FORMAT_VERSION,
                "n_items": len(self),
                "modalities": {k: asdict(v) for k, v in self.schema.items()},
                "attributes": [c for c in self.attributes.columns if c != "item_id"],
                "parquet_sha256": sha256_file(tmp / "catalog.parquet"),
            }
            (tmp / "schema.json").write_text(json.dumps(schema, indent=2) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, verify: bool = True) -> ItemCatalog:
        directory = Path(directory)
        recover_replaced_dir(directory)  # a replace a crash interrupted: the old copy goes back
        schema_path = directory / "schema.json"
        parquet_path = directory / "catalog.parquet"
        try:
            schema = json.loads(schema_path.read_text())
        except FileNotFoundError as e:
            raise CatalogError("catalog schema not found", file=str(schema_path)) from e
        except json.JSONDecodeError as e:
            raise CatalogError(f"catalog schema is not valid JSON: {e}", file=str(schema_path)) from e
        if schema.get("format_version") != FORMAT_VERSION:
            raise CatalogError("unsupported catalog format version", file=str(schema_path),
                               expected=FORMAT_VERSION, found=schema.get("format_version"))
        if verify and sha256_file(parquet_path) != schema.get("parquet_sha256"):
            raise CatalogError("catalog parquet checksum mismatch (truncated or modified)",
                               file=str(parquet_path))
        table = pq.read_table(parquet_path)
        specs = {k: ModalitySpec(**v) for k, v in schema["modalities"].items()}
        return cls.from_arrow(table, specs, file=str(parquet_path))

    @classmethod
    def from_arrow(cls, table: pa.Table, specs: dict[str, ModalitySpec] | None = None,
                   *, file: str | None = None) -> ItemCatalog:
        """Build a catalog from an Arrow table in the on-disk layout (used by readers too)."""
        if "item_id" not in table.column_names:
            raise CatalogError("missing column", file=file, column="item_id",
                               expected="item_id", found=table.column_names)
        specs = dict(specs or {})
        ids = item_id_array(table.column("item_id"), file=file, column="item_id")
        mods: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray] = {}
        attr_cols = []
        for c in table.column_names:
            if c.startswith(EMB_PREFIX):
                name = c[len(EMB_PREFIX):]
                mods[name] = list_column_to_matrix(table.column(c), file=file, column=c)
                mask_col = MASK_PREFIX + name
                if mask_col in table.column_names:
                    masks[name] = table.column(mask_col).to_numpy(zero_copy_only=False).astype(bool)
                if name not in specs:
                    specs[name] = ModalitySpec(name=name, dim=mods[name].shape[1], source=file or "")
            elif c.startswith(MASK_PREFIX) or c == "item_id":
                continue
            else:
                attr_cols.append(c)
        missing = [k for k in specs if k not in mods]
        if missing:
            raise CatalogError("modality column missing", file=file, column=EMB_PREFIX + missing[0],
                               expected=sorted(specs), found=sorted(mods))
        attrs = table.select(attr_cols).to_pandas() if attr_cols else pd.DataFrame(index=range(len(ids)))
        try:
            return cls(ids, mods, masks, attrs, specs)
        except CatalogError as e:
            if file and e.file is None:
                raise CatalogError(str(e), file=file) from e
            raise


def list_column_to_matrix(col: pa.ChunkedArray | pa.Array, *, file: str | None, column: str) -> np.ndarray:
    """Turn a (fixed-size or variable) list column into an (n, d) float32 matrix, checking dims."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise CatalogError("null vector", file=file, column=column, row=row,
                           expected="a vector", found="null")
    if pa.types.is_fixed_size_list(col.type):
        d = col.type.list_size
        values = col.flatten().to_numpy(zero_copy_only=False)
        X = values.reshape(len(col), d)
    elif pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = col.value_lengths().to_numpy(zero_copy_only=False)
        if len(lengths) == 0:
            raise CatalogError("empty catalog", file=file, column=column, expected=">=1 row", found=0)
        d = int(lengths[0])
        bad = np.flatnonzero(lengths != d)
        if len(bad):
            raise CatalogError("mixed vector dimensions", file=file, column=column, row=int(bad[0]),
                               expected=d, found=int(lengths[bad[0]]))
        X = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), d)
    else:
        raise CatalogError("column is not a list of floats", file=file, column=column,
                           expected="list<float32>", found=str(col.type))
    if not np.issubdtype(X.dtype, np.number):
        raise CatalogError("vector values are not numeric", file=file, column=column,
                           expected="float32", found=str(X.dtype))
    X = X.astype(np.float32, copy=False)
    bad_rows = np.flatnonzero(~np.isfinite(X).all(axis=1))
    if len(bad_rows):
        raise CatalogError("non-finite values (NaN/inf)", file=file, column=column,
                           row=int(bad_rows[0]), expected="finite floats",
                           found=f"{len(bad_rows)} bad rows")
    return X


def item_id_array(col: pa.ChunkedArray | pa.Array, *, file: str | None, column: str) -> np.ndarray:
    """An integer id column as int64, refusing nulls and non-integer values."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise CatalogError("null item id", file=file, column=column, row=row,
                           expected="an integer id", found="null")
    if pa.types.is_integer(col.type):
        return col.to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_floating(col.type):
        v = col.to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~np.isfinite(v) | (np.nan_to_num(v) % 1 != 0))
        if len(bad):
            raise CatalogError("item id is not an integer", file=file, column=column, row=int(bad[0]),
                               expected="an integer id", found=float(v[bad[0]]))
        return v.astype(np.int64)
    raise CatalogError("item id column is not integer", file=file, column=column,
                       expected="int64", found=str(col.type))
