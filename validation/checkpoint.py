"""Run expectation suites on pandas frames in an ephemeral Great Expectations context.

data source → asset → batch definition → suite → validation definition → checkpoint, with the
results rendered as GX data docs into a directory when one is given. Failed expectations are
turned into :class:`ExpectationFailure` records; row-level ones also give the failing rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402

from mmcompress.artifacts import write_bytes_atomic  # noqa: E402
from validation.result import ExpectationFailure  # noqa: E402

ROW_COLUMN = "row"
DOCS_SITE = "mmcompress"


class SuiteRunner:
    """One ephemeral GX context; ``validate`` runs a suite on a frame through a checkpoint."""

    def __init__(self, docs_dir: Path | None = None) -> None:
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        for site in list(self.context.get_site_names()):
            self.context.delete_data_docs_site(site)
        self.docs_dir = Path(docs_dir) if docs_dir is not None else None
        if self.docs_dir is not None:
            self.context.add_data_docs_site(site_name=DOCS_SITE, site_config={
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(self.docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            })
        self.source = self.context.data_sources.add_pandas("mmcompress")

    def validate(self, suite: gx.ExpectationSuite, frame: pd.DataFrame, *,
                 index_columns: list[str]) -> Any:
        """Run ``suite`` on ``frame``; return the ExpectationSuiteValidationResult."""
        name = suite.name
        batch_def = self.source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = self.context.suites.add(suite)
        vd = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        actions = []
        if self.docs_dir is not None:
            actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE]))
        checkpoint = self.context.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[vd], actions=actions,
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_columns}))
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        return next(iter(result.run_results.values()))

    @property
    def docs_index(self) -> Path | None:
        return self.docs_dir / "index.html" if self.docs_dir is not None else None


def write_results_json(path: Path, payload: dict[str, Any]) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=2, default=_json_default) + "\n").encode())


def result_dict(validation_result: Any) -> dict[str, Any]:
    return json.loads(json.dumps(validation_result.to_json_dict(), default=_json_default))


def failures_of(validation_result: Any, *, id_column: str | None = "item_id") -> list[ExpectationFailure]:
    """The failed expectations of a suite result as readable records."""
    out = []
    for r in validation_result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
        meta = cfg.meta or {}
        res = r.result or {}
        exc = r.exception_info or {}
        if exc.get("raised_exception"):
            observed = f"could not run: {str(exc.get('exception_message'))[:200]}"
        else:
            observed = res.get("observed_value")
        ids, values = [], []
        for entry in res.get("unexpected_index_list") or []:
            if isinstance(entry, dict) and id_column and id_column in entry:
                ids.append(_plain(entry[id_column]))
        values = [_plain(v) for v in (res.get("partial_unexpected_list") or [])]
        out.append(ExpectationFailure(
            expectation=cfg.type, column=kwargs.get("column"), description=meta.get("description", ""),
            row_level=bool(meta.get("row_level")), unexpected_count=res.get("unexpected_count"),
            element_count=res.get("element_count"), observed=_plain(observed),
            expected=_expected_text(cfg.type, kwargs), example_ids=ids[:10], example_values=values[:10]))
    return out


def failing_rows(validation_result: Any) -> dict[int, list[str]]:
    """Row position → reasons, from the failed row-level expectations (``meta.row_level``)."""
    rows: dict[int, list[str]] = {}
    for r in validation_result.results:
        meta = r.expectation_config.meta or {}
        if r.success or not meta.get("row_level"):
            continue
        kwargs = r.expectation_config.kwargs
        reason = f"{meta.get('description') or r.expectation_config.type} " \
                 f"({kwargs.get('column')}: expected {_expected_text(r.expectation_config.type, kwargs)})"
        for entry in (r.result or {}).get("unexpected_index_list") or []:
            if isinstance(entry, dict) and ROW_COLUMN in entry:
                value = entry.get(kwargs.get("column"))
                rows.setdefault(int(entry[ROW_COLUMN]), []).append(
                    reason if value is None else f"{reason}, found {_plain(value)}")
    return rows


def _expected_text(kind: str, kw: dict[str, Any]) -> str:
    lo, hi = kw.get("min_value"), kw.get("max_value")
    rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
    if kind == "expect_column_values_to_be_between":
        return f"values in {rng}"
    if kind == "expect_column_mean_to_be_between":
        return f"mean in {rng}"
    if kind == "expect_column_max_to_be_between":
        return f"max in {rng}"
    if kind == "expect_column_min_to_be_between":
        return f"min in {rng}"
    if kind == "expect_table_row_count_to_be_between":
        return f"row count in {rng}"
    if kind == "expect_column_values_to_be_in_set":
        return f"values in {kw.get('value_set')}"
    if kind == "expect_column_values_to_be_unique":
        return "unique values"
    if kind == "expect_column_values_to_not_be_null":
        return "no nulls"
    if kind == "expect_column_to_exist":
        return "the column to exist"
    return ", ".join(f"{k}={v}" for k, v in kw.items() if k != "column")


def _plain(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        try:
            return v.item()
        except (ValueError, TypeError):
            return str(v)
    return v


def _json_default(o: Any) -> Any:
    v = _plain(o)
    return v if v is not o else str(o)
