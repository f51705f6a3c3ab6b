"""Log lines for journald or a terminal: one line per event, on stderr.

Text lines carry no timestamp under systemd (journald adds its own, and sets $JOURNAL_STREAM);
`--log-format json` prints one JSON object per line with the task fields as keys.
"""

from __future__ import annotations

import json
import logging
import os
import sys

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


def setup(log_format: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
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
