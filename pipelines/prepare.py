"""Stage ``prepare``: build the item catalog (ids, per-modality embeddings, attributes)."""

from __future__ import annotations

from pathlib import Path

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


def prepare(params: dict, root: Path) -> dict:
    """Build the item catalog and write it to ``data/catalog`` (Parquet + schema.json)."""
    root = Path(root)
    catalog = build_catalog(params, root)
    out = Layout(root).resolve(params["catalog"].get("out_dir", "data/catalog"))
    catalog.save(out)
    coverage = {m: float(catalog.masks[m].mean()) for m in catalog.modality_names}
    return {"catalog_dir": str(out), "n_items": len(catalog),
            "modalities": {m: s.dim for m, s in catalog.schema.items()}, "coverage": coverage}


if __name__ == "__main__":
    raise SystemExit(main(prepare))
