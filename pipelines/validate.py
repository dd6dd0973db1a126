"""Stage ``validate``: Great Expectations checks of the item catalog before anything trains.

On failure the stage stops the pipeline with a readable summary (expectation, column, rows,
examples); full results go to ``reports/validation`` (JSON + HTML). With
``validate.on_row_error: quarantine`` row-level failures are written to
``reports/validation/quarantine.csv`` with their reasons and the train stage leaves them out.
"""

from __future__ import annotations

from pathlib import Path

from mmcompress.artifacts import atomic_dir, write_json_atomic
from mmcompress.data import ItemCatalog
from pipelines.config import Layout
from pipelines.stage_runner import main

QUARANTINE_FILE = "quarantine.csv"


def validate(params: dict, root: Path) -> dict:
    """Validate data/catalog; raise ValidationError with the summary when it fails."""
    from validation.runner import raise_for_failure, validate_catalog

    root = Path(root)
    L = Layout(root)
    vp = params["validate"]
    catalog = ItemCatalog.load(L.catalog_dir)
    out_dir = L.resolve(vp.get("out_dir", "reports/validation"))
    norm_range = vp["norm_range"]
    norm_range = ({m: tuple(r) for m, r in norm_range.items()} if isinstance(norm_range, dict)
                  else tuple(norm_range))
    with atomic_dir(out_dir) as tmp:
        result = validate_catalog(catalog, norm_range=norm_range,
                                  min_coverage=vp["min_modality_coverage"],
                                  on_row_error=vp["on_row_error"], out_dir=tmp)
    result.summary = result.summary.replace(str(tmp), str(out_dir))
    write_json_atomic(L.metrics_dir / "validate.json",
                      {"success": int(result.success), "n_items": len(catalog),
                       "n_quarantined": int(result.n_quarantined)})
    raise_for_failure(result)
    return {"success": result.success, "n_items": len(catalog), "n_quarantined": result.n_quarantined,
            "report_dir": str(out_dir), "summary": result.summary}


if __name__ == "__main__":
    raise SystemExit(main(validate))
