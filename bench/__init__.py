"""edgeworker's benchmarks, beside raw huey and plain Python, on the machine they run on.

`python -m bench` (or `make bench`) runs every script and prints one table; `--quick` runs each
with tiny sizes, only to prove that the scripts still work (the test suite does that). The
machines these run on are shared and noisy: every comparison is measured side by side in the same
run, repeated, and reported as the median with the min and max of the repeats.

| script          | measures                                                                   |
|-----------------|----------------------------------------------------------------------------|
| `throughput.py` | no-op task throughput, commits and bytes written per task, vs. SqliteHuey  |
| `scheduled.py`  | bytes, WAL pages, commits per scheduled run; a run waiting for its job     |
| `latency.py`    | pickup latency of `jobs run`, lateness of a 200 ms interval job            |
| `recovery.py`   | start-up to READY=1 with 10,000 tasks a dead worker left running           |
| `idle.py`       | an idle worker: RSS, bytes written and commits, wake-ups per second        |
| `startup.py`    | cold start of `edgeworker --version` / `--help` beside `python -c pass`    |
| `catchup.py`    | a 1 s job's lateness beside a catch-up flood of 100,000 cron slots         |
| `web.py`        | the status page over 100,000 runs: time per page, resident memory          |
| `installed.py`  | the installed and one-file builds: bytes per CLI call and start, RSS       |
| `pg.py`         | PostgreSQL: 1, 2, 4 workers vs. PostgresHuey; lease recovery; idle writes  |

A script that cannot run here (`pg.py` without PostgreSQL's binaries) says why in one line under
the table, as does one that leaves out what the worker cannot do yet.
"""
