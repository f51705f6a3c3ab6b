"""Log lines for journald or a terminal: one line per event, on stderr.

Text lines carry no timestamp under systemd (journald adds its own, and sets $JOURNAL_STREAM);
`--log-format json` prints one JSON object per line with the task fields as keys. A traceback
(from `logger.exception`, a thread that dies) becomes one line naming the exception; `--debug`
(log level debug) prints it whole. A condition that lasts (a full disk) is logged once, then
reminded at a bounded rate (`Reminder`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

FIELDS = ("task_id", "job", "attempt", "status", "duration", "recovered", "exit_code")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


REMIND_EVERY = 300.0


class OneLine(logging.Filter):
    """Folds a record's traceback into its line: `message (ValueError: why)`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = record.exc_text = None
        if record.stack_info:
            record.stack_info = None
        message = record.getMessage()
        if "\n" in message:
            message = " | ".join(message.strip().splitlines())
        record.msg, record.args = message, None  # formatted once: the formatter reuses it
        return True


def _log_thread_death(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    logging.getLogger("edgeworker").error(
        "thread %s died", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


class Reminder:
    """Logs a lasting problem once, then at most every `every` seconds, and its end once."""

    def __init__(self, logger: logging.Logger, every: float = REMIND_EVERY):
        self.logger = logger
        self.every = every
        self.problem: str | None = None
        self.next_at = 0.0

    def failing(self, message: str, *args) -> None:
        text = message % args if args else message
        now = time.monotonic()
        if text != self.problem or now >= self.next_at:
            reminder = " (still)" if text == self.problem else ""
            self.logger.error("%s%s", text, reminder)
            self.problem, self.next_at = text, now + self.every

    def resolved(self, message: str) -> None:
        if self.problem is not None:
            self.logger.info("%s", message)
            self.problem = None


def setup(log_format: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if level.lower() != "debug":
        handler.addFilter(OneLine())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(level.upper())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # huey's consumer announces itself at length at INFO; edgeworker says what matters.
    logging.getLogger("huey").setLevel(logging.WARNING)
    # No line shows a thread or process: not looked up for each record (a third of its cost).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    threading.excepthook = _log_thread_death
