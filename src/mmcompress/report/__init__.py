"""The run report: a self-contained HTML page with the recall-versus-bytes plot, the codec
table, modality diagnostics, example neighbourhoods, the promotion decision and drift history."""

from mmcompress.report.render import render_report, write_report

__all__ = ["render_report", "write_report"]
