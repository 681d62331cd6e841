"""The report's HTML: one self-contained page (figures embedded as PNG data URIs, inline CSS
and a small inline script that sorts tables), viewable offline from a file.

Every function returns an HTML fragment; all text from rows and manifests is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import shlex
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from dllm_bench.rows import ENVIRONMENT_COLUMNS, Row
from dllm_bench.sinks.report.data import (
    Change,
    Comparison,
    Impossible,
    Speedup,
    TradeOff,
    failed_rows,
    is_possible,
    shape_name,
    strategy_label,
    task_of,
    tokens_per_forward,
)
from dllm_bench.sinks.text import format_ratio, format_significant

MISSING = ""

# Columns of the table of all rows: CSV column names, plus two derived ones (marked *).
STRATEGY = "strategy"
SPEEDUP = "speedup_vs_ar"
TABLE_COLUMNS = (
    "case_id",
    "model",
    "kind",
    "task",
    "prompt_length",
    "gen_length",
    "batch_size",
    STRATEGY,
    "status",
    "latency_mean_s",
    "latency_cv",
    "tokens_per_s",
    SPEEDUP,
    "nfe",
    "tokens_per_forward",
    "agreement_exact",
    "accuracy",
    "accuracy_se",
    "n_scored",
    "aup",
    "peak_memory_allocated_mb",
    "peak_rss_increase_mb",
    "energy_per_token_j",
    "noise_warning",
    "error",
)
DERIVED_DOCS = {
    STRATEGY: "derived: a diffusion model's decoding settings as case ids write them; AR for an autoregressive model",
    SPEEDUP: (
        "derived: tokens_per_s over the AR case's of the same task, task_options, prompt_length, gen_length, "
        "batch_size and seed"
    ),
}
ALWAYS_SHOWN = frozenset({"case_id", "status", "tokens_per_s", STRATEGY})

# The machine and run set-up shown on the page: the environment the suite captures, then
# the rows' device columns; a row's value wins when the manifest lacks it or rows differ.
SETUP_COLUMNS = (*ENVIRONMENT_COLUMNS, "device", "dtype", "torch_threads", "cpu_count")
MANIFEST_FIELDS = ("status", "signal", "reason", "started_at", "ended_at", "config_path", "output_dir", "resumed")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 1500px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.4; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
.meta { color: #555; margin-top: 0; }
.partial { background: #fff3cd; border: 1px solid #e0b100; padding: 0.6rem 0.8rem; font-weight: 600; }
.failed { background: #fdecea; border: 1px solid #c0392b; padding: 0.6rem 0.8rem; }
.note { color: #555; }
.problem { color: #a61b0b; }
figure { margin: 0.8rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
.scroll { overflow-x: auto; max-height: 75vh; overflow-y: auto; border: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.82rem; }
th, td { padding: 0.2rem 0.5rem; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { position: sticky; top: 0; background: #f4f4f6; }
th button { all: unset; cursor: pointer; font-weight: 600; }
th[aria-sort="ascending"] button::after { content: " \\25B2"; }
th[aria-sort="descending"] button::after { content: " \\25BC"; }
tr.notok td { background: #fdecea; }
td.loses { background: #fbe3e0; }
td.wins { background: #e3f4e8; }
td.impossible { background: #f5b7b1; font-weight: 600; }
dl.env { display: grid; grid-template-columns: max-content auto; gap: 0.15rem 1rem; }
dl.env dt { font-weight: 600; }
dl.env dd { margin: 0; font-family: ui-monospace, monospace; font-size: 0.85rem; word-break: break-all; }
pre { background: #f6f6f8; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
"""

# Sorts a table by the clicked column: numbers by value (data-sort), text alphabetically,
# empty cells last in both directions.
SCRIPT = """
(function () {
  "use strict";
  function sortKey(row, column) {
    var cell = row.cells[column];
    var value = cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
    if (value === "") { return null; }
    var parsed = Number(value);
    return cell.hasAttribute("data-sort") && !isNaN(parsed) ? parsed : value.toLowerCase();
  }
  function compareKeys(a, b) {
    if (typeof a === "number" && typeof b === "number") { return a - b; }
    return String(a).localeCompare(String(b), undefined, {numeric: true});
  }
  function sortBy(table, header, column) {
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (x, y) {
      var a = sortKey(x, column), b = sortKey(y, column);
      if (a === null || b === null) { return (a === null) - (b === null); }
      return ascending ? compareKeys(a, b) : compareKeys(b, a);
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, column) {
      var button = header.querySelector("button");
      if (button) { button.addEventListener("click", function () { sortBy(table, header, column); }); }
    });
  });
}());
"""


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


@dataclass(frozen=True)
class Image:
    """A figure of the page: its file name beside the page, its PNG bytes and its alt text; or,
    when it could not be drawn, why (`error`)."""

    name: str
    data: bytes
    alt: str
    error: str = ""


def image_html(image: Image) -> str:
    if image.error or not image.data:
        return note(f"The figure {esc(image.name)} could not be drawn ({esc(image.error)}).", "problem")
    encoded = base64.b64encode(image.data).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" alt="{esc(image.alt)}" '
        f'data-file="{esc(image.name)}"></figure>'
    )


def note(text: str, css: str = "note") -> str:
    return f'<p class="{css}">{text}</p>'


def cell_text(value: object) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return format_significant(value)
    return str(value)


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: object, *, css: str = "") -> str:
    """A table cell; numbers are right-aligned and sort by their value (`data-sort`)."""
    if value is None and not css:
        return "<td></td>"
    if _is_number(value):  # a number's text needs no escaping
        return f'<td class="{f"num {css}".strip()}" data-sort="{value!r}">{cell_text(value)}</td>'
    class_attr = f' class="{css}"' if css else ""
    return f"<td{class_attr}>{esc(cell_text(value))}</td>"


def _ratio_cell(ratio: float) -> str:
    """A speedup against AR: `2.24x`, red below 1 (AR is faster), green from 1."""
    css = "num loses" if ratio < 1 else "num wins"
    return f'<td class="{css}" data-sort="{ratio!r}">{esc(format_ratio(ratio))}</td>'


def sortable_table(headers: Sequence[tuple[str, str]], body: Iterable[tuple[str, Sequence[str]]], css: str = "") -> str:
    """A sortable table: headers are (name, tooltip); body lines are (the line's class, its cells' HTML)."""
    head = "".join(f'<th title="{esc(tip)}"><button type="button">{esc(name)}</button></th>' for name, tip in headers)
    lines = "".join(
        f'<tr class="{esc(line_css)}">{"".join(cells)}</tr>' if line_css else f"<tr>{''.join(cells)}</tr>"
        for line_css, cells in body
    )
    return (
        f'<div class="scroll"><table class="sortable {css}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{lines}</tbody></table></div>"
    )


# --- header --------------------------------------------------------------------------------


def _counts_text(manifest: Mapping[str, Any] | None, rows: Sequence[Row]) -> str:
    counts = manifest.get("counts") if manifest else None
    if isinstance(counts, Mapping) and counts.get("planned"):
        parts = [f"{counts.get(k, 0)} {k.replace('_', ' ')}" for k in ("planned", "ok", "failed", "skipped", "not_run")]
        if counts.get("already_done"):
            parts.append(f"{counts['already_done']} already done (resume)")
        return ", ".join(parts)
    ok = sum(row.ok for row in rows)
    return f"{len(rows)} cases: {ok} ok, {len(rows) - ok} failed"


def header_html(
    title: str,
    *,
    source: str,
    manifest: Mapping[str, Any] | None,
    rows: Sequence[Row],
    partial: bool,
    generated_at: str,
    links: Sequence[str],
) -> str:
    status = str(manifest.get("status") or "unknown") if manifest else "no manifest"
    parts = [f"<h1>{esc(title)}</h1>"]
    meta = f"{esc(source)} &middot; status <b>{esc(status)}</b> &middot; {esc(_counts_text(manifest, rows))}"
    parts.append(f'<p class="meta">{meta} &middot; report written {esc(generated_at)}</p>')
    if links:
        parts.append(
            '<p class="meta">Files: '
            + " &middot; ".join(f'<a href="{esc(link)}">{esc(link)}</a>' for link in links)
            + "</p>"
        )
    if partial:
        why = ""
        if manifest:
            signal, reason = manifest.get("signal"), manifest.get("reason")
            why = ", ".join(esc(v) for v in (signal, reason) if v)
        parts.append(
            '<p class="partial" id="partial">Partial run: it did not finish every planned case'
            f"{f' ({why})' if why else ''}. The figures show only the cases that finished.</p>"
        )
    return "\n".join(parts)


def failures_html(rows: Sequence[Row]) -> str:
    failed = failed_rows(rows)
    if not failed:
        return ""
    items = "".join(
        f"<li><code>{esc(r.case_id)}</code>: <b>{esc(r.status or 'no status')}</b> {esc(r.error or '')}</li>"
        for r in failed
    )
    return (
        f'<div class="failed" id="failed"><b>{len(failed)} of {len(rows)} cases did not finish ok</b> '
        f"(they are in the table, not in the figures):<ul>{items}</ul></div>"
    )


def noise_html(rows: Sequence[Row]) -> str:
    noisy = [r for r in rows if r.noise_warning]
    if not noisy:
        return ""
    return note(
        f"{len(noisy)} cases have a <code>noise_warning</code> (the machine was busy or the rounds varied): "
        "their timings are not reliable; see the README's 'Stable numbers'.",
        "problem",
    )


# Impossible values listed on the page at most (the table marks them all).
MAX_LISTED_IMPOSSIBLE = 20


def impossible_html(items: Sequence[Impossible]) -> str:
    """The values no measurement can take, listed (the first MAX_LISTED_IMPOSSIBLE) and marked in the table."""
    if not items:
        return ""
    listed = "".join(f"<li><code>{esc(item.describe())}</code></li>" for item in items[:MAX_LISTED_IMPOSSIBLE])
    more = f"<li>and {len(items) - MAX_LISTED_IMPOSSIBLE} more</li>" if len(items) > MAX_LISTED_IMPOSSIBLE else ""
    return (
        f'<div class="failed" id="impossible"><b>{len(items)} impossible values</b> (a measurement below 0, or a '
        "share above 1): the results file was damaged or edited, or the suite wrote a wrong value. They are "
        f"marked in the table and plotted as they are; do not trust these cases.<ul>{listed}{more}</ul></div>"
    )


def missing_columns_html(missing: Mapping[str, Sequence[str]]) -> str:
    """The measurement columns each results file lacks (written by an older suite, or cut down by hand)."""
    if not missing:
        return ""
    items = "".join(
        f"<li><code>{esc(path)}</code> has no {esc(', '.join(columns))}</li>" for path, columns in missing.items()
    )
    return (
        f'<div class="failed" id="missing-columns"><b>Missing columns</b>: these results files lack measurement '
        f"columns; their values are empty on this page (not zero).<ul>{items}</ul></div>"
    )


# --- 1. speed against quality --------------------------------------------------------------


def _front_text(panel: TradeOff) -> str:
    front = sorted((p for p in panel.diffusion if p.on_front), key=lambda p: p.speed)
    return ", ".join(f"{esc(p.label)} ({format_significant(p.speed)} tokens/s)" for p in front)


def trade_off_html(panels: Sequence[TradeOff], image: Image | None) -> str:
    parts = ['<h2 id="trade-off">1. Speed against quality</h2>']
    if not panels:
        return "".join([*parts, note("No ok diffusion case with a tokens_per_s value: nothing to plot.")])
    metrics = {panel.task: panel.metric for panel in panels}
    lines = []
    for task, metric in metrics.items():
        if metric is None:
            lines.append(
                f"<li><b>{esc(task)}</b>: no quality measure yet (no accuracy or agreement_exact values); "
                "its panel shows the tokens_per_s of each strategy and of the AR model, one colour per "
                "shape.</li>"
            )
        else:
            lines.append(
                f"<li><b>{esc(task)}</b>: tokens_per_s against <code>{esc(metric)}</code>; the Pareto front "
                "(no other strategy is both faster and better) is circled and dashed; the AR model is a star "
                "(dotted line where it has no value of the measure).</li>"
            )
    parts.append(f"<ul>{''.join(lines)}</ul>")
    if image is not None:
        parts.append(image_html(image))
    fronts = [(panel, _front_text(panel)) for panel in panels if panel.metric]
    if fronts:
        items = "".join(f"<li>{esc(panel.title)}: {text}</li>" for panel, text in fronts if text)
        parts.append(f"<details><summary>Pareto front per task and shape</summary><ul>{items}</ul></details>")
    return "\n".join(parts)


# --- 2. speedup against AR -----------------------------------------------------------------


def _speedup_table(items: Sequence[Speedup]) -> str:
    columns = sorted({(i.task, i.shape) for i in items}, key=lambda c: (c[0], tuple(v or 0 for v in c[1])))
    settings = list(dict.fromkeys(i.setting for i in items))
    ratios: dict[tuple[str, str, Any], list[float]] = {}
    for i in items:
        ratios.setdefault((i.setting, i.task, i.shape), []).append(i.ratio)
    tip = "speedup vs AR; the median where several prompt seeds (or task options) give several pairs"
    headers = [("setting", "the diffusion strategy"), *((f"{t} {shape_name(s)}", tip) for t, s in columns)]
    body = []
    for setting in settings:
        cells = [f"<td>{esc(setting)}</td>"]
        for task, shape in columns:
            values = ratios.get((setting, task, shape))
            cells.append("<td></td>" if values is None else _ratio_cell(statistics.median(values)))
        body.append(("", cells))
    return sortable_table(headers, body, "speedups")


def speedup_html(
    items: Sequence[Speedup], missing: Sequence[tuple[str, tuple[Any, Any, Any]]], image: Image | None
) -> str:
    parts = ['<h2 id="speedup">2. Speedup against AR</h2>']
    if not items:
        parts.append(
            note("No diffusion case has an ok AR (autoregressive) case of the same task and shape to compare with.")
        )
    else:
        losing = [i for i in items if i.diffusion_loses]
        best = max(items, key=lambda i: i.ratio)
        parts.append(
            note(
                "tokens_per_s of each diffusion case over the AR case of the same task, task options, prompt_length, "
                "gen_length, batch_size and prompt seed. "
                f"The diffusion model is slower than AR in <b>{len(losing)} of {len(items)}</b> pairs; "
                f"the best is {esc(best.setting)} at {esc(best.task)} {esc(shape_name(best.shape))}: "
                f"{esc(format_ratio(best.ratio))}."
            )
        )
        if image is not None:
            parts.append(image_html(image))
        parts.append(_speedup_table(items))
    if missing:
        names = ", ".join(f"{esc(task)} {esc(shape_name(shape))}" for task, shape in missing)
        parts.append(
            note(f"Some diffusion cases have no ok AR case of the same task options and prompt seed at: {names}.")
        )
    return "\n".join(parts)


# --- 3. latency against NFE ----------------------------------------------------------------


def cost_html(image: Image | None) -> str:
    parts = ['<h2 id="cost">3. Latency against NFE, tokens per forward</h2>']
    if image is None:
        parts.append(note("No ok case with latency_mean_s and nfe."))
    else:
        parts.append(
            note(
                "Each forward pass costs about the same at one shape, so latency follows nfe; parallel decoding "
                "(threshold, factor) lowers nfe and raises tokens_per_forward (gen_length / nfe). An AR model "
                "makes one forward pass per token."
            )
        )
        parts.append(image_html(image))
    return "\n".join(parts)


# --- 4. comparison with a reference run ----------------------------------------------------


def _changes_table(comparison: Comparison) -> str:
    metrics = [m for m in comparison.metrics if comparison.of(m)]
    by_case: dict[str, dict[str, Change]] = {}
    for item in comparison.changes:
        by_case.setdefault(item.case_id, {})[item.metric] = item
    headers = [("case_id", "")]
    for metric in metrics:
        unit = comparison.units[metric]
        headers += [
            (f"{metric} reference", "the reference run's value"),
            (f"{metric}", "this run's value"),
            (f"change ({unit})", f"change of {metric} in {unit}"),
        ]
    body = []
    for case_id, changes in by_case.items():
        cells = [f"<td>{esc(case_id)}</td>"]
        regression = False
        for metric in metrics:
            change: Change | None = changes.get(metric)
            if change is None:
                cells += ["<td></td>"] * 3
                continue
            regression |= change.regression
            css = "loses" if change.regression else ""
            cells += [_cell(change.reference), _cell(change.current), _cell(change.change, css=css)]
        body.append(("notok" if regression else "", cells))
    return sortable_table(headers, body, "changes")


def comparison_html(comparison: Comparison | None, reference_name: str, image: Image | None) -> str:
    parts = ['<h2 id="comparison">4. Comparison with the reference run</h2>']
    if comparison is None:
        parts.append(
            note(
                "No reference run. <code>dllm-bench-report RUN_DIR --reference OTHER_RUN</code> compares two runs; "
                "a run with <code>--gate-reference</code> is compared with its reference."
            )
        )
        return "\n".join(parts)
    parts.append(
        note(
            f"Reference: <code>{esc(reference_name)}</code>. {comparison.matched} cases matched by their full "
            "parameter set (as the gate matches them); changes in percent of the reference value, "
            "accuracy in percentage points."
        )
    )
    if comparison.rules:
        rules = ", ".join(f"<code>{esc(rule.spec())}</code>" for rule in comparison.rules)
        parts.append(note(f"Gate rules: {rules} (dashed lines)."))
        if comparison.regressions:
            items = "".join(f"<li><code>{esc(line)}</code></li>" for line in comparison.regressions)
            parts.append(
                f'<div class="failed" id="regressions"><b>{len(comparison.regressions)} regressions</b> '
                f"past the gate's limits:<ul>{items}</ul></div>"
            )
        elif comparison.gate_compared == 0:
            parts.append(
                note(
                    "The gate compared nothing (0 case/metric pairs): no case of this run has an ok reference row "
                    "with a value of a gated metric, so no regression could be found.",
                    "problem",
                )
            )
        else:
            parts.append(
                note(f"No regression past the gate's limits ({comparison.gate_compared} case/metric pairs compared).")
            )
        if comparison.gate_problem:
            parts.append(note(esc(comparison.gate_problem), "problem"))
    else:
        parts.append(note("No gate rules given, so no change is called a regression."))
    for label, cases in (
        ("new cases (no reference row)", comparison.new_cases),
        ("reference cases not in this run", comparison.missing_cases),
        ("cases not ok on one side (reference -> this run)", comparison.not_ok),
    ):
        if cases:
            parts.append(note(f"{len(cases)} {label}: {esc(', '.join(cases))}"))
    if image is not None:
        parts.append(image_html(image))
    if comparison.changes:
        parts.append(_changes_table(comparison))
    elif comparison.matched == 0:
        parts.append(note("No case of this run has an ok row of the same parameters in the reference run.", "problem"))
    return "\n".join(parts)


# --- 5. all rows ---------------------------------------------------------------------------


def _value(row: Row, column: str, speedup: Mapping[str, float]) -> object:
    if column == STRATEGY:
        return strategy_label(row)
    if column == SPEEDUP:
        return speedup.get(row.case_id)
    if column == "task":
        return task_of(row)
    if column == "tokens_per_forward":
        return tokens_per_forward(row) if row.ok else row.tokens_per_forward
    return getattr(row, column)


def table_columns(rows: Sequence[Row], speedup: Mapping[str, float]) -> list[str]:
    """TABLE_COLUMNS without the ones empty in every row (case_id, status, ... always stay)."""
    return [c for c in TABLE_COLUMNS if c in ALWAYS_SHOWN or any(_value(r, c, speedup) is not None for r in rows)]


def table_html(rows: Sequence[Row], speedup: Mapping[str, float], docs: Mapping[str, str]) -> str:
    columns = table_columns(rows, speedup)
    headers = [(c, DERIVED_DOCS.get(c) or docs.get(c, "")) for c in columns]
    body = []
    for row in rows:
        cells = []
        for column in columns:
            value = _value(row, column, speedup)
            if column == SPEEDUP and isinstance(value, float):
                cells.append(_ratio_cell(value))
            elif _is_number(value) and not is_possible(column, value):
                cells.append(_cell(value, css="impossible"))
            else:
                cells.append(_cell(value))
        body.append(("" if row.ok else "notok", cells))
    return "\n".join(
        [
            '<h2 id="rows">5. All rows</h2>',
            note(
                f"{len(rows)} rows, one per case; click a column to sort. Column names are raw_metrics.csv's "
                "(hover for their meaning); every other column is in the CSV."
            ),
            sortable_table(headers, body, "rows"),
        ]
    )


# --- 6. environment ------------------------------------------------------------------------


def _distinct(rows: Sequence[Row], column: str) -> str:
    values = dict.fromkeys(cell_text(value) for value in dict.fromkeys(getattr(row, column) for row in rows))
    return ", ".join(v for v in values if v)


def environment_items(manifest: Mapping[str, Any] | None, rows: Sequence[Row]) -> list[tuple[str, str]]:
    """(name, value) pairs: the manifest's run fields and command line, then each environment
    value; a value the rows hold in several versions (merged shards) lists them all."""
    items: list[tuple[str, str]] = []
    if manifest:
        items += [
            (name, cell_text(manifest.get(name))) for name in MANIFEST_FIELDS if manifest.get(name) not in (None, "")
        ]
        command = manifest.get("command_line")
        if isinstance(command, list) and command:
            items.append(("command_line", shlex.join(str(part) for part in command)))
    environment = manifest.get("environment") if manifest else None
    recorded = environment if isinstance(environment, Mapping) else {}
    for column in SETUP_COLUMNS:
        from_rows = _distinct(rows, column)
        value = from_rows if "," in from_rows or column not in recorded else cell_text(recorded.get(column))
        if value:
            items.append((column, value))
    return items


def environment_html(manifest: Mapping[str, Any] | None, rows: Sequence[Row]) -> str:
    entries = "".join(f"<dt>{esc(name)}</dt><dd>{esc(value)}</dd>" for name, value in environment_items(manifest, rows))
    parts = ['<h2 id="environment">6. Environment</h2>', f'<dl class="env">{entries}</dl>']
    config = manifest.get("config") if manifest else None
    if config:
        text = json.dumps(config, indent=2, sort_keys=False, default=str)
        parts.append(f"<details><summary>config</summary><pre>{esc(text)}</pre></details>")
    if manifest and manifest.get("shards"):
        text = json.dumps(manifest["shards"], indent=2, default=str)
        parts.append(f"<details><summary>shards</summary><pre>{esc(text)}</pre></details>")
    return "\n".join(parts)


# --- the page ------------------------------------------------------------------------------


def section_error_html(title: str, error: BaseException) -> str:
    return f"<h2>{esc(title)}</h2>" + note(
        f"This section could not be drawn ({esc(type(error).__name__)}: {esc(error)}); the log has the details.",
        "problem",
    )


def render_page(title: str, sections: Iterable[str]) -> str:
    body = "\n".join(section for section in sections if section)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
