"""Where the suite's log records go: the run's `benchmark.log` and the console.

pytest's logging plugin does the work when it is there (`log_file`, live logging); the
suite only fills in what the user left unset. Without that plugin (`-p no:logging`) the
suite attaches its own file handler to the `dllm_bench` logger.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
LOG_NAME = "benchmark.log"
SUITE_LOGGER = "dllm_bench"


def has_logging_plugin(config: pytest.Config) -> bool:
    """False under `-p no:logging` (then none of the log_* options exist)."""
    return not config.pluginmanager.is_blocked("logging")


def configure_pytest_logging(config: pytest.Config, log_path: Path | None, *, live: bool) -> None:
    """Fill in the logging plugin's options the user did not set: the log file (appended),
    its level and format, and live console logging at INFO unless progress bars draw."""
    option = config.option
    if live and config.getoption("log_cli_level") is None and not config.getini("log_cli"):
        option.log_cli_level = "INFO"
    if log_path is not None and config.getoption("log_file") is None and not config.getini("log_file"):
        option.log_file = str(log_path)
    if config.getoption("log_file_level") is None:
        option.log_file_level = "INFO"
    if config.getoption("log_file_format") is None:
        option.log_file_format = LOG_FORMAT
    if config.getoption("log_format") is None:
        option.log_format = LOG_FORMAT
    if config.getoption("log_file_date_format") is None:
        option.log_file_date_format = LOG_DATE_FORMAT
    if config.getoption("log_file_mode") is None:
        option.log_file_mode = "a"


def own_file_handler(log_path: Path) -> logging.Handler:
    """A file handler on the suite's logger, for sessions without pytest's logging plugin."""
    handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    logger = logging.getLogger(SUITE_LOGGER)
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def remove_handler(handler: logging.Handler | None) -> str | None:
    """Detach the suite's own file handler and close it; the error text if its last lines
    could not be written (see `close_quietly`)."""
    if handler is None:
        return None
    logging.getLogger(SUITE_LOGGER).removeHandler(handler)
    return close_quietly(handler)


def close_quietly(handler: logging.Handler) -> str | None:
    """Close a handler whose final flush may fail (a full disk): the file is closed either
    way; the error's text is returned for one line on the console instead of a traceback."""
    try:
        handler.close()
    except OSError as error:
        return str(error)
    return None


def log_file_handlers(config: pytest.Config, own: list[logging.Handler]) -> list[logging.Handler]:
    """The handlers that write the run's log file: pytest's `log_file` handler and the
    suite's own file handler (without the logging plugin); not the console."""
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    handler = getattr(plugin, "log_file_handler", None)
    pytest_file = [handler] if isinstance(handler, logging.Handler) else []
    return pytest_file + [h for h in own if isinstance(h, logging.FileHandler)]


def write_to_log_files(handlers: list[logging.Handler], records: list[logging.LogRecord]) -> None:
    """Hand records to the log file handlers only (the console already showed them)."""
    for handler in handlers:
        for record in records:
            handler.handle(record)


def close_pytest_log_file(config: pytest.Config) -> str | None:
    """Close pytest's `log_file` handler before the logging plugin does, so that a write
    error on its last flush (disk full) is reported in one line, not as an INTERNALERROR.
    The plugin's own close then finds the handler closed and does nothing."""
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    handler = getattr(plugin, "log_file_handler", None)
    if not isinstance(handler, logging.Handler):
        return None
    return close_quietly(handler)
