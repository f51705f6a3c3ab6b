"""Every check of the config file that tests/test_config.py does not already pin, each with its
exact message and line, and the values that keys turn into: the field declarations in
edgeworker/config.py must keep all of them."""

from pathlib import Path

import pytest

from edgeworker.config import parse_config
from edgeworker.errors import ConfigError

JOB = '[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1m"\n'


@pytest.mark.parametrize("text, expected", [
    ('[worker]\ndatabase = ""\n', ':2: [worker] database: must be a path (a string)'),
    ("[worker]\npython_path = 3\n",
     ":2: [worker] python_path: must be a directory or a list of directories"),
    ('[worker]\npython_path = ["lib", ""]\n',
     ":2: [worker] python_path: must be a path (a string)"),
    ("[worker]\nwait_for_clock_sync = 1\n",
     ":2: [worker] wait_for_clock_sync: 1 is not one of: auto, true or false"),
    ("[worker]\nping_url = 5\n",
     ":2: [worker] ping_url: must be an http:// or https:// URL (a string)"),
    ('[worker]\nping_url = "http://[::1/p"\n',
     ":2: [worker] ping_url: 'http://[::1/p' is not a URL: Invalid IPv6 URL"),
    ('[worker]\nping_url = "http://a b"\n',
     ":2: [worker] ping_url: 'http://a b' contains white space"),
    ("[worker]\nworkers = true\n", ":2: [worker] workers: True is not a whole number from 1 to 64"),
    ('[worker]\nlog_level = "trace"\n',
     ":2: [worker] log_level: 'trace' is not one of: debug, info, warning, error"),
    ("worker = 1\n", ": [worker] must be a table"),
    ("jobs = 1\n", ": 'jobs' must be an array of tables: write each job as [[jobs]]"),
    ("jobs = [1]\n", ": jobs #1 must be a table ([[jobs]])"),
    ('[[jobs]]\ncommand = "true"\nevery = "1m"\n',
     ":1: jobs #1: name: missing; every job needs a unique name"),
    ('[[jobs]]\nname = "a"\ncommand = ""\nevery = "1m"\n', ':3: job "a": command: is empty'),
    ('[[jobs]]\nname = "a"\ncommand = []\nevery = "1m"\n',
     ':3: job "a": command: must be a string or a non-empty list of strings'),
    ('[[jobs]]\nname = "a"\ncallable = "nodots"\nevery = "1m"\n',
     ":3: job \"a\": callable: 'nodots' is not of the form package.module:function"),
    (JOB + "env = { A = 1 }\n",
     ':5: job "a": env: must be a table of strings, e.g. env = { LANG = "C" }'),
    (JOB + 'cwd = ""\n', ':5: job "a": cwd: must be a directory path'),
    ('[[jobs]]\nname = "a"\ncommand = "true"\ncron = "0 * * * *"\ntimezone = ""\n',
     ':5: job "a": timezone: must be an IANA time zone name such as "Europe/Berlin" or "UTC"'),
    (JOB + 'timezone = "UTC"\n', ":5: job \"a\": timezone: only applies to 'cron' schedules"),
    (JOB + 'enabled = "yes"\n', ':5: job "a": enabled: must be true or false'),
    (JOB + "env_file = 3\n", ':5: job "a": env_file: must be a path (a string)'),
    (JOB + "ping_url = 1\n",
     ':5: job "a": ping_url: must be an http:// or https:// URL (a string)'),
])
def test_each_check_names_file_line_and_what_is_allowed(text, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("/etc/e.toml"))
    assert str(info.value) == "/etc/e.toml" + expected


def test_values_the_keys_turn_into(monkeypatch):
    monkeypatch.setenv("HOME", "/home/pi")
    config = parse_config('[worker]\nwait_for_clock_sync = false\nretention = "off"\n'
                          'python_path = "lib"\nalert_after = "off"\ndatabase = "~/ew.db"\n'
                          'log_level = "debug"\nbusy_timeout = "1d"\n' + JOB +
                          'env = { B = "2", A = "1" }\nenv_file = "s.env"\nmax_attempts = 1000\n',
                          Path("/etc/ew/e.toml"))
    worker, job = config.worker, config.jobs[0]
    assert (worker.wait_for_clock_sync, worker.retention, worker.alert_after) == ("no", None, 0.0)
    assert (worker.python_path, worker.database) == (("/etc/ew/lib",), "/home/pi/ew.db")
    assert (worker.log_level, worker.busy_timeout) == ("debug", 86400.0)
    assert (job.kind, job.target, job.every, job.shell, job.isolate) == (
        "command", "true", 60.0, False, False)
    assert (job.env, job.env_file, job.max_attempts) == (
        (("A", "1"), ("B", "2")), "/etc/ew/s.env", 1000)
    assert parse_config("[worker]\nwait_for_clock_sync = true\n").worker.wait_for_clock_sync \
        == "yes"
    assert parse_config('[worker]\nretention = "forever"\n').worker.retention is None
    assert parse_config('[metrics]\ninterval = "100ms"\n').metrics.interval == 0.1
