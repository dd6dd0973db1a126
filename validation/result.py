"""What a validation run returns, its readable summary, and the error raised on failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcompress.errors import MMCompressError


class ValidationError(MMCompressError, ValueError):
    """Data failed its expectation suite; the message is the readable summary."""

    def __init__(self, summary: str, result: ValidationResult | None = None) -> None:
        super().__init__(summary)
        self.result = result


@dataclass
class ExpectationFailure:
    """One failed expectation: which check, on which column, how many rows, examples."""

    expectation: str
    column: str | None
    description: str
    row_level: bool
    unexpected_count: int | None = None
    element_count: int | None = None
    observed: Any = None
    expected: str = ""
    example_ids: list[Any] = field(default_factory=list)
    example_values: list[Any] = field(default_factory=list)

    def line(self) -> str:
        where = f" on column {self.column!r}" if self.column else ""
        text = f"{self.expectation}{where} ({self.description})"
        if self.unexpected_count is not None:
            of = f" of {self.element_count}" if self.element_count is not None else ""
            text += f": {self.unexpected_count}{of} rows unexpected"
        elif self.observed is not None:
            text += f": observed {_short(self.observed)}"
        if self.expected:
            text += f"; expected {self.expected}"
        if self.example_ids:
            text += f"; e.g. item_id {', '.join(map(str, self.example_ids[:5]))}"
        elif self.example_values:
            text += f"; e.g. {', '.join(_short(v) for v in self.example_values[:5])}"
        return text


@dataclass
class ValidationResult:
    """Outcome of a suite: success, readable summary, failures and where the full results went.

    With quarantine, ``clean`` is the data left after setting aside the rows listed in
    ``quarantine_path`` and ``success`` refers to that clean subset.
    """

    suite: str
    success: bool
    summary: str
    failures: list[ExpectationFailure]
    n_rows: int
    n_quarantined: int = 0
    quarantine_path: Path | None = None
    results_path: Path | None = None
    docs_path: Path | None = None
    clean: Any = None
    statistics: dict[str, Any] = field(default_factory=dict)


def raise_for_failure(result: ValidationResult) -> None:
    """Raise :class:`ValidationError` with the summary when the suite failed."""
    if not result.success:
        raise ValidationError(result.summary, result)


def make_summary(suite: str, success: bool, n_rows: int, failures: list[ExpectationFailure], *,
                 n_expectations: int, n_quarantined: int = 0, quarantine_path: Path | None = None,
                 results_path: Path | None = None, docs_path: Path | None = None) -> str:
    head = (f"validation suite {suite!r}: {'passed' if success else 'FAILED'} "
            f"({n_expectations - len(failures)}/{n_expectations} expectations met on {n_rows} rows)")
    lines = [head]
    lines += [f"  - {f.line()}" for f in failures]
    if n_quarantined:
        lines.append(f"  {n_quarantined} rows quarantined with reasons in {quarantine_path}")
    if results_path:
        lines.append(f"  full results: {results_path}")
    if docs_path:
        lines.append(f"  data docs: {docs_path}")
    return "\n".join(lines)


def _short(v: Any) -> str:
    s = f"{v:.4g}" if isinstance(v, float) else str(v)
    return s if len(s) <= 80 else s[:77] + "..."
