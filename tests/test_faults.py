"""Faults a benchmark run meets in the wild, each reproduced with real runs and real files:
damaged or removed result files before a resume, short writes and full disks, a second run
in the same directory, resume matching, unreadable files, planted or damaged model-cache
folders, and out-of-memory on the CPU. The promise under test: no finished row is lost,
nothing is silently wrong, and the user gets one clear line, never a traceback.

Runs are in-process (`_run_in_process`) except where the fault needs a process of its own:
a full disk (a tmpfs), a second process holding the run directory, and remote model code
(transformers reads HF_MODULES_CACHE once, at import).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import yaml

from dllm_bench.backends.llada import write_llada_folder
from dllm_bench.config import parse_config
from dllm_bench.logs import close_quietly
from dllm_bench.models.loader import random_init_folder
from dllm_bench.models.random_init import CACHE_MANIFEST, folder_key
from dllm_bench.rows import Row
from dllm_bench.sinks.csvfiles import append_row, read_results
from tests.helpers import (
    BENCH_TEST_FILE,
    FINAL,
    PARTIAL,
    TINY_LLADA_ARCH,
    add_conftest,
    assert_exit,
    finish,
    manifest,
    output_of,
    rows,
    slow_grid,
    start_pytest,
    tiny_config,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow

TINY_IDS = ["tiny-llada-p8-g8-b2-s4-k8", "tiny-llada-p8-g8-b2-s8-k8", "tiny-llama-p8-g8-b2"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")


def _run(project: Path, *args: str, output_dir: str | None = "out", config: str = "grid.yaml") -> tuple[int, str]:
    proc = start_pytest(project, *args, output_dir=output_dir, config=config)
    code = finish(proc)
    text = output_of(project)
    (project / "pytest-output.txt").unlink()
    return code, text


def _run_in_process(
    project: pytest.Pytester, *args: str, output_dir: str | None = "out", config: str = "grid.yaml"
) -> tuple[int, str]:
    """`_run` in this process (pytester's in-process run): the exit code and the output."""
    where = ["--output-dir", output_dir] if output_dir is not None else []
    result = project.runpytest_inprocess("-p", "no:cacheprovider", "--config", config, *where, *args)
    return int(result.ret), result.stdout.str() + "\n" + result.stderr.str()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Path:
    """The run directory of one finished run of the tiny grid, run once for the module;
    tests that damage it work on a copy (`_finished_run`)."""
    project = tmp_path_factory.mktemp("finished-run")
    (project / "test_bench.py").write_text(BENCH_TEST_FILE, encoding="utf-8")
    write_config(project, tiny_config())
    proc = start_pytest(project, env={"HF_HUB_OFFLINE": "1", "DLLM_BENCH_CACHE": str(model_cache_dir)})
    assert_exit(proc, project, 0)
    assert _ids(project / "out" / FINAL) == TINY_IDS
    return project / "out"


def _finished_run(project: pytest.Pytester, finished_run: Path) -> Path:
    """A copy of `finished_run` as `out` in the project, with the grid that wrote it."""
    write_config(project.path, tiny_config())
    out = project.path / "out"
    shutil.copytree(finished_run, out)
    return out


def _ids(path: Path) -> list[str]:
    return sorted(row.case_id for row in rows(path))


# --- a damaged partial file: resume keeps every readable row, refuses a file that is not one ---

DAMAGES: dict[str, Callable[[Path], None]] = {
    "removed": lambda p: p.unlink(),
    "empty": lambda p: p.write_bytes(b""),
    "header only": lambda p: p.write_bytes(p.read_bytes().split(b"\n", 1)[0] + b"\n"),
    "no header": lambda p: p.write_bytes(p.read_bytes().split(b"\n", 1)[1]),
    "utf-8 BOM": lambda p: p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes()),
}


@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_resume_after_a_damaged_partial_file_keeps_every_row(
    bench_project: pytest.Pytester, finished_run: Path, damage: str
) -> None:
    out = _finished_run(bench_project, finished_run)
    DAMAGES[damage](out / PARTIAL)
    code, text = _run_in_process(bench_project, "--resume")
    assert code == 0, text[-3000:]
    assert "Traceback" not in text
    final = rows(out / FINAL)
    assert sorted(r.case_id for r in final) == TINY_IDS, "the final file keeps every row the directory held"
    assert all(r.ok for r in final)
    assert "all 3 selected cases already have ok rows" in text
    assert manifest(out)["status"] == "complete"


def test_a_partial_file_with_a_garbage_header_is_refused_with_the_file_named(
    bench_project: pytest.Pytester, finished_run: Path
) -> None:
    out = _finished_run(bench_project, finished_run)
    before = (out / FINAL).read_bytes()
    (out / PARTIAL).write_bytes(b"name,value\nx,1\n")
    code, text = _run_in_process(bench_project, "--resume")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert f"{out / PARTIAL} is not a dllm-bench results file" in text
    assert "Traceback" not in text and "INTERNALERROR" not in text
    assert (out / FINAL).read_bytes() == before


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"tiny-llada,\xe2\x82\n", "not UTF-8"),
        (b'"' + b"x" * 200_000 + b'",ok\n', "not a CSV line"),
    ],
    ids=["torn multi-byte character", "field over 128 KiB"],
)
def test_unreadable_lines_are_skipped_and_logged_on_resume(
    bench_project: pytest.Pytester, finished_run: Path, caplog: pytest.LogCaptureFixture, line: bytes, why: str
) -> None:
    out = _finished_run(bench_project, finished_run)
    with (out / PARTIAL).open("ab") as handle:
        handle.write(line)
    code, text = _run_in_process(bench_project, "--resume")
    assert code == 0, text[-3000:]
    assert "INTERNALERROR" not in text and "Traceback" not in text
    assert _ids(out / FINAL) == TINY_IDS
    assert why in (out / "benchmark.log").read_text(errors="replace")
    # Read (and reported) once when the run starts and once when it saves, not a third
    # time to find the cases already done. The first report comes before pytest's live log
    # starts (a process without handlers prints it on stderr): count the records, which reach
    # this test's caplog from the in-process run.
    reported = [r for r in caplog.records if f"{out / PARTIAL}: skipped line" in r.getMessage()]
    assert len(reported) == 2, caplog.text[-3000:]
    assert all(r.levelno == logging.WARNING for r in reported)


def test_a_partial_file_that_is_a_directory_is_refused(bench_project: pytest.Pytester, finished_run: Path) -> None:
    out = _finished_run(bench_project, finished_run)
    (out / PARTIAL).unlink()
    (out / PARTIAL).mkdir()
    code, text = _run_in_process(bench_project, "--resume")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert "INTERNALERROR" not in text and "Traceback" not in text
    assert PARTIAL in text


def test_a_symlinked_partial_file_is_refused_not_followed(bench_project: pytest.Pytester, finished_run: Path) -> None:
    out = _finished_run(bench_project, finished_run)
    elsewhere = bench_project.path / "elsewhere.csv"
    shutil.move(out / PARTIAL, elsewhere)
    (out / PARTIAL).symlink_to(elsewhere)
    before = elsewhere.read_bytes()
    code, text = _run_in_process(bench_project, "--resume")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert "symbolic link" in text
    assert elsewhere.read_bytes() == before


# --- a failing log flush and a full disk: a clean stop, then resume completes ------------------


@contextlib.contextmanager
def _small_disk(path: Path, size_kib: int) -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about `leave_bytes` free on `disk`."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as handle:
        handle.write(b"\0" * max(0, free - leave_bytes))
    return filler


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_log_file_whose_last_flush_fails_is_closed_with_the_error_returned() -> None:
    handler = logging.FileHandler("/dev/full", mode="a", encoding="utf-8", delay=False)
    assert handler.stream is not None
    handler.stream.write("a record that cannot reach the disk\n")  # buffered: the flush fails
    error = close_quietly(handler)
    assert error is not None and "No space left on device" in error
    assert handler.stream is None
    handler.close()  # what pytest's logging plugin does next: nothing left to fail


FULL_DISK_GRID = {"prompt_length": [8, 16], "gen_length": [8], "batch_size": [1, 2, 4]}  # 18 cases


# What a run of FULL_DISK_GRID does with so many KiB free at its start: exit code, and
# whether it stopped before all 18 rows were in the partial file.
FULL_DISK_OUTCOMES = {
    6: pytest.ExitCode.USAGE_ERROR,  # the manifest and its reserve do not fit: nothing runs
    20: pytest.ExitCode.TESTS_FAILED,  # stops at the first row
    28: pytest.ExitCode.TESTS_FAILED,  # stops after some rows
}


@needs_root
@pytest.mark.parametrize("free_kib", list(FULL_DISK_OUTCOMES), ids=lambda k: f"{k}KiB-free")
def test_a_full_disk_stops_cleanly_and_resume_completes(
    project: Path, tmp_path_factory: pytest.TempPathFactory, free_kib: int
) -> None:
    """18 rows, the log, the manifest and its 8 KiB reserve need more than 28 KiB of 4 KiB
    tmpfs pages: with 6 KiB free the run cannot start, with 20 or 28 KiB it stops before the
    last case. The disk is large (2 MiB) so that the resume, with the filler gone, also has
    room for the report."""
    write_config(project, tiny_config(grid=FULL_DISK_GRID))
    with _small_disk(tmp_path_factory.mktemp("disk") / "mnt", 2048) as disk:
        filler = _fill(disk, free_kib * 1024)
        code, text = _run(project, output_dir=str(disk / "out"))
        out = disk / "out"
        assert "INTERNALERROR" not in text and "Traceback" not in text, text[-3000:]
        assert code == FULL_DISK_OUTCOMES[free_kib], text[-3000:]
        if code == pytest.ExitCode.TESTS_FAILED:
            saved = rows(out / PARTIAL)
            assert "disk full" in text
            assert "resume with: pytest" in text
            lines = (out / PARTIAL).read_bytes().split(b"\n")
            assert lines[-1] == b"", "no torn line left behind by a failed append"
            assert len(saved) < 18, "the disk filled up before the last row"
            assert text.rstrip().splitlines()[-1].startswith("dllm-bench: RESULTS NOT FULLY SAVED"), text[-2000:]
            assert manifest(out)["status"] == "failed"
        else:
            assert "disk full" in text
            assert not (out / "run_manifest.json").exists(), "a run that never started leaves no manifest"
        filler.unlink()
        code, text = _run(project, "--resume", output_dir=str(out))
        assert code == 0, text[-3000:]
        assert len(rows(out / FINAL)) == 18
        assert manifest(out)["status"] == "complete"


# --- one run per directory: a second run into a locked one is refused --------------------------


# Holds the first run after its first case until the file "go" exists.
HOLD_CONFTEST = """
import pathlib
import time


def pytest_runtest_teardown(item):
    pathlib.Path("holding").touch()
    while not pathlib.Path("go").exists():
        time.sleep(0.05)
"""


@pytest.mark.parametrize("second_args", [(), ("--resume",)], ids=["plain", "resume"])
def test_a_second_run_into_the_same_directory_is_refused(
    project: Path, bench_project: pytest.Pytester, second_args: tuple[str, ...]
) -> None:
    """The first run is a process of its own (it holds the directory); the second runs here."""
    slow_grid(project)
    add_conftest(project, HOLD_CONFTEST)
    first = start_pytest(project)
    wait_for(lambda: (project / "holding").exists(), first, "the first run is between cases")
    shutil.copy(project / "grid.yaml", bench_project.path)
    code, text = _run_in_process(bench_project, *second_args, output_dir=str(project / "out"))
    (project / "go").touch()
    assert code == pytest.ExitCode.USAGE_ERROR
    assert f"is in use by process {first.pid}" in text
    assert finish(first) == 0, output_of(project)[-3000:]
    ids = [row.case_id for row in rows(project / "out" / PARTIAL)]
    assert len(ids) == len(set(ids)) == 9, "one row per case: the second run wrote nothing"


# --- resume without --output-dir: the run of the same config path and content ------------------


def test_resume_without_output_dir_matches_the_config_path_and_content(bench_project: pytest.Pytester) -> None:
    project = bench_project.path
    for team in ("teamA", "teamB"):
        (project / team).mkdir()
    write_config(project / "teamA", tiny_config())
    write_config(project / "teamB", tiny_config(measured_rounds=1))
    code, text = _run_in_process(bench_project, output_dir=None, config="teamA/grid.yaml")
    assert code == 0, text[-2000:]
    (run,) = (project / "results").iterdir()
    before = (run / FINAL).read_bytes()
    code, text = _run_in_process(bench_project, "--resume", output_dir=None, config="teamB/grid.yaml")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert "no earlier run of teamB/grid.yaml with this content" in text
    assert (run / FINAL).read_bytes() == before
    # The same path with changed content is not the same run either.
    write_config(project / "teamA", tiny_config(seed=5))
    code, text = _run_in_process(bench_project, "--resume", output_dir=None, config="teamA/grid.yaml")
    assert code == pytest.ExitCode.USAGE_ERROR
    assert "the config's content changed since" in text


# --- the model cache: planted, damaged, foreign or unusable folders, leftovers -----------------


def _cache_folder(cache: Path) -> Path:
    return cache / f"llada-{folder_key('llada', TINY_LLADA_ARCH, 0, 'float32')}"


def _llada_only(project: Path, cache: Path) -> None:
    config = tiny_config()
    config["models"] = config["models"][:1]
    write_config(project, config)
    cache.mkdir(exist_ok=True)


def _fill_cache(project: Path, cache: Path) -> Path:
    """The cache folder of the project's LLaDA model, written as a run writes it."""
    (spec,) = parse_config(yaml.safe_load((project / "grid.yaml").read_text()), project / "grid.yaml").models
    return random_init_folder(spec, cache, torch.float32)


def test_a_planted_cache_folder_is_refused_and_its_code_never_runs(
    bench_project: pytest.Pytester, tmp_path: Path
) -> None:
    project = bench_project.path
    cache = tmp_path / "shared-cache"
    _llada_only(project, cache)
    planted = _cache_folder(cache)
    write_llada_folder(planted, TINY_LLADA_ARCH, seed=0, dtype=torch.float32)
    (planted / CACHE_MANIFEST).unlink()
    marker = tmp_path / "evil-ran"
    (planted / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    code, text = _run_in_process(bench_project, "--model-cache-dir", str(cache))
    assert code == pytest.ExitCode.TESTS_FAILED
    assert f"model cache folder {planted} has no valid {CACHE_MANIFEST}" in text
    assert not marker.exists()
    assert {r.status for r in rows(project / "out" / FINAL)} == {"error"}


@pytest.mark.parametrize(
    "how", ["group-writable", "group-writable weights", "not owned", "truncated weights", "extra file"]
)
def test_a_damaged_or_foreign_cache_folder_fails_once_with_what_to_do(
    bench_project: pytest.Pytester, tmp_path: Path, how: str
) -> None:
    project = bench_project.path
    cache = tmp_path / "cache"
    _llada_only(project, cache)
    folder = _fill_cache(project, cache)
    assert folder == _cache_folder(cache)
    if how == "group-writable":
        folder.chmod(0o775)
    elif how == "group-writable weights":
        (folder / "model.safetensors").chmod(0o664)
    elif how == "not owned":
        if os.geteuid() != 0:
            pytest.skip("changing a folder's owner needs root (CI runs as root)")
        os.chown(folder, 65534, 65534)
    elif how == "truncated weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (folder / "extra.py").write_text("x = 1\n")
    code, text = _run_in_process(bench_project, "--model-cache-dir", str(cache), output_dir="again")
    assert code == pytest.ExitCode.TESTS_FAILED
    assert f"remove {folder} to have it written again" in text
    assert "Traceback" not in text
    log = (project / "again" / "benchmark.log").read_text()
    assert log.count("case tiny-llada-p8-g8-b2-s8-k8: error") == 1
    assert log.count("loaded model") == 0


def test_a_cache_dir_that_is_a_file_fails_each_case_without_retrying(
    bench_project: pytest.Pytester, tmp_path: Path
) -> None:
    project = bench_project.path
    write_config(project, tiny_config())
    cache = tmp_path / "cache-file"
    cache.write_text("not a folder")
    code, text = _run_in_process(bench_project, "--model-cache-dir", str(cache))
    assert code == pytest.ExitCode.TESTS_FAILED
    assert "is not a folder; pass --model-cache-dir with a folder" in text
    statuses = [r.status for r in rows(project / "out" / FINAL)]
    assert statuses == ["error"] * 3


def test_a_killed_writers_temporary_folder_is_removed(bench_project: pytest.Pytester, tmp_path: Path) -> None:
    project = bench_project.path
    cache = tmp_path / "cache"
    _llada_only(project, cache)
    stale = cache / f".{_cache_folder(cache).name}.tmp-abandoned"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 4096)
    code, text = _run_in_process(bench_project, "--model-cache-dir", str(cache), "-k", "s4")
    assert code == 0, text[-2000:]
    assert not stale.exists()
    assert f"removed {stale}" in (project / "out" / "benchmark.log").read_text()


def test_a_local_folder_without_weights_says_what_to_do(bench_project: pytest.Pytester, tmp_path: Path) -> None:
    project = bench_project.path
    folder = tmp_path / "checkpoint"
    write_llada_folder(folder, TINY_LLADA_ARCH, seed=0, dtype=torch.float32)
    (folder / "model.safetensors").unlink()
    config = tiny_config()
    config["models"] = [{"name": "local", "kind": "llada", "source": str(folder), "device": "cpu"}]
    write_config(project, config)
    code, text = _run_in_process(bench_project)
    assert code == pytest.ExitCode.TESTS_FAILED
    assert "has no weights file" in text and "download the checkpoint completely" in text


# --- out of memory on the CPU: both kinds of error are oom rows, --allow-oom exits 0 -----------

MEMORY_ERRORS = {
    "MemoryError": "raise MemoryError()",
    "allocator": "raise RuntimeError('[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: "
    "can\\'t allocate memory: you tried to allocate 99999999999 bytes.')",
}


@pytest.mark.parametrize("kind", list(MEMORY_ERRORS))
def test_cpu_out_of_memory_is_oom_and_allow_oom_applies(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    folder = tmp_path / "hungry-llada"
    write_llada_folder(folder, TINY_LLADA_ARCH, seed=0, dtype=torch.float32)
    modeling = folder / "modeling_llada.py"
    modeling.write_text(
        modeling.read_text() + "\n\n_forward = LLaDAModelLM.forward\n\n\n"
        "def _hungry(self, input_ids, *args, **kwargs):\n"
        "    if input_ids.shape[0] >= 2:\n"
        f"        {MEMORY_ERRORS[kind]}\n"
        "    return _forward(self, input_ids, *args, **kwargs)\n\n\n"
        "LLaDAModelLM.forward = _hungry\n"
    )
    config = tiny_config(grid={"prompt_length": [8], "gen_length": [8], "batch_size": [2, 1]})
    config["models"] = [
        {"name": "hungry", "kind": "llada", "source": str(folder), "device": "cpu", "trust_remote_code": True}
    ]
    write_config(project, config)
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    code, text = _run(project, "--allow-oom")
    assert code == 0, text[-3000:]
    statuses = sorted((r.batch_size, r.status) for r in rows(project / "out" / FINAL))
    assert statuses == [(1, "ok"), (1, "ok"), (2, "oom"), (2, "oom")]


# --- CSV cells that a spreadsheet would evaluate -----------------------------------------------


def test_formula_like_text_is_escaped_in_the_csv_and_read_back_as_written(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    row = Row(case_id="c", status="error", error='=HYPERLINK("http://x")', source="+cmd", host="-h", model="@m")
    append_row(path, row)
    text = path.read_text()
    assert "'=HYPERLINK" in text and "'+cmd" in text and "'-h" in text and "'@m" in text
    assert read_results(path) == [row]
    assert Row(case_id="n", latency_mean_s=-1.5).latency_mean_s == -1.5
    negative = tmp_path / "n.csv"
    append_row(negative, Row(case_id="n", tpot_s=-0.5))
    assert "-0.500000" in negative.read_text(), "numbers are not escaped"


SHIPPED_LLADA_GRID = {
    "models": [{"name": "tasks-llada", "kind": "llada", "source": "trained:tasks-llada", "device": "cpu"}],
    "grid": {"task": "random", "prompt_length": [11], "gen_length": [12], "batch_size": [1, 2]},
    "llada": {"steps": [12], "block_length": [12]},
    "warmup_rounds": 0,
    "measured_rounds": 1,
}


@needs_root
@pytest.mark.parametrize("free_kib", [20, 40], ids=lambda k: f"{k}KiB-free")
def test_a_final_output_the_disk_cannot_take_fails_the_run_and_the_manifest_is_final(
    project: Path, tmp_path_factory: pytest.TempPathFactory, free_kib: int
) -> None:
    """Issue 22: with 20 KiB free the final manifest did not fit (it kept 'running', exit 0);
    with 40 KiB the report did not (exit 0). Now the reserve holds the manifest's room, and
    any final file that cannot be written fails the run with the closing line."""
    write_config(project, SHIPPED_LLADA_GRID)
    with _small_disk(tmp_path_factory.mktemp("disk") / "mnt", 200) as disk:
        filler = _fill(disk, free_kib * 1024)
        out = disk / "out"
        code, text = _run(project, output_dir=str(out))
        assert "INTERNALERROR" not in text and "Traceback" not in text, text[-3000:]
        assert code == pytest.ExitCode.TESTS_FAILED, text[-3000:]
        last_line = text.rstrip().splitlines()[-1]
        assert last_line.startswith("dllm-bench: RESULTS NOT FULLY SAVED: cannot write"), text[-2000:]
        final = manifest(out)
        assert final["status"] == "failed"
        assert final["reason"].startswith(f"cannot write {out}") and final["reason"].endswith("disk full")
        assert not (out / ".dllm-bench-reserve").exists()
        filler.unlink()
        code, text = _run(project, "--resume", output_dir=str(out))
        assert code == 0, text[-3000:]
        assert len(rows(out / FINAL)) == 2
        assert manifest(out)["status"] == "complete"
        assert (out / "report.html").is_file()
