import subprocess
import sys
from pathlib import Path

import pytest

from edgeworker.config import format_duration, load_config, parse_config, parse_duration
from edgeworker.errors import ConfigError


@pytest.mark.parametrize("text, seconds", [
    ("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("7d", 604800),
    ("1.5s", 1.5), ("2h 15m", 8100), ("0s", 0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "30x", "s", "1h30", "m5", "-5s", "5 minutes"])
def test_bad_durations_say_what_is_allowed(text):
    with pytest.raises(ValueError, match="a duration such as 500ms, 30s, 5m, 1h30m or 7d"):
        parse_duration(text)


def test_format_duration_round_trips():
    for text in ("500ms", "30s", "5m", "1h30m", "7d", "1d2h3m4s"):
        assert format_duration(parse_duration(text)) == text


FULL = '''
[worker]
database = "data/ew.db"
workers = 3
durability = "normal"
shutdown_timeout = "1m"
retention = "forever"
python_path = ["lib", "/opt/jobs"]
log_format = "json"

[metrics]
textfile = "/var/lib/node_exporter/edgeworker.prom"

[[jobs]]
name = "backup"
command = ["tar", "czf", "/tmp/b.tgz", "/etc"]
every = "1h"
timeout = "10m"
max_attempts = 3
retry_delay = "30s"
catch_up = "once"
jitter = "5m"
env = { LANG = "C" }
cwd = "/tmp"

[[jobs]]
name = "report"
callable = "reports.daily:run"
cron = "0 2 * * *"
timezone = "Europe/Berlin"
catch_up = "all"
catch_up_limit = 3
enabled = false

[[jobs]]
name = "pipe"
command = "dmesg | tail -n 5"
shell = true
every = "30s"
'''


def test_full_config(tmp_path: Path):
    path = tmp_path / "ew.toml"
    path.write_text(FULL)
    config = load_config(path)
    assert config.worker.database == str(tmp_path / "data/ew.db")
    assert config.worker.workers == 3
    assert config.worker.durability == "normal"
    assert config.worker.shutdown_timeout == 60
    assert config.worker.retention is None
    assert config.worker.python_path == (str(tmp_path / "lib"), "/opt/jobs")
    assert config.metrics.textfile == "/var/lib/node_exporter/edgeworker.prom"
    backup, report, pipe = config.jobs
    assert (backup.kind, backup.target, backup.every) == ("command", "tar czf /tmp/b.tgz /etc",
                                                          3600)
    assert (backup.timeout, backup.max_attempts, backup.retry_delay) == (600, 3, 30)
    assert (backup.catch_up, backup.jitter, backup.env, backup.cwd) == (
        "once", 300, (("LANG", "C"),), "/tmp")
    assert (report.kind, report.target, report.cron, report.timezone) == (
        "callable", "reports.daily:run", "0 2 * * *", "Europe/Berlin")
    assert (report.catch_up_limit, report.enabled) == (3, False)
    assert (pipe.shell, pipe.target) == (True, "dmesg | tail -n 5")


def test_defaults_without_a_file():
    config = load_config(None)
    assert config.jobs == ()
    assert config.worker.durability == "full"
    assert config.worker.database is None


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, Path("/etc/edgeworker/edgeworker.toml"))
    return str(info.value)


def test_toml_syntax_error_names_file_and_line():
    assert error_of('[worker]\nworkers = 2\nbad line here\n') == (
        "/etc/edgeworker/edgeworker.toml:3: Expected '=' after a key in a key/value pair")


def test_unknown_key_names_line_job_and_allowed_keys():
    message = error_of('[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1s"\ncomand = "x"\n')
    assert message.startswith('/etc/edgeworker/edgeworker.toml:5: job "a": comand: unknown key;'
                              ' allowed: alert_after, callable, catch_up,')


def test_unknown_worker_key():
    assert error_of('[worker]\n\nworkrs = 2\n').startswith(
        "/etc/edgeworker/edgeworker.toml:3: [worker] workrs: unknown key; allowed:")


def test_unknown_table_or_top_level_key_names_its_line():
    assert error_of("[job]\nname = 1\n") == (
        "/etc/edgeworker/edgeworker.toml:1: unknown table or key 'job'; allowed: [worker], "
        "[metrics], [[jobs]]")
    assert error_of("# a comment\n\ndatabase = 'x.db'\n[worker]\n").startswith(
        "/etc/edgeworker/edgeworker.toml:3: unknown table or key 'database';")
    assert error_of("[worker]\nworkers = 1\n\n[metric.textfile]\npath = 'x'\n").startswith(
        "/etc/edgeworker/edgeworker.toml:4: unknown table or key 'metric';")


@pytest.mark.parametrize("body, expected", [
    ('every = "30x"', 'job "a": every: \'30x\' is not a duration such as 500ms, 30s, 5m, 1h30m '
                      'or 7d'),
    ("every = 30", 'job "a": every: 30 is not a duration such as 500ms, 30s, 5m, 1h30m or 7d '
                   "(give it as a string with a unit)"),
    ('cron = "* * *"', "job \"a\": cron: '* * *' is not a 5-field cron expression (minute hour "
                       'day-of-month month day-of-week, e.g. "*/5 * * * *")'),
    ('cron = "61 * * * *"', "job \"a\": cron: '61 * * * *' is not a valid cron expression"),
    ('cron = "0 * * * *"\ntimezone = "Mars/Olympus"',
     "job \"a\": timezone: 'Mars/Olympus' is not a known time zone"),
    ('every = "1m"\nmax_attempts = 0', 'job "a": max_attempts: 0 is not a whole number from 1 '
                                       "to 1000"),
    ('every = "1m"\ncatch_up = "most"', "job \"a\": catch_up: 'most' is not one of: skip, once, "
                                        "all"),
    ('every = "1m"\ncron = "* * * * *"', 'job "a": give exactly one schedule'),
    ('every = "50ms"', 'job "a": every: must be at least 100ms'),
])
def test_job_value_errors(body, expected):
    message = error_of(f'[[jobs]]\nname = "a"\ncommand = "true"\n{body}\n')
    assert expected in message
    assert message.startswith("/etc/edgeworker/edgeworker.toml:")


def test_missing_schedule_and_target():
    assert error_of('[[jobs]]\nname = "a"\ncommand = "true"\n') == (
        '/etc/edgeworker/edgeworker.toml:1: job "a": give exactly one schedule: \'every\' '
        '(e.g. "30s") or \'cron\' (e.g. "*/5 * * * *")')
    assert "give exactly one of 'command'" in error_of('[[jobs]]\nname = "a"\nevery = "1s"\n')


def test_second_job_error_points_at_its_line():
    text = ('[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1s"\n\n'
            '[[jobs]]\nname = "b"\ncommand = "true"\nevery = "soon"\n')
    assert error_of(text).startswith('/etc/edgeworker/edgeworker.toml:9: job "b": every:')


def test_duplicate_job_names():
    text = '[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1s"\n' * 2
    assert 'job "a" is defined twice (jobs #1 and #2)' in error_of(text)


def test_bad_job_name_and_unsplittable_command():
    assert "is not a valid job name" in error_of(
        '[[jobs]]\nname = "a b"\ncommand = "true"\nevery = "1s"\n')
    assert "cannot split" in error_of(
        "[[jobs]]\nname = \"a\"\ncommand = \"echo 'unclosed\"\nevery = \"1s\"\n")


def test_shell_needs_a_string_and_a_command():
    assert "shell = true needs 'command' as one string" in error_of(
        '[[jobs]]\nname = "a"\ncommand = ["a", "b"]\nshell = true\nevery = "1s"\n')
    assert "only applies to 'command' jobs" in error_of(
        '[[jobs]]\nname = "a"\ncallable = "m:f"\nshell = true\nevery = "1s"\n')


def test_missing_file():
    with pytest.raises(ConfigError, match=r"^/nonexistent/x.toml: config file not found$"):
        load_config(Path("/nonexistent/x.toml"))


# -- everything `run` would refuse is refused here first -----------------------------------------

JOB = '[[jobs]]\nname = "a"\ncommand = "true"\n'


@pytest.mark.parametrize("body, expected", [
    # cron expressions that never fire: `run` used to die on croniter's CroniterBadDateError
    ('cron = "0 0 31 2 *"', ":4: job \"a\": cron: '0 0 31 2 *' never fires: no date matches it "
                            "(within 8 years)"),
    ('cron = "0 0 30 2 *"', ":4: job \"a\": cron: '0 0 30 2 *' never fires: no date matches it "
                            "(within 8 years)"),
    ('cron = "0 0 31 4,6,9,11 *"', ":4: job \"a\": cron: '0 0 31 4,6,9,11 *' never fires: no "
                                   "date matches it (within 8 years)"),
    # durations beyond a year overflowed date arithmetic at run time
    ('every = "400d"', ":4: job \"a\": every: '400d' is longer than 365d, the most allowed"),
    ('every = "1m"\ntimeout = "99999999d"',
     ":5: job \"a\": timeout: '99999999d' is longer than 365d, the most allowed"),
    ('every = "1m"\nretry_delay = "366d"',
     ":5: job \"a\": retry_delay: '366d' is longer than 365d, the most allowed"),
    ('every = "1m"\ntimeout = "0s"', ':5: job "a": timeout: must be more than 0'),
    # jitter as long as the period
    ('every = "1m"\njitter = "1m"',
     ':5: job "a": jitter: 1m is not shorter than the period (every = 1m)'),
    ('every = "1m"\njitter = "2h"',
     ':5: job "a": jitter: 2h is not shorter than the period (every = 1m)'),
    ('cron = "*/30 * * * *"\njitter = "30m"', ':5: job "a": jitter: 30m is not shorter than the '
                                              'shortest gap between two runs of "*/30 * * * *" '
                                              "(30m)"),
    ('cron = "0 0,23 * * *"\njitter = "2h"', ':5: job "a": jitter: 2h is not shorter than the '
                                             'shortest gap between two runs of "0 0,23 * * *" '
                                             "(1h)"),
    ('cron = "0 0 1,28 * *"\njitter = "1d"', ':5: job "a": jitter: 1d is not shorter than the '
                                             'shortest gap between two runs of "0 0 1,28 * *" '
                                             "(1d)"),
])
def test_what_run_cannot_schedule_is_refused_with_file_and_line(body, expected):
    assert error_of(JOB + body + "\n") == "/etc/edgeworker/edgeworker.toml" + expected


@pytest.mark.parametrize("body", [
    'cron = "0 0 29 2 *"',  # leap days only: fires every 4 (at most 8) years
    'cron = "0 0 31 * *"',
    'cron = "*/30 * * * *"\njitter = "29m"',
    'cron = "0 2 * * *"\njitter = "23h"',
    'every = "365d"\ntimeout = "365d"\nretry_delay = "0s"\njitter = "364d"',
])
def test_schedules_at_the_edge_of_what_is_allowed(body):
    parse_config(JOB + body + "\n")


@pytest.mark.parametrize("body, expected", [
    # SQLite keeps its busy timeout in ms in a 32-bit int: Python silently made 30d into 0
    ('busy_timeout = "30d"', ":2: [worker] busy_timeout: '30d' is longer than 1d, the most "
                             "allowed"),
    ('busy_timeout = "0s"', ":2: [worker] busy_timeout: must be more than 0"),
    ('shutdown_timeout = "1000d"', ":2: [worker] shutdown_timeout: '1000d' is longer than 365d, "
                                   "the most allowed"),
    ('retention = "0s"', ':2: [worker] retention: must be more than 0, or "forever" to keep '
                         "every task"),
    ('retention = "5000d"', ":2: [worker] retention: '5000d' is longer than 365d, the most "
                            'allowed, or "forever" to keep every task'),
])
def test_worker_durations_are_bounded(body, expected):
    assert error_of("[worker]\n" + body + "\n") == "/etc/edgeworker/edgeworker.toml" + expected


def test_metrics_interval_is_bounded():
    assert error_of('[metrics]\ninterval = "400d"\n') == (
        "/etc/edgeworker/edgeworker.toml:2: [metrics] interval: '400d' is longer than 365d, the "
        "most allowed")


def test_check_config_refuses_a_cron_that_never_fires(run_cli, tmp_path):
    config = tmp_path / "edgeworker.toml"
    config.write_text('[[jobs]]\nname = "leap"\ncommand = "true"\ncron = "0 0 29 2 *"\n\n'
                      '[[jobs]]\nname = "feb31"\ncommand = "true"\ncron = "0 0 31 2 *"\n')
    result = run_cli("check-config", config=config)
    assert (result.exit_code, result.stderr) == (
        1, f"Error: {config}:9: job \"feb31\": cron: '0 0 31 2 *' never fires: no date matches "
           "it (within 8 years)\n")


def test_isolate_is_for_callables():
    config = parse_config('[[jobs]]\nname = "a"\ncallable = "m:f"\nevery = "1m"\nisolate = true\n')
    assert config.jobs[0].isolate is True
    assert error_of('[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1m"\nisolate = true\n') == (
        '/etc/edgeworker/edgeworker.toml:5: job "a": isolate: only applies to \'callable\' jobs '
        "(a command runs in its own process already)")
    assert error_of('[[jobs]]\nname = "a"\ncallable = "m:f"\nevery = "1m"\nisolate = 1\n') == (
        '/etc/edgeworker/edgeworker.toml:5: job "a": isolate: must be true or false')


def test_busy_alert():
    assert load_config(None).worker.busy_alert == 3600.0
    assert parse_config('[worker]\nbusy_alert = "off"\n').worker.busy_alert is None
    assert parse_config('[worker]\nbusy_alert = "90m"\n').worker.busy_alert == 5400.0
    assert error_of('[worker]\nbusy_alert = "soon"\n') == (
        "/etc/edgeworker/edgeworker.toml:2: [worker] busy_alert: 'soon' is not a duration such "
        'as 500ms, 30s, 5m, 1h30m or 7d, or "off"')


def test_alert_keys_are_checked_with_file_and_line():
    head = '[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1s"\n'
    assert error_of(head + 'ping_url = "ftp://x/y"\n') == (
        "/etc/edgeworker/edgeworker.toml:5: job \"a\": ping_url: 'ftp://x/y' is not an http:// "
        "or https:// URL with a host")
    assert error_of(head + "on_failure = 3\n") == (
        '/etc/edgeworker/edgeworker.toml:5: job "a": on_failure: must be a command: a string or '
        "a non-empty list of strings")
    assert error_of('[worker]\nalert_after = "0.5s"\n') == (
        "/etc/edgeworker/edgeworker.toml:2: [worker] alert_after: must be at least 1s, or \"off\"")
    assert error_of('[worker]\nhook_timeout = "0s"\n') == (
        "/etc/edgeworker/edgeworker.toml:2: [worker] hook_timeout: must be more than 0")


def test_alert_keys_parse_per_job_and_as_worker_defaults():
    config = parse_config('[worker]\non_failure = ["notify", "--job"]\nalert_after = "2h"\n'
                          'ping_url = "https://hc.example/ping/abc/"\n'
                          '[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1s"\n'
                          'on_success = "log ok"\nalert_after = "off"\nping_url = ""\n')
    assert config.worker.on_failure == "notify --job"
    assert config.worker.alert_after == 7200.0
    assert config.worker.ping_url == "https://hc.example/ping/abc"
    assert config.worker.hook_timeout == 30.0
    job = config.jobs[0]
    assert (job.on_success, job.on_failure, job.alert_after, job.ping_url) == (
        "log ok", None, 0.0, "")


def test_the_database_is_a_file_or_a_postgresql_url():
    url = "postgresql://edgeworker@db.example/edgeworker?host=/run/postgresql"
    config = parse_config(f'[worker]\ndatabase = "{url}"\n', Path("/etc/edgeworker/ew.toml"))
    assert config.worker.database == url  # as written, not a path under /etc/edgeworker
    assert error_of('[worker]\n\ndatabase = "postgresql://ew:hunter2@db/ew"\n') == (
        "/etc/edgeworker/edgeworker.toml:3: [worker] database: the PostgreSQL URL holds a "
        "password; take it out and put it in ~/.pgpass, $PGPASSFILE or $PGPASSWORD")


def test_the_worker_name_defaults_to_the_host_name_and_is_checked():
    import socket

    assert load_config(None).worker.worker_name() == socket.gethostname()
    assert parse_config('[worker]\nname = "site-a.gw1"\n').worker.worker_name() == "site-a.gw1"
    assert error_of('[worker]\nname = "two words"\n') == (
        "/etc/edgeworker/edgeworker.toml:2: [worker] name: 'two words' is not a valid worker "
        "name (letters, digits, '_', '.', '@', '-'; at most 64 characters, starting with a "
        "letter or digit)")


def test_the_lease_must_outlast_the_heartbeat():
    assert parse_config('[worker]\nheartbeat = "1s"\nlease = "3s"\n').worker.lease == 3.0
    assert load_config(None).worker.lease_seconds(on_server=True) == 60.0
    assert load_config(None).worker.lease_seconds(on_server=False) is None
    assert parse_config('[worker]\nheartbeat = "off"\n').worker.lease_seconds(True) is None
    assert error_of('[worker]\nlease = "20s"\n') == (
        "/etc/edgeworker/edgeworker.toml:2: [worker] lease: the lease (20s) must be longer than "
        "the heartbeat (30s) that renews it")
    assert error_of('[worker]\nlease = "2m"\nheartbeat = "5m"\n') == (
        "/etc/edgeworker/edgeworker.toml:2: [worker] lease: the lease (2m) must be longer than "
        "the heartbeat (5m) that renews it")
    assert error_of('[worker]\nheartbeat = "2m"\n') == (
        "/etc/edgeworker/edgeworker.toml:2: [worker] heartbeat: the lease (1m) must be longer "
        "than the heartbeat (2m) that renews it")


PARSER_LOADED = """\
import sys
{before}from pathlib import Path
from edgeworker.config import load_config
config = load_config(Path(sys.argv[1]), forget_parser=True)
print(len(config.jobs), sorted(m for m in sys.modules if m.split(".")[0] in ("tomllib", "typing")))
"""


def parser_left(tmp_path, jobs: str, before: str = "") -> str:
    path = tmp_path / "edgeworker.toml"
    path.write_text(jobs)
    return subprocess.run([sys.executable, "-c", PARSER_LOADED.format(before=before), str(path)],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_a_worker_forgets_the_toml_parser_once_its_config_is_read(tmp_path):
    assert parser_left(tmp_path, '[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1h"\n') == "1 []"


def test_the_parser_is_kept_when_the_read_imported_more_or_typing_was_there_before(tmp_path):
    cron = '[[jobs]]\nname = "a"\ncommand = "true"\ncron = "0 3 * * *"\n'
    assert "'typing'" in parser_left(tmp_path, cron)  # croniter came with it: it may hold typing
    interval = '[[jobs]]\nname = "a"\ncommand = "true"\nevery = "1h"\n'
    kept = parser_left(tmp_path, interval, before="import typing\n")
    assert kept == "1 ['typing', 'typing.io', 'typing.re']"  # tomllib goes, typing stays
