"""`edgeworker serve`: the real server in a subprocess, over a database made by a real worker
(tests/workerproc.py): pages, JSON shapes beside the CLI's `--json`, escaping, bad requests, a
database that is missing, locked or not migrated, basic auth, and that it never writes."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from workerproc import WorkerProcess, wait_for

from edgeworker.web import Auth, hash_password

pytestmark = pytest.mark.timeout(60)

NASTY = """<script>alert("x")</script> it's "quoted" & <b>bold</b>"""


def jobs_config(directory: Path) -> str:
    (directory / "nasty.txt").write_text(NASTY + "\n")
    return f"""
[[jobs]]
name = "ok"
command = ["cat", "{directory / 'nasty.txt'}"]
every = "1s"

[[jobs]]
name = "broken"
command = ["sh", "-c", "echo 'about to fail' >&2; exit 3"]
every = "1s"
max_attempts = 1

[[jobs]]
name = "nightly"
command = ["true"]
cron = "0 2 * * *"
"""


class ServeProcess:
    """A real `edgeworker serve` on a free port."""

    def __init__(self, *args: str, db: Path, log_dir: Path | None = None,
                 env: dict | None = None, config: Path | None = None):
        self.log_path = (log_dir or db.parent) / f"serve-{time.monotonic_ns()}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeworker", *(["--config", str(config)] if config else []),
             "--db", str(db), "serve", "--listen",
             "127.0.0.1:0", *args], stdout=log, stderr=subprocess.STDOUT,
            cwd=log_dir or db.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        log.close()
        found = wait_for(lambda: re.search(r"http://127\.0\.0\.1:(\d+)/", self.log())
                         or self.proc.poll() is not None, 20, what="the server to listen",
                         log=self.log)
        assert self.proc.poll() is None, self.log()
        self.base = f"http://127.0.0.1:{found.group(1)}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, headers: dict | None = None) -> tuple[int, str, dict]:
        request = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)

    def json(self, path: str) -> object:
        status, body, headers = self.get(path + ("&" if "?" in path else "?") + "format=json")
        assert status == 200, body
        assert headers["Content-Type"] == "application/json"
        return json.loads(body)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"serve did not stop at SIGTERM:\n{self.log()}") from None
        return self.proc.returncode


@pytest.fixture(scope="module")
def worker_db(tmp_path_factory):
    """A database made by a real worker: runs that succeeded (with HTML in their output), runs
    that failed. The worker keeps running for the module's tests."""
    directory = tmp_path_factory.mktemp("web")
    with WorkerProcess(directory, jobs_config(directory)) as worker:
        worker.start().wait_running()
        worker.wait_tasks("status = 'failed'", 2)
        worker.wait_tasks("status = 'succeeded' AND job = 'ok'", 3)
        yield worker


@pytest.fixture(scope="module")
def served(worker_db):
    server = ServeProcess(db=worker_db.db)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log()


def cli_json(worker: WorkerProcess, *args: str):
    return json.loads(worker.cli(*args, "--json").stdout)


def test_every_page_is_served(served, worker_db):
    [failed_id] = [t["id"] for t in worker_db.tasks("status = 'failed'")][:1]
    for path, needle in [("/", "Worker"), ("/jobs", "every second"), ("/jobs/ok", "Runs, newest"),
                         (f"/runs/{failed_id}", "exit status 3"), ("/failures", "broken"),
                         ("/style.css", "body{")]:
        status, body, headers = served.get(path)
        assert status == 200, (path, body)
        assert needle in body, path
        if path != "/style.css":
            assert headers["Content-Type"] == "text/html; charset=utf-8"
            assert "default-src 'none'" in headers["Content-Security-Policy"]


def test_the_overview_says_the_worker_is_up_since_its_start(served, worker_db):
    data = served.json("/")
    assert data["worker"]["running"] is True
    assert data["worker"]["pid"] == worker_db.proc.pid
    [(started,)] = worker_db.query("SELECT started_at FROM workers WHERE pid = ?",
                                   (worker_db.proc.pid,))
    assert data["worker"]["since"] == started
    [(recovered,)] = worker_db.query("SELECT started_at FROM recoveries ORDER BY id DESC LIMIT 1")
    assert data["last_recovery"]["at"] == recovered
    assert data["last_24h"]["failed"] >= 2 and data["last_24h"]["succeeded"] >= 3
    assert data["database_bytes"] > 0 and data["disk"]["free_bytes"] > 0
    status = cli_json(worker_db, "status")
    assert set(data["clock"]) == set(status["clock"])
    assert set(status["worker"]) <= set(data["worker"]) and data["worker"]["alert"] is None
    _, body, _ = served.get("/")
    assert f"(pid {worker_db.proc.pid}) since <time" in body


def test_the_overview_lists_the_workers_as_status_does(served, worker_db):
    data = served.json("/")
    assert data["workers"] == cli_json(worker_db, "status")["workers"]
    [view] = data["workers"]
    assert (view["pid"], view["state"]) == (worker_db.proc.pid, "up")
    _, body, _ = served.get("/")
    assert "<h2>Workers</h2>" in body
    assert (f"<td>{view['name']}</td><td>{socket.gethostname()}</td>"
            f"<td>{worker_db.proc.pid}</td>") in body
    assert '<span class="s up">up</span>' in body


def test_times_are_in_the_boxs_zone_with_utc_on_hover(worker_db):
    server = ServeProcess(db=worker_db.db, env={"TZ": "Asia/Kolkata"})  # UTC+05:30, no DST
    try:
        run = worker_db.tasks("finished_at IS NOT NULL")[0]
        _, body, _ = server.get(f"/runs/{run['id']}")
    finally:
        assert server.stop() == 0
    utc = datetime.fromisoformat(run["finished_at"])
    local = (utc + timedelta(hours=5, minutes=30)).strftime("%Y-%m-%d %H:%M:%S")
    assert (f'<time datetime="{run["finished_at"]}" title="{utc:%Y-%m-%d %H:%M:%S} UTC">'
            f"{local}</time>") in body


def test_the_overview_says_when_every_worker_thread_is_stuck(tmp_path):
    config = ('[worker]\ndatabase = "ew.db"\nworkers = 1\nbusy_alert = "200ms"\n\n'
              '[[jobs]]\nname = "hang"\ncommand = ["sleep", "30"]\nevery = "1h"\n')
    with WorkerProcess(tmp_path, config) as worker:
        worker.start().wait_running()
        worker.cli("jobs", "run", "hang")
        worker.wait_tasks("status = 'running'")
        server = ServeProcess(db=worker.db, config=worker.config)
        try:
            alert = wait_for(lambda: server.json("/")["worker"]["alert"], 10,
                             what="the busy alert")
            assert alert.startswith("all 1 worker thread(s) busy for more than 200ms")
            assert alert == cli_json(worker, "status")["worker"]["alert"]
            assert "all 1 worker thread(s) busy" in server.get("/")[1]
        finally:
            assert server.stop() == 0


def test_json_has_the_shapes_of_the_clis(served, worker_db):
    cli_jobs = {j["name"]: j for j in cli_json(worker_db, "jobs", "list")}
    web_jobs = {j["name"]: j for j in served.json("/jobs")}
    assert set(web_jobs) == set(cli_jobs) == {"ok", "broken", "nightly"}
    for name, row in web_jobs.items():
        assert set(row) == set(cli_jobs[name]) | {"recent_outcomes", "last_duration_seconds"}
        assert row["schedule"] == cli_jobs[name]["schedule"]
    assert {o["status"] for o in web_jobs["broken"]["recent_outcomes"]} == {"failed"}
    assert web_jobs["nightly"]["recent_outcomes"] == []

    finished = worker_db.tasks("status = 'failed'")[0]["id"]
    assert served.json(f"/runs/{finished}") == cli_json(worker_db, "tasks", "show",
                                                         str(finished))
    page = served.json("/jobs/broken")
    listed = cli_json(worker_db, "tasks", "list", "--job", "broken", "--status", "failed")
    newest_common = min(t["id"] for t in listed[:1] + [t for t in page["tasks"]
                                                          if t["status"] == "failed"][:1])
    assert [t for t in page["tasks"] if t["id"] <= newest_common and t["status"] == "failed"] \
        == [t for t in listed if t["id"] <= newest_common]
    assert page["job"]["name"] == "broken"
    failures = served.json("/failures")["tasks"]
    assert {t["job"] for t in failures} == {"broken"}
    assert all(t["status"] == "failed" for t in failures)


def test_nothing_in_a_runs_output_reaches_the_page_as_html(served, worker_db):
    [run] = worker_db.wait_tasks("status = 'succeeded' AND job = 'ok'")[:1]
    assert NASTY in run["output"]
    status, body, _ = served.get(f"/runs/{run['id']}")
    assert status == 200
    assert "<script" not in body and "<b>bold" not in body
    assert ("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; it&#x27;s &quot;quoted&quot; "
            "&amp; &lt;b&gt;bold&lt;/b&gt;") in body
    assert served.json(f"/runs/{run['id']}")["output"] == run["output"]


def test_pages_of_a_jobs_runs_follow_each_other(served, worker_db):
    first = served.json("/jobs/ok?limit=1")
    assert len(first["tasks"]) == 1 and first["next_before"] == first["tasks"][-1]["id"]
    second = served.json(f"/jobs/ok?limit=1&before={first['next_before']}")
    assert second["tasks"][0]["id"] < first["tasks"][-1]["id"]
    ids = [t["id"] for t in first["tasks"] + second["tasks"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 2
    assert served.json("/jobs/ok")["limit"] == 50
    _, body, _ = served.get(f"/jobs/ok?limit=1&before={first['next_before']}")
    assert f'href="/jobs/ok?before={second["next_before"]}&amp;limit=1"' in body


@pytest.mark.parametrize("path, status, message", [
    ("/nowhere", 404, "no page at /nowhere"),
    ("/jobs/nosuchjob", 404, "no job named"),
    ("/runs/999999", 404, "no task with id 999999"),
    ("/runs/abc", 404, "no page at /runs/abc"),
    ("/failures?before=abc", 400, "before must be a positive whole number"),
    ("/failures?before=0", 400, "before must be a positive whole number"),
    ("/jobs/ok?before=99999999999999999999", 400, "before must be a positive whole number"),
    ("/?format=xml", 400, "format must be html or json"),
    ("/failures?limit=501", 400, "limit must be at most 500"),
    ("/jobs?before=3", 400, "unknown parameter: before"),
    ("/?x=%ff", 400, "malformed query string"),
    ("/jobs/%ff", 400, "malformed"),
])
def test_bad_requests_get_a_status_and_a_message(served, path, status, message):
    got, body, _ = served.get(path)
    assert got == status, body
    assert message in body
    assert "Traceback" not in body
    if "format" in path or "%ff" in path:
        return
    got, body, headers = served.get(path + ("&" if "?" in path else "?") + "format=json")
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert message in json.loads(body)["error"]


def test_the_server_never_changes_the_database(served, worker_db):
    """Pages served without pause while the worker runs: its commits go on, and it never finds
    the database locked."""
    before = worker_db.query("SELECT count(*) FROM tasks WHERE status = 'succeeded'")[0][0]
    deadline = time.monotonic() + 3
    pages = 0
    while time.monotonic() < deadline:
        for path in ("/", "/jobs", "/jobs/ok", "/failures"):
            assert served.get(path)[0] == 200
            pages += 1
    after = worker_db.query("SELECT count(*) FROM tasks WHERE status = 'succeeded'")[0][0]
    assert after > before, "the worker stopped committing while pages were served"
    assert "database is locked" not in worker_db.log()
    assert worker_db.proc.poll() is None


def test_pages_leave_a_database_byte_for_byte_as_it_was(tmp_path):
    import hashlib

    box = tmp_path / "box"
    box.mkdir()
    db = box / "still.db"
    subprocess.run([sys.executable, "-m", "edgeworker", "--db", str(db), "migrate"], check=True,
                   capture_output=True)
    before = hashlib.sha256(db.read_bytes()).hexdigest(), sorted(os.listdir(box))
    server = ServeProcess(db=db, log_dir=tmp_path)
    try:
        for path in ("/", "/jobs", "/failures", "/runs/1", "/jobs/x") * 5:
            assert server.get(path)[0] in (200, 404)
    finally:
        assert server.stop() == 0
    assert (hashlib.sha256(db.read_bytes()).hexdigest(), sorted(os.listdir(box))) == before


def test_sigterm_stops_the_server_while_it_serves(worker_db):
    """Whatever the main thread is doing (accepting, starting a request's thread), SIGTERM ends
    it with status 0; a stop raised while a thread started was once taken for that request's
    error, and the server served on."""
    import threading

    for _ in range(5):
        server = ServeProcess(db=worker_db.db)
        done = threading.Event()

        def hammer(base: str, done: threading.Event) -> None:
            while not done.is_set():
                try:
                    urllib.request.urlopen(base + "/runs/1", timeout=5).read()
                except (OSError, http.client.HTTPException):
                    pass  # the server went away under a request

        clients = [threading.Thread(target=hammer, args=(server.base, done)) for _ in range(3)]
        for client in clients:
            client.start()
        try:
            time.sleep(0.3)  # requests under way (not a wait for a state: any moment will do)
            assert server.stop() == 0
        finally:
            done.set()
            for client in clients:
                client.join()
        assert "Traceback" not in server.log()


def test_a_read_only_connection_cannot_write(worker_db):
    from edgeworker.db import ReadOnlyDatabase

    database = ReadOnlyDatabase(worker_db.db)
    database.connect()
    try:
        with pytest.raises(Exception, match="readonly|read-only|query_only"):
            database.execute_sql("DELETE FROM tasks")
    finally:
        database.close()
    assert worker_db.query("SELECT count(*) FROM tasks")[0][0] > 0


# -- the database unavailable ---------------------------------------------------------------------

def test_a_missing_database_gives_a_503_page_then_the_page_once_it_exists(tmp_path):
    server = ServeProcess(db=tmp_path / "later.db")
    try:
        status, body, _ = server.get("/")
        assert status == 503
        assert "no database here yet" in body and "Traceback" not in body
        subprocess.run([sys.executable, "-m", "edgeworker", "--db", str(tmp_path / "later.db"),
                        "migrate"], check=True, capture_output=True)
        assert server.get("/")[0] == 200
        assert server.json("/")["worker"] == {"running": False, "pid": None, "since": None,
                                              "last_seen": None, "names": [],
                                              "alert": None}
    finally:
        assert server.stop() == 0


def test_a_database_that_needs_migrations_gives_a_503_page(tmp_path):
    db = tmp_path / "old.db"
    subprocess.run([sys.executable, "-m", "edgeworker", "--db", str(db), "migrate", "--to", "3"],
                   check=True, capture_output=True)
    server = ServeProcess(db=db)
    try:
        status, body, _ = server.get("/jobs")
        assert status == 503
        assert "being migrated or needs `edgeworker migrate`" in body
        status, body, _ = server.get("/jobs?format=json")
        assert status == 503 and json.loads(body)["status"] == 503
    finally:
        assert server.stop() == 0


def test_a_locked_database_gives_a_503_page(tmp_path):
    db = tmp_path / "locked.db"
    subprocess.run([sys.executable, "-m", "edgeworker", "--db", str(db), "migrate"], check=True,
                   capture_output=True)
    server = ServeProcess(db=db)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        status, body, _ = server.get("/")
        assert status == 503
        assert "database is locked" in body
        holder.execute("COMMIT")
        holder.close()
        assert server.get("/")[0] == 200
    finally:
        holder.close()
        assert server.stop() == 0


def test_a_file_that_is_not_sqlite_gives_a_503_page_and_is_left_alone(tmp_path):
    db = tmp_path / "notes.db"
    db.write_text("not a database\n")
    server = ServeProcess(db=db)
    try:
        status, body, _ = server.get("/failures")
        assert status == 503 and "not an SQLite database" in body
    finally:
        assert server.stop() == 0
    assert db.read_text() == "not a database\n"


def test_the_page_reads_a_database_in_a_read_only_directory_and_creates_nothing(tmp_path,
                                                                                tmpfs):
    """With no worker, there are no -wal and -shm files: the page reads the main file alone
    (edgeworker.db.ReadOnlyDatabase), so it needs no write access anywhere and leaves nothing."""
    mount = tmpfs("4m")
    db = mount.path / "ew.db"
    subprocess.run([sys.executable, "-m", "edgeworker", "--db", str(db), "migrate"], check=True,
                   capture_output=True)
    before = sorted(p.name for p in mount.path.iterdir())
    mount.remount("ro")
    server = ServeProcess(db=db, log_dir=tmp_path)
    try:
        for path in ("/", "/jobs", "/failures"):
            assert server.get(path)[0] == 200, path
        mount.remount("rw")
        assert server.get("/")[0] == 200
    finally:
        assert server.stop() == 0
    assert sorted(p.name for p in mount.path.iterdir()) == before


def test_a_row_the_page_cannot_read_gives_a_500_page_and_a_logged_traceback(tmp_path):
    db = tmp_path / "odd.db"
    subprocess.run([sys.executable, "-m", "edgeworker", "--db", str(db), "migrate"], check=True,
                   capture_output=True)
    con = sqlite3.connect(db)
    con.execute("INSERT INTO tasks (status, scheduled_for, due_at, created_at, finished_at) "
                "VALUES ('failed', 'yesterday', 'yesterday', 'not a time', 'not a time')")
    con.commit()
    con.close()
    server = ServeProcess(db=db, log_dir=tmp_path)
    try:
        status, body, _ = server.get("/runs/1")
        assert status == 500
        assert "internal error (details in the server&#x27;s log)" in body
        assert "Traceback" not in body and "not a time" not in body
        status, body, _ = server.get("/runs/1?format=json")
        assert (status, json.loads(body)["status"]) == (500, 500)
    finally:
        assert server.stop() == 0
    assert "internal error on /runs/1" in server.log() and "Traceback" in server.log()


# -- auth and listening ---------------------------------------------------------------------------

def edgeworker(*args: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeworker", *args], input=stdin, cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def test_hash_password_makes_a_line_the_server_accepts(tmp_path, worker_db):
    result = edgeworker("serve", "--hash-password", "ops", cwd=tmp_path, stdin="s3cret\n")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("ops:pbkdf2_sha256$") and "s3cret" not in line
    auth_file = tmp_path / "users"
    auth_file.write_text(f"# operators\n{line}\n")
    server = ServeProcess("--auth-file", str(auth_file), db=worker_db.db)
    try:
        status, _, headers = server.get("/")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
        for user, password in (("ops", "wrong"), ("nobody", "s3cret")):
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            assert server.get("/", {"Authorization": f"Basic {token}"})[0] == 401
        token = base64.b64encode(b"ops:s3cret").decode()
        for _ in range(2):  # the second from the remembered check
            assert server.get("/jobs", {"Authorization": f"Basic {token}"})[0] == 200
    finally:
        assert server.stop() == 0


def test_a_non_loopback_address_needs_an_auth_file(tmp_path):
    result = edgeworker("--db", str(tmp_path / "x.db"), "serve", "--listen", "0.0.0.0:0",
                        cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ("Error: --listen 0.0.0.0:0: not a loopback address; give "
                             "--auth-file to serve the page beyond this box\n")


@pytest.mark.parametrize("args, message", [
    (["--listen", "8077"], "'8077' is not HOST:PORT"),
    (["--listen", "127.0.0.1:99999"], "port 99999 is out of range"),
])
def test_a_bad_listen_address_is_a_usage_error(tmp_path, args, message):
    result = edgeworker("serve", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize("content, message", [
    ("", "no users in the auth file"),
    ("ops:plaintext\n", ":1: not `user:pbkdf2_sha256$...`"),
    ("# c\nops:pbkdf2_sha256$x$y$z\n", ":2: not `user:pbkdf2_sha256$...`"),
])
def test_a_bad_auth_file_is_a_one_line_error(tmp_path, content, message):
    auth_file = tmp_path / "users"
    auth_file.write_text(content)
    result = edgeworker("--db", str(tmp_path / "x.db"), "serve", "--auth-file", str(auth_file),
                        cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: {auth_file}") and message in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_port_in_use_is_a_one_line_error(tmp_path, served):
    port = served.base.rsplit(":", 1)[1]
    result = edgeworker("--db", str(tmp_path / "x.db"), "serve", "--listen", f"127.0.0.1:{port}",
                        cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith(f"Error: --listen 127.0.0.1:{port}: cannot listen there")


def test_auth_checks_the_password_in_process(tmp_path):
    auth_file = tmp_path / "users"
    auth_file.write_text(f"ops:{hash_password('pw', iterations=1000)}\n")
    auth = Auth(auth_file)
    good = "Basic " + base64.b64encode(b"ops:pw").decode()
    assert auth.check(good) and auth.check(good)
    assert not auth.check("Basic " + base64.b64encode(b"ops:pW").decode())
    assert not auth.check("Basic !!!") and not auth.check(None) and not auth.check("Bearer x")


def test_auth_derives_for_unknown_users_too_and_one_at_a_time(tmp_path, monkeypatch):
    import threading

    import edgeworker.web as web

    auth_file = tmp_path / "users"
    auth_file.write_text(f"ops:{hash_password('pw', iterations=20_000)}\n")
    auth = Auth(auth_file)
    running, most, calls = [0], [0], []
    lock = threading.Lock()
    real = web._check_hash

    def counted(stored: str, password: str) -> bool:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            calls.append(stored)
        try:
            return real(stored, password)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(web, "_check_hash", counted)
    header = "Basic " + base64.b64encode(b"nobody:pw").decode()
    assert not auth.check(header)
    assert len(calls) == 1  # a derivation as long as a real user's: no telling who exists
    threads = [threading.Thread(target=auth.check, args=(
        "Basic " + base64.b64encode(f"ops:guess{n}".encode()).decode(),)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 7 and most[0] == 1


def test_a_runs_page_shows_its_hooks_and_waiting_pings_escaped(migrated):
    """The run page renders `report.task`'s hooks (on_failure/on_success outcomes, pings that
    had to wait in the outbox), with nothing a hook printed able to inject HTML."""
    from edgeworker.web import render_run

    migrated.ok("jobs", "add", "a", "--command", "true", "--every", "1h")
    with sqlite3.connect(migrated.db) as con:
        row = {"task_id": 1, "job_name": "a", "hook": "on_failure", "status": "failed",
               "exit_code": 3, "error": "<script>alert(1)</script>", "output": "", "finished_at":
               "2026-12-02T10:00:00.000000Z"}
        con.execute(f"INSERT INTO hook_runs ({', '.join(row)}) VALUES "
                    f"({', '.join('?' for _ in row)})", tuple(row.values()))
    task = json.loads(migrated.ok("tasks", "show", "1", "--json"))
    assert [h["hook"] for h in task["hooks"]] == ["on_failure"]
    html = render_run(task)
    assert "Hooks and pings" in html and "on_failure" in html
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
