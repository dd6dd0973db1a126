"""Stage ``prepare``: build the item catalog (ids, per-modality embeddings, attributes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mmcompress.artifacts import sha256_file, write_json_atomic
from mmcompress.data import ItemCatalog
from mmcompress.errors import CatalogError, ConfigError
from pipelines.config import Layout
from pipelines.stage_runner import main


def build_catalog(params: dict, root: Path, *, progress: bool = True) -> ItemCatalog:
    """The catalog ``params['catalog']`` describes, encoded with ``params['encoders']``."""
    cat_p, enc_p = params["catalog"], params["encoders"]
    L = Layout(root)
    if cat_p["source"] == "movielens":
        from mmcompress.data.movielens import build_movielens_catalog

        text = dict(enc_p.get("text") or {})
        if text.get("cache_dir"):
            text["cache_dir"] = str(L.resolve(text["cache_dir"]))
        collaborative = {"seed": cat_p.get("seed", 0), **(enc_p.get("collaborative") or {})}
        return build_movielens_catalog(L.resolve(cat_p["raw_dir"]), text=text,
                                       collaborative=collaborative,
                                       structured=enc_p.get("structured"),
                                       max_items=cat_p.get("max_items"), progress=progress)
    if cat_p["source"] == "parquet":
        from mmcompress.data.readers import read_catalog

        if not cat_p.get("path"):
            raise ConfigError("catalog.source is 'parquet' but catalog.path is empty")
        path = L.resolve(cat_p["path"])
        if not path.exists():
            raise CatalogError("catalog file not found (catalog.path)", file=str(path))
        return read_catalog(path)
    raise ConfigError(f"catalog.source must be 'movielens' or 'parquet'; found {cat_p['source']!r}")


IDENTITY_FILE = "inputs.json"


def catalog_identity(params: dict, root: Path) -> dict:
    """What a prepared catalog is a function of: the ``catalog`` and ``encoders`` settings
    (caches and the output place aside) and the SHA-256 of every input file. Two runs with the
    same identity build the same catalog; any difference (another file, another slice, other
    encoder settings) means the catalog must be prepared again."""
    L = Layout(root)
    cat = {k: v for k, v in params["catalog"].items() if k != "out_dir"}
    enc = json.loads(json.dumps(params.get("encoders") or {}))
    for section in enc.values():
        if isinstance(section, dict):
            section.pop("cache_dir", None)
    if cat["source"] == "movielens":
        files = sorted(p for p in L.resolve(cat["raw_dir"]).glob("*") if p.is_file())
    else:
        files = [L.resolve(cat["path"])] if cat.get("path") else []
    inputs = {p.name: (sha256_file(p) if p.is_file() else "missing") for p in files}
    ident = {"catalog": cat, "encoders": enc, "inputs": inputs}
    ident["sha256"] = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return ident


def catalog_dir(params: dict, root: Path) -> Path:
    return Layout(root).resolve(params["catalog"].get("out_dir", "data/catalog"))


def prepared_identity(params: dict, root: Path) -> str | None:
    """The identity recorded with the prepared catalog, None when there is none."""
    path = catalog_dir(params, root) / IDENTITY_FILE
    try:
        return json.loads(path.read_text()).get("sha256")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None


def prepare(params: dict, root: Path) -> dict:
    """Build the item catalog and write it to ``data/catalog`` (Parquet + schema.json), with
    the identity of its inputs (``inputs.json``)."""
    root = Path(root)
    ident = catalog_identity(params, root)
    catalog = build_catalog(params, root)
    out = catalog_dir(params, root)
    catalog.save(out)
    write_json_atomic(out / IDENTITY_FILE, ident)
    coverage = {m: float(catalog.masks[m].mean()) for m in catalog.modality_names}
    return {"catalog_dir": str(out), "n_items": len(catalog), "catalog_identity": ident["sha256"],
            "modalities": {m: s.dim for m, s in catalog.schema.items()}, "coverage": coverage}


if __name__ == "__main__":
    raise SystemExit(main(prepare))
