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


def remove_handler(handler: logging.Handler | None) -> None:
    if handler is None:
        return
    logging.getLogger(SUITE_LOGGER).removeHandler(handler)
    handler.close()
