"""Durations as people write them in the config file and on the command line: `500ms`, `30s`,
`5m`, `1h30m`, `7d`, read into seconds and written back. Imports nothing from edgeworker, so any
module may use it.
"""

from __future__ import annotations

import re

DURATION_HELP = "a duration such as 500ms, 30s, 5m, 1h30m or 7d"
# Every duration is bounded: a year is plenty for anything a box schedules, and far larger values
# overflow date arithmetic at run time (timedelta, year 9999).
LONGEST = 365 * 86400.0

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`1h30m` -> 5400.0 seconds. Raises ValueError naming what is allowed."""
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not {DURATION_HELP} (give it as a string with a unit)")
    spec = text.strip().replace(" ", "")
    pos, total = 0, 0.0
    for match in _PART.finditer(spec):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not spec or pos != len(spec):
        raise ValueError(f"{text!r} is not {DURATION_HELP}")
    return total


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration, for display: 5400 -> '1h30m'."""
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    out, rest = [], seconds
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if rest >= size:
            out.append(f"{int(rest // size)}{unit}")
            rest -= (rest // size) * size
    if rest or not out:
        out.append(f"{rest:g}s")
    return "".join(out)
