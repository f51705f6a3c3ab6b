"""Hooks, pings and "gone quiet" alerts, with a real worker and a local HTTP server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.workerproc import WorkerProcess, wait_for

pytestmark = pytest.mark.timeout(120)


class PingServer:
    """healthchecks.io's side: records each POST (path, body), in order."""

    def __init__(self, port: int = 0):
        self.received: list[tuple[str, str]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                received.append((self.path, self.rfile.read(length).decode()))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/p") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server():
    running = PingServer()
    yield running
    running.close()


YEARLY = 'cron = "0 0 1 1 *"\n'  # never due during a test: runs come from `jobs run`
RECORD = ('sh -c \'echo "$EDGEWORKER_HOOK $EDGEWORKER_STATUS $EDGEWORKER_EXIT_CODE '
          '$EDGEWORKER_ATTEMPT $EDGEWORKER_TASK_ID $EDGEWORKER_JOB $EDGEWORKER_ERROR" >> {log}; '
          'cat >> {log}\'')


def lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_pings_arrive_in_order_with_the_output_as_body(tmp_path, server):
    config = (f'[[jobs]]\nname = "ok"\ncommand = "echo out-$EDGEWORKER_TASK_ID"\nshell = true\n'
              f'{YEARLY}ping_url = "{server.url("/ok")}"\n'
              f'[[jobs]]\nname = "bad"\ncommand = "sh -c \'echo broken; exit 3\'"\n{YEARLY}'
              f'max_attempts = 1\nping_url = "{server.url("/bad/")}"\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "ok")
        ok = worker.wait_tasks("job = 'ok' AND status = 'succeeded'")[0]
        wait_for(lambda: len(server.received) >= 2, what="the ok job's pings", log=worker.log)
        worker.cli("jobs", "run", "bad")
        wait_for(lambda: len(server.received) >= 4, what="the bad job's pings", log=worker.log)
        assert server.received == [("/ok/start", ""), ("/ok", f"out-{ok['id']}\n"),
                                   ("/bad/start", ""), ("/bad/3", "broken\n")]
        assert worker.query("SELECT count(*) FROM outbox") == [(0,)]
        assert worker.query("SELECT count(*) FROM hook_runs") == [(0,)]  # delivered: no write
        worker.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_undelivered_pings_are_kept_and_delivered_after_a_restart(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/hc"
    config = (f'[[jobs]]\nname = "j"\ncommand = "echo run-$EDGEWORKER_TASK_ID"\nshell = true\n'
              f'{YEARLY}ping_url = "{url}"\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        for count in (1, 2):
            worker.cli("jobs", "run", "j")
            worker.wait_tasks("status = 'succeeded'", count)
        wait_for(lambda: worker.query("SELECT count(*) FROM outbox")[0][0] == 4,
                 what="4 pings in the outbox", log=worker.log)
        kept = worker.query("SELECT url, body FROM outbox ORDER BY id")
        ids = [row["id"] for row in worker.tasks("status = 'succeeded'")]
        assert [u for u, _ in kept] == [f"{url}/start", url, f"{url}/start", url]
        assert [b for _, b in kept] == ["", f"run-{ids[0]}\n", "", f"run-{ids[1]}\n"]
        shown = json.loads(worker.cli("tasks", "show", str(ids[0]), "--json").stdout)
        assert [(h["hook"], h["status"]) for h in shown["hooks"]] == [
            (f"ping {url}/start", "queued"), (f"ping {url}", "queued")]
        status = worker.cli("status").stdout
        assert "pings     4 waiting in the outbox since " in status
        assert "(ConnectionRefusedError: [Errno 111] Connection refused)" in status
        assert worker.stop() == 0
        server = PingServer(port)
        try:
            worker.start().wait_running()
            wait_for(lambda: len(server.received) >= 4, what="the kept pings", log=worker.log)
            wait_for(lambda: worker.query("SELECT count(*) FROM outbox") == [(0,)],
                     log=worker.log)
            assert server.received == [(u[len(f"http://127.0.0.1:{port}"):], b)
                                       for u, b in kept]
            shown = json.loads(worker.cli("tasks", "show", str(ids[1]), "--json").stdout)
            assert [(h["hook"], h["status"]) for h in shown["hooks"]] == [
                (f"ping {url}/start", "succeeded"), (f"ping {url}", "succeeded")]
            text = worker.cli("tasks", "show", str(ids[1])).stdout
            assert f"hook:           ping {url} succeeded" in text
            worker.stop()
        finally:
            server.close()


def test_on_failure_runs_once_after_the_final_attempt_and_on_retry_after_each(tmp_path):
    failures, retries = tmp_path / "failure.log", tmp_path / "retry.log"
    config = (f'[[jobs]]\nname = "flaky"\ncommand = "sh -c \'echo oops; exit 4\'"\n{YEARLY}'
              'max_attempts = 2\nretry_delay = "0s"\n'
              f'on_failure = """{RECORD.format(log=failures)}"""\n'
              f'on_retry = """{RECORD.format(log=retries)}"""\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "flaky")
        task = worker.wait_tasks("job = 'flaky' AND status = 'failed'")[0]
        wait_for(lambda: worker.query("SELECT count(*) FROM hook_runs WHERE hook = "
                                      "'on_failure'")[0][0] == 1, log=worker.log)
        tid = task["id"]
        assert lines(retries) == [f"on_retry retry 4 1 {tid} flaky exit status 4", "oops"]
        assert lines(failures) == [f"on_failure failed 4 2 {tid} flaky exit status 4", "oops"]
        shown = json.loads(worker.cli("tasks", "show", str(tid), "--json").stdout)
        assert [(h["hook"], h["status"], h["exit_code"]) for h in shown["hooks"]] == [
            ("on_retry", "succeeded", 0), ("on_failure", "succeeded", 0)]
        worker.stop()
        assert len(lines(failures)) == 2  # once, also after the stop


def test_on_success_from_the_worker_defaults_and_a_failing_hook_is_recorded(tmp_path):
    successes = tmp_path / "success.log"
    config = (f'[worker]\ndatabase = "ew.db"\non_success = """{RECORD.format(log=successes)}"""\n'
              'on_failure = "/nonexistent/notify"\n'
              f'[[jobs]]\nname = "good"\ncommand = "echo fine"\n{YEARLY}'
              f'[[jobs]]\nname = "bad"\ncommand = "false"\nmax_attempts = 1\n{YEARLY}')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "good")
        worker.cli("jobs", "run", "bad")
        good = worker.wait_tasks("job = 'good' AND status = 'succeeded'")[0]
        bad = worker.wait_tasks("job = 'bad' AND status = 'failed'")[0]
        wait_for(lambda: worker.query("SELECT count(*) FROM hook_runs")[0][0] == 2,
                 log=worker.log)
        assert lines(successes) == [f"on_success succeeded 0 1 {good['id']} good ", "fine"]
        shown = json.loads(worker.cli("tasks", "show", str(bad["id"]), "--json").stdout)
        assert [(h["hook"], h["status"], h["exit_code"], h["error"]) for h in shown["hooks"]] \
            == [("on_failure", "failed", 127, "command not found: /nonexistent/notify")]
        worker.stop()


def test_a_hook_given_to_a_job_while_the_worker_runs_fires(tmp_path):
    """A worker whose config has no alerts starts without them (edgeworker.alerts is not even
    imported: tests/test_entry.py); a job added later with a hook gets it all the same."""
    successes = tmp_path / "success.log"
    config = f'[[jobs]]\nname = "plain"\ncommand = "true"\n{YEARLY}'
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "plain")
        worker.wait_tasks("job = 'plain' AND status = 'succeeded'")
        worker.cli("jobs", "add", "hooked", "--command", "echo fine", "--every", "365d",
                   "--on-success", RECORD.format(log=successes))
        worker.cli("jobs", "run", "hooked")
        done = worker.wait_tasks("job = 'hooked' AND status = 'succeeded'")[0]
        wait_for(lambda: worker.query("SELECT count(*) FROM hook_runs")[0][0] == 1,
                 log=worker.log)
        assert lines(successes) == [f"on_success succeeded 0 1 {done['id']} hooked ", "fine"]
        worker.stop()


def test_alert_after_fires_once_per_quiet_spell(tmp_path):
    quiet = tmp_path / "quiet.log"
    config = (f'[[jobs]]\nname = "q"\ncommand = "true"\n{YEARLY}alert_after = "1s"\n'
              'on_failure = """sh -c \'echo "$EDGEWORKER_STATUS $EDGEWORKER_JOB" >> '
              f'{quiet}\'"""\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        wait_for(lambda: lines(quiet) == ["overdue q"], what="the overdue alert", log=worker.log)
        worker.cli("jobs", "run", "q")  # a success ends the spell; the next one fires again
        wait_for(lambda: len(lines(quiet)) >= 2, what="the second alert", log=worker.log)
        # Checked four times a second: a spell that fired at every check would show here.
        worker.cli("jobs", "run", "q")
        wait_for(lambda: len(lines(quiet)) >= 3, what="the third alert", log=worker.log)
        assert lines(quiet) == ["overdue q"] * 3
        worker.stop()


def test_a_plain_http_ping_does_not_load_ssl(server):
    code = ("import sys\nfrom edgeworker.alerts import post\n"
            f"post({server.url('/x')!r}, b'body')\nprint('ssl' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.strip() == "False", result.stderr
    assert server.received == [("/x", "body")]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_a_hook_is_stopped_at_its_timeout(tmp_path):
    pids = tmp_path / "pids"
    config = (f'[worker]\ndatabase = "ew.db"\nhook_timeout = "1s"\n'
              f'[[jobs]]\nname = "j"\ncommand = "false"\nmax_attempts = 1\n{YEARLY}'
              f'on_failure = """sh -c \'sleep 60 & echo $! >> {pids}; wait\'"""\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "j")
        rows = wait_for(lambda: worker.query("SELECT status, error FROM hook_runs"),
                        log=worker.log)
        assert rows == [("failed", "timed out after 1s: stopped its process group")]
        (pid,) = map(int, lines(pids))
        wait_for(lambda: not alive(pid), what="the hook's child to be gone")
        worker.stop()


def test_a_hook_dies_with_a_killed_worker(tmp_path):
    pids = tmp_path / "pids"
    config = (f'[[jobs]]\nname = "j"\ncommand = "false"\nmax_attempts = 1\n{YEARLY}'
              f'on_failure = """sh -c \'sleep 60 & echo $! >> {pids}; wait\'"""\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "j")
        wait_for(lambda: lines(pids), what="the hook to start", log=worker.log)
        (pid,) = map(int, lines(pids))
        assert alive(pid)
        worker.kill()
        wait_for(lambda: not alive(pid), what="the hook's child to die with the worker")
        from edgeworker.processes import STDIN_PREFIX, runtime_directory

        records = runtime_directory(worker.db)

        def stdins() -> list[str]:
            return [name for name in os.listdir(records) if name.startswith(STDIN_PREFIX)]

        assert len(stdins()) == 1  # the hook's stdin, which the next start removes
        worker.start()
        wait_for(lambda: worker.log().count("edgeworker running") == 2, 20,
                 what="the second start", log=worker.log)
        assert stdins() == []
        assert worker.stop() == 0


def test_the_outbox_keeps_the_newest_pings_up_to_its_bound(database, monkeypatch, caplog):
    from datetime import UTC, datetime

    from edgeworker import alerts
    from edgeworker.config import WorkerSettings
    from edgeworker.models import Outbox

    monkeypatch.setattr(alerts, "OUTBOX_LIMIT", 3)
    box = alerts.Alerts(WorkerSettings, lambda: datetime(2026, 1, 1, tzinfo=UTC))
    for number in range(5):
        box.keep(alerts._Ping(f"http://127.0.0.1:9/{number}", "j", number, "b"), "down")
    assert [row.url[-1] for row in Outbox.select().order_by(Outbox.id)] == ["2", "3", "4"]
    assert (box.waiting, box.dropped) == (3, 2)
    assert "dropped the 1 oldest ping(s), 2 since start" in caplog.text


def test_jobs_add_takes_the_alert_options(migrated):
    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1m", "--ping-url",
                "http://hc.example/p/", "--on-failure", "notify 'it failed'", "--on-success",
                "ok", "--on-retry", "again", "--alert-after", "2h")
    (job,) = json.loads(migrated.ok("jobs", "list", "--json"))
    assert (job["ping_url"], job["on_failure"], job["on_success"], job["on_retry"],
            job["alert_after_seconds"]) == ("http://hc.example/p", "notify 'it failed'", "ok",
                                            "again", 7200.0)
    result = migrated("jobs", "add", "b", "--command", "true", "--every", "1m",
                      "--ping-url", "ftp://x")
    assert (result.exit_code, result.output.strip()) == (
        1, "Error: --ping-url: 'ftp://x' is not an http:// or https:// URL with a host")


def test_tasks_prune_forgets_old_hook_outcomes(database, run_cli):
    from datetime import UTC, datetime

    from edgeworker.models import HookRun

    HookRun.create(task_id=1, job_name="j", hook="on_failure", status="succeeded",
                   finished_at=datetime(2020, 1, 1, tzinfo=UTC))
    HookRun.create(task_id=2, job_name="j", hook="on_failure", status="succeeded",
                   finished_at=datetime.now(UTC))
    assert run_cli.ok("tasks", "prune", "--older-than", "7d").startswith("pruned 0 finished")
    assert [h.task_id for h in HookRun.select()] == [2]


def test_an_idle_worker_with_an_https_ping_url_does_not_load_openssl(tmp_path):
    config = (f'[[jobs]]\nname = "j"\ncommand = "true"\n{YEARLY}'
              'ping_url = "https://hc.example/ping/abc"\non_failure = "true"\n'
              'alert_after = "1h"\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        maps = open(f"/proc/{worker.proc.pid}/maps").read()
        assert "libssl" not in maps and "_ssl" not in maps
        worker.stop()


def test_the_quiet_check_walks_the_job_index_not_history(database):
    from edgeworker.alerts import quiet_query

    for default in (None, 7200.0):
        sql, params = quiet_query(default).sql()
        plan = " / ".join(row[-1] for row in database.execute_sql(f"EXPLAIN QUERY PLAN {sql}",
                                                                   params))
        assert "SEARCH t2 USING INDEX tasks_job_id (job_id=?)" in plan, plan
        assert "SCAN t2" not in plan, plan


def test_a_run_that_recovery_ends_failed_fires_on_failure_and_its_ping(tmp_path, server):
    failures = tmp_path / "failure.log"
    config = (f'[[jobs]]\nname = "hang"\ncommand = "sleep 60"\nmax_attempts = 1\n{YEARLY}'
              f'on_failure = """{RECORD.format(log=failures)}"""\n'
              f'ping_url = "{server.url("/h")}"\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "hang")
        task = worker.wait_tasks("job = 'hang' AND status = 'running'")[0]
        wait_for(lambda: server.received == [("/h/start", "")], log=worker.log)
        worker.kill()  # its only attempt is used up: recovery ends it failed
        worker.start().wait_running()
        wait_for(lambda: len(lines(failures)) >= 1, what="on_failure", log=worker.log)
        assert worker.tasks(f"id = {task['id']}")[0]["status"] == "failed"
        assert lines(failures)[0].startswith(
            f"on_failure failed  1 {task['id']} hang interrupted on attempt 1 of 1")
        wait_for(lambda: len(server.received) == 2, log=worker.log)
        assert server.received[1][0] == "/h/fail"
        assert server.received[1][1].startswith("interrupted on attempt 1 of 1")
        worker.stop()


def test_a_full_alerts_queue_drops_and_logs_instead_of_waiting(monkeypatch, caplog):
    import queue as queues
    from datetime import UTC, datetime

    from edgeworker import alerts
    from edgeworker.config import WorkerSettings
    from edgeworker.models import Job, Task
    from edgeworker.runners import Result

    box = alerts.Alerts(lambda: WorkerSettings(on_success="true"),
                        lambda: datetime.now(UTC))
    box.events = queues.Queue(2)  # no thread takes them
    job = Job(id=1, name="j", env="{}")
    task = Task(id=7, status="succeeded", exit_code=0)
    for _ in range(3):
        box.finished(task, job, {}, Result(True, 0, None, "out"))
    assert box.events.qsize() == 2
    assert "alerts queue full (2 waiting): dropped on_success of job j" in caplog.text


@pytest.mark.parametrize("url, suffix, address", [
    ("http://hc.example/ping/abc", "/start", "http://hc.example/ping/abc/start"),
    ("http://hc.example/ping/abc", "", "http://hc.example/ping/abc"),
    ("https://hc.example/ping/abc?create=1", "/3", "https://hc.example/ping/abc/3?create=1"),
    ("http://[::1]:8000", "/fail", "http://[::1]:8000/fail"),
])
def test_ping_addresses_keep_the_query(url, suffix, address):
    from edgeworker.alerts import ping_address

    assert ping_address(url, suffix) == address


def test_a_server_that_is_down_holds_back_only_its_own_pings(database, server):
    from datetime import UTC, datetime

    from edgeworker import alerts
    from edgeworker.config import WorkerSettings
    from edgeworker.models import HookRun, Outbox

    down = free_port()
    box = alerts.Alerts(WorkerSettings, lambda: datetime.now(UTC))
    for number in range(3):
        for url in (f"http://127.0.0.1:{down}/a/{number}", server.url(f"/b/{number}")):
            box.keep(alerts._Ping(url, "j", number, f"body {number}"), None)
    box.flush()
    assert server.received == [(f"/b/{n}", f"body {n}") for n in range(3)]
    assert [row.url for row in Outbox.select().order_by(Outbox.id)] == [
        f"http://127.0.0.1:{down}/a/{n}" for n in range(3)]
    assert box.waiting == 3 and box.retry_at is not None
    assert [r.attempts for r in Outbox.select().order_by(Outbox.id)] == [1, 0, 0]
    box.ping(alerts._Ping(server.url("/b/new"), "j", 9, "now"))  # its server is up: sent now
    box.ping(alerts._Ping(f"http://127.0.0.1:{down}/a/new", "j", 9, "later"))  # queued behind
    assert server.received[-1] == ("/b/new", "now")
    assert Outbox.select().count() == box.waiting == 4
    back = PingServer(down)
    try:
        box.flush()
        assert back.received == [(f"/a/{n}", f"body {n}") for n in range(3)] + [
            ("/a/new", "later")]
    finally:
        back.close()
    assert (box.waiting, box.retry_at, Outbox.select().count()) == (0, None, 0)
    assert HookRun.select().where(HookRun.status == "succeeded").count() == 7
