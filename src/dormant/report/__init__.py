"""Reports from results rows: CSV, markdown, figures and a self-contained HTML page."""

from __future__ import annotations

from dormant.report.figures import lmc_figure, recovery_figure, scatter_figure
from dormant.report.relearn import write_relearn_report
from dormant.report.tables import (
    failed_frame,
    main_verdicts,
    normalize_row,
    paper_table,
    rows_frame,
    summary_frame,
    to_markdown,
    write_csv,
)

__all__ = [
    "failed_frame", "lmc_figure", "normalize_row", "paper_table", "recovery_figure",
    "main_verdicts", "rows_frame", "scatter_figure", "summary_frame", "to_markdown",
    "write_csv", "write_relearn_report",
]
