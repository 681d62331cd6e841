"""Every option of the suite, declared once and read once.

Each option has a command-line flag, an ini twin (`dllm_config = ...` in pytest.ini,
tox.ini or pyproject.toml) and, where useful, an environment variable. Precedence: the
command line, then the environment variable, then the ini file, then the default (for
`threads`, the grid file's `threads:` key comes after the ini file).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

# --progress: how progress is shown (see progress.choose_mode).
MODES = ("auto", "bar", "log", "off")


GROUP = "dllm-bench"
DEFAULT_CONFIG = Path("config") / "default.yaml"
DEFAULT_CACHE = Path("~") / ".cache" / "dllm-bench" / "models"


class OptionError(ValueError):
    """An option value that cannot be used; the message names the option."""


@dataclass(frozen=True)
class OptionSpec:
    """One option: its flag, ini twin, environment variable and how its text is read."""

    flag: str
    kind: str  # text, flag (on/off), list, int, choice
    help: str
    metavar: str | None = None
    env: str | None = None
    choices: tuple[str, ...] = ()
    deprecated: tuple[str, ...] = ()  # old spellings that still work, with a warning

    @property
    def dest(self) -> str:
        return "dllm_" + self.flag.removeprefix("--").replace("-", "_")

    @property
    def ini(self) -> str:
        return self.dest


SPECS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "--config",
        "text",
        f"YAML grid to run (default: {DEFAULT_CONFIG} under the rootdir)",
        "PATH",
        env="DLLM_BENCH_CONFIG",
    ),
    OptionSpec(
        "--output-dir",
        "text",
        "directory for the CSV files, log and manifest; its parent must exist "
        "(default: a new results/<config>-<time>/ per run)",
        "DIR",
        env="DLLM_BENCH_OUTPUT_DIR",
    ),
    OptionSpec(
        "--resume",
        "flag",
        "skip the cases that already have an ok row in --output-dir "
        "(default: the newest run of this config file with the same content)",
    ),
    OptionSpec(
        "--allow-oom",
        "flag",
        "report a case that runs out of memory as skipped instead of failed (its row keeps status oom)",
    ),
    OptionSpec(
        "--gate",
        "list",
        "fail the session if METRIC moved past N%% against --gate-reference in the "
        "bad direction, e.g. tokens_per_s:-10%% or latency_mean_s:+15%% (repeatable)",
        "METRIC:+-N%",
    ),
    OptionSpec(
        "--gate-reference",
        "text",
        "the run --gate compares against: a raw_metrics.csv or a run directory "
        "(--gate-baseline is the old, deprecated spelling)",
        "PATH",
        env="DLLM_BENCH_GATE_REFERENCE",
        deprecated=("--gate-baseline",),
    ),
    OptionSpec(
        "--gate-allow-missing",
        "flag",
        "let --gate pass when it could compare nothing, or when a case "
        "with a reference row has no value to compare (default: that fails the gate)",
    ),
    OptionSpec(
        "--shard", "text", "run only shard I (0-based) of K cost-balanced shards of the grid (SLURM job arrays)", "I/K"
    ),
    OptionSpec(
        "--progress",
        "choice",
        "progress display: bar (tqdm bars), log (a progress line in the log "
        "every 10%% of the cases or 30 s), off; auto (default) is bar on a terminal and log elsewhere",
        env="DLLM_BENCH_PROGRESS",
        choices=MODES,
    ),
    OptionSpec(
        "--model-cache-dir",
        "text",
        f"where random-init model folders are written and reused (default: {DEFAULT_CACHE})",
        "DIR",
        env="DLLM_BENCH_CACHE",
    ),
    OptionSpec(
        "--no-report",
        "flag",
        "do not write report.html and report_figures/ at the end of the run (default: write them)",
    ),
    OptionSpec(
        "--threads",
        "int",
        "torch CPU threads per process for CPU runs (default: the grid's threads "
        "key, else 1 per process; see the README's 'Stable numbers')",
        "N",
        env="DLLM_BENCH_THREADS",
    ),
)


@dataclass(frozen=True)
class Options:
    """The suite's options as the session uses them."""

    config: Path | None
    output_dir: str | None
    resume: bool
    allow_oom: bool
    gates: tuple[str, ...]
    gate_reference: Path | None
    gate_allow_missing: bool
    shard: str | None
    progress: str
    model_cache_dir: Path
    threads: int | None
    given: tuple[str, ...]
    report: bool = True

    @property
    def asked(self) -> bool:
        """Whether a suite option was given on the command line."""
        return bool(self.given)


def register(parser: pytest.Parser) -> None:
    group = parser.getgroup(GROUP, "dllm-bench: diffusion vs autoregressive inference benchmark")
    for spec in SPECS:
        extra = f" [ini: {spec.ini}{', env: ' + spec.env if spec.env else ''}]"
        names = (spec.flag, *spec.deprecated)
        if spec.kind == "flag":
            group.addoption(*names, dest=spec.dest, action="store_true", default=None, help=spec.help + extra)
        elif spec.kind == "list":
            group.addoption(
                *names, dest=spec.dest, action="append", default=None, metavar=spec.metavar, help=spec.help + extra
            )
        else:
            group.addoption(
                *names,
                dest=spec.dest,
                default=None,
                metavar=spec.metavar,
                choices=spec.choices or None,
                help=spec.help + extra,
            )
        ini_type = {"flag": "bool", "list": "linelist"}.get(spec.kind, "string")
        parser.addini(spec.ini, f"ini twin of {spec.flag}", type=ini_type)  # type: ignore[arg-type]


def _raw(config: pytest.Config, spec: OptionSpec, env: Mapping[str, str]) -> object:
    """The first value found: command line, environment, ini; None if none."""
    value = config.getoption(spec.dest)
    if value is not None:
        return value
    if spec.env and env.get(spec.env):
        return [env[spec.env]] if spec.kind == "list" else env[spec.env]
    ini = config.getini(spec.ini)
    return ini if ini not in ("", [], None, False) else None


def _int(spec: OptionSpec, value: object) -> int | None:
    if value is None:
        return None
    try:
        number = int(str(value))
    except ValueError:
        raise OptionError(f"{spec.flag} {value!r}: expected a positive integer") from None
    if number < 1:
        raise OptionError(f"{spec.flag} {value!r}: expected a positive integer")
    return number


def read(config: pytest.Config, env: Mapping[str, str] | None = None) -> Options:
    """All suite options, read once. Raises OptionError for a value that cannot be used."""
    env = os.environ if env is None else env
    _warn_deprecated(config)
    raw = {spec.dest: _raw(config, spec, env) for spec in SPECS}
    given = tuple(spec.flag for spec in SPECS if config.getoption(spec.dest) is not None)
    progress = str(raw["dllm_progress"] or "auto")
    if progress not in MODES:
        raise OptionError(f"--progress {progress!r}: expected one of {', '.join(MODES)}")
    gates: Sequence[str] = raw["dllm_gate"] or ()  # type: ignore[assignment]
    cache = raw["dllm_model_cache_dir"]
    return Options(
        config=Path(str(raw["dllm_config"])) if raw["dllm_config"] else None,
        output_dir=None if raw["dllm_output_dir"] is None else str(raw["dllm_output_dir"]),
        resume=bool(raw["dllm_resume"]),
        allow_oom=bool(raw["dllm_allow_oom"]),
        gates=tuple(str(g) for g in gates),
        gate_reference=Path(str(raw["dllm_gate_reference"])) if raw["dllm_gate_reference"] else None,
        gate_allow_missing=bool(raw["dllm_gate_allow_missing"]),
        shard=None if raw["dllm_shard"] is None else str(raw["dllm_shard"]),
        progress=progress,
        model_cache_dir=Path(str(cache) if cache else str(DEFAULT_CACHE)).expanduser(),
        threads=_int(next(s for s in SPECS if s.flag == "--threads"), raw["dllm_threads"]),
        given=given,
        report=not raw["dllm_no_report"],
    )


def _warn_deprecated(config: pytest.Config) -> None:
    args = [str(arg).split("=", 1)[0] for arg in config.invocation_params.args]
    for spec in SPECS:
        for old in spec.deprecated:
            if old in args:
                config.issue_config_time_warning(
                    pytest.PytestDeprecationWarning(f"{old} is deprecated: write {spec.flag} (same meaning)"),
                    stacklevel=2,
                )


def flags() -> tuple[str, ...]:
    """Every flag of the suite (the README documents each; a test checks)."""
    return tuple(spec.flag for spec in SPECS)
