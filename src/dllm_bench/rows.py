"""The result row: one typed record per finished case, the single list of CSV columns.

A `Row` holds typed values (numbers are numbers, units are in the column names) from the
moment a case is measured until a sink writes it. Only the CSV sink formats them
(`format_cells`), and every reader turns CSV cells back into the same types
(`Row.from_cells`), so the gate, the summary, merge and the report compare numbers, not
strings. The column list, its order and each column's meaning come from the dataclass
fields below; the README's column table is checked against them.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dllm_bench.kinds import KIND_SPECS, MODEL_KINDS, KindSpec, KindSpecError
from dllm_bench.kinds.base import check_specs

# How many significant digits a float column keeps in the CSV (format spec per column).
_SECONDS = ".6f"
_RATE = ".3f"
_SHARE = ".4f"
_MIB = ".1f"

# Cells of text columns that start with one of these are prefixed with a quote when written,
# so that a spreadsheet opening the CSV does not evaluate them as formulas.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
FORMULA_ESCAPE = "'"
# How a kind's setting column says that other kinds leave it empty.
_OTHER_KINDS = "; empty for other kinds"


def _column(doc: str, fmt: str = "") -> Any:
    """A row field: its meaning (the README text) and, for floats, its CSV format spec."""
    return field(default=None, metadata={"doc": doc, "fmt": fmt})


def _setting(name: str) -> Any:
    """A decoding-setting field: its meaning is written by the kind spec that declares the
    column (`dllm_bench.kinds`); a field no spec declares is an error at import."""
    docs = [doc for spec in KIND_SPECS for column, doc in spec.columns if column == name]
    if not docs:
        raise KindSpecError(f"Row.{name} is a setting column that no kind spec declares")
    if len(docs) == 1:
        return _column(docs[0])
    # A column several kinds share (block_length): each kind's meaning, then the common end.
    return _column("; ".join(doc.removesuffix(_OTHER_KINDS) for doc in docs) + _OTHER_KINDS)



@dataclass(frozen=True)
class Row:
    """One finished case. Field order is the CSV column order."""

    case_id: str = field(metadata={"doc": "the pytest case id part, e.g. tiny-p32-g32-b1-s16-k32", "fmt": ""})
    model: str | None = _column("model name from the config (models[].name)")
    kind: str | None = _column(f"the model kind (models[].kind): {' or '.join(MODEL_KINDS)}")
    model_id: str | None = _column(
        "12 hex digits identifying the whole model entry (name, kind, source, revision, dtype, device, arch, "
        "seed, trust_remote_code): a changed entry is a different case for resume, the gate and merge"
    )
    source: str | None = _column("random-init, a hub id or a local path (models[].source)")
    model_seed: int | None = _column("seed of the random-init weights (models[].seed)")
    device: str | None = _column("device the case ran on, e.g. cpu or cuda:0")
    dtype: str | None = _column("torch dtype of the weights")
    prompt_length: int | None = _column("prompt tokens per sequence (grid.prompt_length)")
    gen_length: int | None = _column("generated positions per sequence (grid.gen_length)")
    batch_size: int | None = _column("sequences per generate call (grid.batch_size)")
    seed: int | None = _column("seed of the prompts (seed)")
    task: str | None = _column("what the prompts are and how outputs are scored (grid.task); random is speed only")
    task_options: str | None = _column("the task's options (tasks.<task>) as JSON; empty when it has none")
    steps: int | None = _setting("steps")
    block_length: int | None = _setting("block_length")
    remasking: str | None = _setting("remasking")
    temperature: float | None = _setting("temperature")
    cfg_scale: float | None = _setting("cfg_scale")
    cache: str | None = _setting("cache")
    threshold: float | None = _setting("threshold")
    factor: float | None = _setting("factor")
    max_denoising_steps: int | None = _setting("max_denoising_steps")
    entropy_bound: float | None = _setting("entropy_bound")
    t_min: float | None = _setting("t_min")
    t_max: float | None = _setting("t_max")
    stability_threshold: int | None = _setting("stability_threshold")
    confidence_threshold: float | None = _setting("confidence_threshold")
    cache_implementation: str | None = _setting("cache_implementation")
    alg: str | None = _setting("alg")
    alg_temp: float | None = _setting("alg_temp")
    top_p: float | None = _setting("top_p")
    top_k: int | None = _setting("top_k")
    eps: float | None = _setting("eps")
    minimal_topk: int | None = _setting("minimal_topk")
    eos_early_stop: bool | None = _setting("eos_early_stop")
    editing_threshold: float | None = _setting("editing_threshold")
    max_post_steps: int | None = _setting("max_post_steps")
    warmup_rounds: int | None = _column("untimed calls before measuring (warmup_rounds)")
    measured_rounds: int | None = _column("timed calls (measured_rounds)")
    status: str | None = _column("ok; oom (out of memory) or error for a failed case")
    error: str | None = _column("first line of the error for a failed case; empty when ok")
    latency_mean_s: float | None = _column("mean seconds per generate call over the measured rounds", _SECONDS)
    latency_median_s: float | None = _column("median seconds per generate call", _SECONDS)
    latency_min_s: float | None = _column("fastest generate call, seconds", _SECONDS)
    latency_max_s: float | None = _column("slowest generate call, seconds", _SECONDS)
    latency_stddev_s: float | None = _column(
        "sample standard deviation of the calls, seconds (0 for one round)", _SECONDS
    )
    latency_cv: float | None = _column(
        "coefficient of variation of the measured calls: latency_stddev_s / latency_mean_s", _SHARE
    )
    generated_tokens: int | None = _column("generated positions per call: batch_size x gen_length (prompt excluded)")
    tokens_per_s: float | None = _column("generated positions per second: generated_tokens / latency_mean_s", _RATE)
    tokens_until_eos: int | None = _column(
        "generated tokens up to and including each sequence's first EOS (all if none), summed"
    )
    eos_tokens_per_s: float | None = _column("tokens_until_eos / latency_mean_s", _RATE)
    nfe: float | None = _column(
        "model forward passes per generate call, counted, the mean over the measured calls "
        "(a fixed diffusion schedule: steps; an autoregressive kind: gen_length; diffusion_gemma: decoder "
        "(denoising) passes, each over one canvas of the whole batch)",
        ".2f",
    )
    nfe_min: int | None = _column("fewest forward passes of one measured call")
    nfe_max: int | None = _column("most forward passes of one measured call")
    encoder_nfe: float | None = _column(
        "encoder-decoder kinds (diffusion_gemma): encoder passes per generate call, the mean over the measured "
        "calls (the prompt, then each finished canvas but the last); not part of nfe; empty for other kinds",
        ".2f",
    )
    edits: float | None = _column(
        "LLaDA2.1 with editing: placed tokens the editing phase replaced per generate call (all sequences), the "
        "mean over the measured calls; empty for other kinds",
        ".2f",
    )
    cfg_batch_factor: int | None = _column(
        "batch multiplier of each forward pass: 2 with cfg_scale > 0 (one pass, doubled batch), else 1"
    )
    tokens_per_forward: float | None = _column(
        "gen_length / nfe: positions committed per forward pass per sequence; diffusion_gemma: the library's own "
        "figure (a row's new tokens other than padding after EOS, over the decoder passes it took part in), the mean "
        "over the batch and the measured calls",
        _SHARE,
    )
    agreement_exact: float | None = _column(
        "diffusion kinds: share of generated positions equal to the exact decode of the same prompts (same model "
        "and block length, one token per step, no cache); 1 for the exact decode itself",
        _SHARE,
    )
    accuracy: float | None = _column(
        "share of the scored prompts answered correctly; empty for the random task", _SHARE
    )
    accuracy_se: float | None = _column("standard error of accuracy: sqrt(accuracy (1 - accuracy) / n_scored)", _SHARE)
    n_scored: int | None = _column("prompts scored for accuracy (the measured calls' and extra untimed batches')")
    aup: float | None = _column(
        "raw_metrics.csv only, diffusion rows: accuracy under parallelism of this model and task over the run's "
        "settings of the model (see the README's 'Quality'); empty without a task or an exact decode in the grid",
        _SHARE,
    )
    forward_mean_s: float | None = _column(
        "mean seconds per forward pass, timed with device sync in the last warm-up call", _SECONDS
    )
    outside_forward_share: float | None = _column(
        "share of that call's time spent outside forward passes (sampling, generate loop)", _SHARE
    )
    ttft_s: float | None = _column(
        "time to first token: autoregressive kinds, mean of prefill-only calls (max_new_tokens=1); diffusion_gemma, "
        "mean of calls that stop after the first canvas (max_new_tokens=block_length); empty for other kinds",
        _SECONDS,
    )
    tpot_s: float | None = _column(
        "autoregressive kinds only: time per output token after the first: (latency_mean_s - ttft_s) / "
        "(gen_length - 1)",
        _SECONDS,
    )
    peak_memory_allocated_mb: float | None = _column(
        "CUDA: torch.cuda.max_memory_allocated over the measured rounds, MiB", _MIB
    )
    peak_memory_reserved_mb: float | None = _column(
        "CUDA: torch.cuda.max_memory_reserved over the measured rounds, MiB", _MIB
    )
    peak_rss_increase_mb: float | None = _column(
        "CPU: increase of the process's peak resident set size during the measured rounds, MiB", _MIB
    )
    energy_j: float | None = _column(
        "NVIDIA GPUs: joules per generate call from NVML's total-energy counter; empty if unavailable", _RATE
    )
    energy_per_token_j: float | None = _column("energy_j / generated_tokens", ".6f")
    torch_threads: int | None = _column("torch intra-op CPU threads of the process that ran the case")
    cpu_time_ratio: float | None = _column(
        "CPU runs: process CPU time / wall time over the measured rounds (about torch_threads when the cores "
        "were free; far less when other processes took them); empty on CUDA",
        _SHARE,
    )
    load_avg_1m: float | None = _column("the machine's 1-minute load average when the case started", ".2f")
    cpu_count: int | None = _column("CPU cores the process may run on")
    noise_warning: str | None = _column(
        "why the timings may be unreliable: load (load_avg_1m above cpu_count), threads (torch_threads above "
        "cpu_count), cv (latency_cv above 0.25), joined by commas; empty when none"
    )
    cpu_model: str | None = _column("CPU model name")
    gpu_name: str | None = _column("GPU model name; empty without CUDA")
    gpu_count: int | None = _column("number of visible GPUs")
    driver_version: str | None = _column("NVIDIA driver version (NVML); empty without it")
    cuda_version: str | None = _column("CUDA version torch was built with; empty for CPU builds")
    torch_version: str | None = _column("torch version")
    transformers_version: str | None = _column("transformers version")
    python_version: str | None = _column("Python version")
    host: str | None = _column("host name")
    git_commit: str | None = _column("git commit of the suite; empty outside a git checkout")
    git_dirty: bool | None = _column("true if the suite's tracked files had uncommitted changes")
    cuda_visible_devices: str | None = _column(
        "CUDA_VISIBLE_DEVICES of the process that ran the case (an xdist worker's own GPU)"
    )
    xdist_worker: str | None = _column("the pytest-xdist worker that ran the case (gw0, ...); empty in a serial run")
    timestamp: str | None = _column("UTC time the case finished, ISO 8601")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def key(self) -> CaseKey:
        """The case's full parameter set (`IDENTITY_COLUMNS`), for matching rows across runs."""
        return tuple(getattr(self, name) for name in IDENTITY_COLUMNS)

    def with_values(self, values: Mapping[str, object]) -> Row:
        """A copy with `values` set; an unknown name is an error."""
        unknown = set(values) - set(COLUMN_NAMES)
        if unknown:
            raise KeyError(f"not result columns: {sorted(unknown)}")
        return dataclasses.replace(self, **values)  # type: ignore[arg-type]

    def to_record(self) -> dict[str, object]:
        """Plain values (str, int, float, bool, None) for transport, e.g. to the xdist controller."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> Row:
        return cls(**{name: record.get(name) for name in COLUMN_NAMES})  # type: ignore[arg-type]

    @classmethod
    def from_cells(cls, cells: Mapping[str, str]) -> Row:
        """A row from CSV cells (text); a cell that does not parse as its column's type is None."""
        values = {name: parse_cell(name, cells[name]) for name in COLUMN_NAMES if name in cells}
        values["case_id"] = values.get("case_id") or ""
        return cls(**values)  # type: ignore[arg-type]


CaseKey = tuple[object, ...]

COLUMNS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Row)
COLUMN_NAMES: tuple[str, ...] = tuple(f.name for f in COLUMNS)
COLUMN_DOCS: tuple[tuple[str, str], ...] = tuple((f.name, str(f.metadata["doc"])) for f in COLUMNS)
_TYPES: dict[str, type] = {
    name: next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    for name, hint in typing.get_type_hints(Row).items()
}
_FORMATS: dict[str, str] = {f.name: str(f.metadata["fmt"]) for f in COLUMNS}

# The parameters every case has; the kinds' setting columns (their specs) join them.
CASE_COLUMNS: tuple[str, ...] = (
    "model",
    "kind",
    "model_id",
    "source",
    "prompt_length",
    "gen_length",
    "batch_size",
    "seed",
    "task",
    "task_options",
    "warmup_rounds",
    "measured_rounds",
)


def identity_columns(specs: Sequence[KindSpec]) -> tuple[str, ...]:
    """The columns that identify a case: the common ones and every setting column of the
    kinds, in column order. A spec whose columns are not result columns is refused
    (`KindSpecError`): its settings would be dropped from the case's identity."""
    check_specs(specs, COLUMN_NAMES)
    wanted = {*CASE_COLUMNS, *(name for spec in specs for name in spec.column_names)}
    return tuple(name for name in COLUMN_NAMES if name in wanted)


# The parameters that identify a case: a row matches a case only if all of them agree.
IDENTITY_COLUMNS: tuple[str, ...] = identity_columns(KIND_SPECS)

# Numeric measurements (what a --gate rule may name), in column order.
MEASUREMENT_COLUMNS: tuple[str, ...] = tuple(
    name
    for name in COLUMN_NAMES[COLUMN_NAMES.index("latency_mean_s") : COLUMN_NAMES.index("energy_per_token_j") + 1]
    if _TYPES[name] in (int, float) and name != "cfg_batch_factor"
)

# Columns whose text comes from users or errors (spreadsheet formula escaping applies).
TEXT_COLUMNS: tuple[str, ...] = tuple(name for name in COLUMN_NAMES if _TYPES[name] is str)


def format_cell(name: str, value: object) -> str:
    """The CSV text of one value: floats with the column's precision, booleans as true/false,
    None as empty, text on one line with formula-like starts escaped."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        spec = _FORMATS.get(name, "")
        return format(value, spec) if spec else repr(value)
    if isinstance(value, int):
        return str(value)
    text = " ".join(str(value).splitlines())
    if name in TEXT_COLUMNS and text.startswith(FORMULA_PREFIXES):
        return FORMULA_ESCAPE + text
    return text


def parse_cell(name: str, text: str) -> object:
    """The typed value of one CSV cell of column `name`; None when empty or not of the type."""
    kind = _TYPES[name]
    if kind is str:
        if text.startswith(FORMULA_ESCAPE) and text[1:2] and text[1:].startswith(FORMULA_PREFIXES):
            return text[1:]
        return text or None
    if text == "":
        return None
    if kind is bool:
        return {"true": True, "false": False}.get(text.strip().lower())
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if kind is int:
        return int(number) if number.is_integer() else None
    return number


def format_cells(row: Row) -> list[str]:
    return [format_cell(name, getattr(row, name)) for name in COLUMN_NAMES]


def number(row: Row, name: str) -> float | None:
    """A numeric column's value as a float (None when empty); text columns are an error."""
    if _TYPES[name] not in (int, float):
        raise KeyError(f"{name} is not a numeric column")
    value = getattr(row, name)
    return None if value is None else float(value)


#: The columns `environment.capture_environment` fills: what a row was measured on.
ENVIRONMENT_COLUMNS: tuple[str, ...] = (
    "cpu_model",
    "gpu_name",
    "gpu_count",
    "driver_version",
    "cuda_version",
    "torch_version",
    "transformers_version",
    "python_version",
    "host",
    "git_commit",
    "git_dirty",
    "cuda_visible_devices",
    "xdist_worker",
)
