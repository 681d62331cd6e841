"""Real `python -m pytest` processes without paying for the imports each time.

Most of a short `python -m pytest` run of the suite is spent importing torch, transformers,
pytest's plugins and the suite (about 4 s of CPU on the 2-core CI machine), and the tests
start about fifty of them. A *prestarted interpreter* does those imports once per test
process and then forks one child per run: the child is a real process of its own (its own
session and process group, pid, signal dispositions, file descriptors and exit status), set
up as a fresh `python -m pytest` would be, and runs pytest's `__main__` module. Only the
import phase is shared, so a test about the imports themselves (Ctrl+C while torch loads)
starts a fresh interpreter instead (`start_pytest(..., fresh=True)`).

The server never runs torch code and starts no threads before it forks, so the children
inherit no thread pools or held locks. It listens on a Unix socket; a client connects, sends
one JSON line (argv, cwd, environment, and a log file or, passed with the line, the child's
stdin, stdout and stderr: a pseudo-terminal, pipes) and reads back `pid N` and, when the child
has ended, `exit CODE` (the Popen convention: minus the signal number when a signal ended
it). The server ends when its standard input closes, that is with the test process.

Run as `python -m tests.prestarted SOCKET_PATH` (the server), or as
`python tests/prestarted.py --pytest SOCKET_PATH ARGS...`: a stand-in for `python -m pytest
ARGS` (its environment, working directory and standard streams; the run's exit status) that a
script under test can be given as its Python (see `launcher_script`).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import io
import json
import os
import runpy
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

# What every run of the suite imports (the heavy part of a start); done once, in the server.
PRELOAD = (
    "torch",
    "transformers",
    "pytest",
    "dllm_bench.plugin",
    "dllm_bench.fixture",
    "dllm_bench.sinks.report.writer",
)
# transformers' model classes resolve lazily on first use; the tiny grids use these.
PRELOAD_ATTRIBUTES = ("PreTrainedModel", "LlamaForCausalLM")
#: The environment variable through which the `project` fixture tells `tests.helpers.start_pytest`
#: the server's socket (removed from the environment of the runs it starts).
PRESTARTED_ENV = "DLLM_TEST_PRESTARTED"
REAP_INTERVAL_S = 0.02
READY_TIMEOUT_S = 300.0


def _preload() -> None:
    for name in PRELOAD:
        __import__(name)
    transformers = sys.modules["transformers"]
    for attribute in PRELOAD_ATTRIBUTES:
        getattr(transformers, attribute)
    for entry in importlib.metadata.entry_points(group="pytest11"):
        __import__(entry.module)


# --- the child: a fresh `python -m pytest` from here on ------------------------------------------


def _reset_signals() -> None:
    """The dispositions a fresh interpreter starts with (its parent set SIGINT to SIG_DFL)."""
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # CPython ignores these two at start-up.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def _standard_streams(log: str | None, fds: list[int]) -> None:
    """stdin, stdout and stderr: the three descriptors the client passed, or stdin from
    /dev/null and stdout and stderr appended to `log`; unbuffered."""
    if not fds:
        assert log is not None, "a request names a log file or passes three descriptors"
        out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        fds = [os.open(os.devnull, os.O_RDONLY), out, out]
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", write_through=True)
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    sys.stderr.write(f"{exc.code}\n")
    return 1


def _run_pytest(args: list[str]) -> int:
    """pytest's `__main__` as `python -m pytest ARGS` runs it, then the interpreter's exit steps."""
    sys.argv = ["pytest", *args]
    try:
        runpy.run_module("pytest", run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # what the interpreter does with any uncaught error
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # wait for non-daemon threads, as at exit
    except BaseException:
        traceback.print_exc()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # nothing left to report to
            stream.flush()
    return code


def _child(request: dict[str, Any], fds: list[int], base_path: list[str], others: list[socket.socket]) -> None:
    """Become the requested `python -m pytest` run; never returns."""
    code = 1
    try:
        for sock in others:
            sock.close()
        os.setsid()
        _reset_signals()
        atexit._clear()
        cwd = request["cwd"]
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(request["env"])
        extra = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
        sys.path[:] = [cwd, *extra, *base_path]
        for name in [name for name in sys.modules if name == "tests" or name.startswith("tests.")]:
            del sys.modules[name]
        _standard_streams(request.get("log"), fds)
        code = _run_pytest(request["args"])
    except BaseException:
        traceback.print_exc()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


# --- the server --------------------------------------------------------------------------------------


def _read_request(conn: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """The request and the descriptors passed with it (none, or stdin, stdout, stderr)."""
    data = b""
    fds: list[int] = []
    while not data.endswith(b"\n"):
        chunk, passed, _, _ = socket.recv_fds(conn, 65536, 3)
        if not chunk:
            raise ConnectionError("the client left before sending its request")
        data += chunk
        fds.extend(passed)
    request: dict[str, Any] = json.loads(data)
    return request, fds


def serve(path: str) -> None:
    _preload()
    base_path = sys.path[1:]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    children: dict[int, socket.socket] = {}
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [], REAP_INTERVAL_S)
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            return  # the test process is gone
        if listener in readable:
            conn, _ = listener.accept()
            request, fds = _read_request(conn)
            pid = os.fork()
            if pid == 0:
                _child(request, fds, base_path, [listener, conn, *children.values()])
            for fd in fds:  # the child's now: a terminal or pipe held here would never see its end
                os.close(fd)
            children[pid] = conn
            conn.sendall(f"pid {pid}\n".encode())
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                conn = children.pop(pid)
                with contextlib.suppress(OSError):  # the client gave up on it
                    conn.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
                conn.close()


# --- the client --------------------------------------------------------------------------------------


class PrestartedProcess:
    """A child of the prestarted interpreter, with the parts of `subprocess.Popen` the tests
    use: `pid`, `returncode`, `poll()` and `wait(timeout)`."""

    def __init__(self, path: Path, request: dict[str, Any], stdio: tuple[int, int, int] | None = None) -> None:
        """`stdio`: the child's stdin, stdout and stderr (instead of the request's log file)."""
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._conn.connect(str(path))
        line = json.dumps(request).encode() + b"\n"
        if stdio is None:
            self._conn.sendall(line)
        else:
            sent = socket.send_fds(self._conn, [line], list(stdio))
            self._conn.sendall(line[sent:])
        self._buffer = b""
        self.returncode: int | None = None
        self.pid = int(self._line(None).removeprefix("pid "))

    def _line(self, timeout: float | None) -> str:
        """The next line from the server; "" if none came within `timeout` (None: wait)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self._conn], [], [], left)
            if not ready:
                return ""
            chunk = self._conn.recv(4096)
            if not chunk:
                raise ConnectionError("the prestarted interpreter closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def _update(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            line = self._line(timeout)
            if line:
                self.returncode = int(line.removeprefix("exit "))
                self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._update(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._update(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(["python", "-m", "pytest"], timeout or 0.0)
        return code


class PrestartedInterpreter:
    """The server process for one test process; a `PrestartedProcess` on its socket forks a run
    from it (`tests.helpers.start_pytest` finds the socket in the environment)."""

    def __init__(self, env: dict[str, str]) -> None:
        # A short path of its own: a Unix socket's path has at most 107 bytes.
        self._folder = Path(tempfile.mkdtemp(prefix="dllm-prestarted-"))
        self.socket_path = self._folder / "server.sock"
        repo = Path(__file__).resolve().parent.parent
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.prestarted", str(self.socket_path)],
            cwd=repo,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self._ready = False

    def wait_ready(self) -> None:
        if self._ready:
            return
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], READY_TIMEOUT_S)
        line = self._proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.close()
            raise RuntimeError(f"the prestarted interpreter did not start (exit {self._proc.poll()})")
        self._ready = True

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def launcher_script(path: Path, socket_path: Path) -> Path:
    """Write an executable at `path` that runs `-m pytest ARGS` through the prestarted
    interpreter at `socket_path` (`run_pytest`) and anything else with this Python: a
    stand-in for a script's Python (DLLM_PYTHON) whose pytest runs are forked, not started."""
    this = Path(__file__).resolve()
    path.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -m ] && [ "$2" = pytest ]; then\n'
        "    shift 2\n"
        f'    exec "{sys.executable}" "{this}" --pytest "{socket_path}" "$@"\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n',
        encoding="utf-8",
    )
    path.chmod(0o755)
    return path


def run_pytest(socket_path: str, args: list[str]) -> int:
    """`python -m pytest ARGS` with this process's environment, working directory and standard
    streams, forked by the prestarted interpreter; returns its exit status. A run ended by a
    signal ends this process by the same signal, as the shell would see it."""
    env = {k: v for k, v in os.environ.items() if k != PRESTARTED_ENV}
    request = {"args": args, "cwd": os.getcwd(), "env": env}
    code = PrestartedProcess(Path(socket_path), request, stdio=(0, 1, 2)).wait()
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


if __name__ == "__main__":
    if sys.argv[1] == "--pytest":
        raise SystemExit(run_pytest(sys.argv[2], sys.argv[3:]))
    serve(sys.argv[1])
