"""The run report: `report.html` with its figures, written at the end of a run and by
`dllm-bench-report` (see `cli`). `data` prepares the numbers, `figures` draws them with
matplotlib, `page` writes the HTML, `writer` puts them in the run directory."""

from dllm_bench.sinks.report.writer import FIGURES_DIR, REPORT_HTML, render_report, write_report

__all__ = ["FIGURES_DIR", "REPORT_HTML", "render_report", "write_report"]
