"""`edgeworker serve` on a PostgreSQL URL: the real server in a subprocess over a database on the
private PostgreSQL server that a real worker writes; the same pages and JSON as on a file, the
CLI's shapes, read-only transactions, and a 503 page for a server that is not there or a database
not migrated yet."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_web import ServeProcess
from workerproc import WorkerProcess

from edgeworker.web import Site

psycopg2 = pytest.importorskip("psycopg2")

pytestmark = pytest.mark.timeout(90)

JOBS = """
[[jobs]]
name = "ok"
command = ["sh", "-c", "echo '<b>hi</b>'"]
every = "1s"

[[jobs]]
name = "broken"
command = ["sh", "-c", "echo 'about to fail' >&2; exit 3"]
every = "1s"
max_attempts = 1
"""


class PgWorker(WorkerProcess):
    def __init__(self, directory, url: str):
        super().__init__(directory, f'[worker]\ndatabase = "{url}"\n{JOBS}')
        self.url = url

    def count(self, where: str) -> int:
        con = psycopg2.connect(self.url)
        try:
            cursor = con.cursor()
            cursor.execute("SELECT count(*) FROM tasks t JOIN jobs j ON j.id = t.job_id "
                           f"WHERE {where}")
            return cursor.fetchone()[0]
        finally:
            con.close()


def cli_json(tmp_path, url: str, *args: str):
    result = subprocess.run([sys.executable, "-m", "edgeworker", "--db", url, *args, "--json"],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path, check=True)
    return json.loads(result.stdout)


def test_the_status_page_serves_a_postgresql_database(tmp_path, pg_url):
    from workerproc import wait_for

    with PgWorker(tmp_path, pg_url) as worker:
        worker.start().wait_running()
        wait_for(lambda: worker.count("j.name = 'broken' AND t.status = 'failed'") >= 1
                 and worker.count("j.name = 'ok' AND t.status = 'succeeded'") >= 1,
                 30, what="a failed and a succeeded run", log=worker.log)
        server = ServeProcess(db=pg_url, log_dir=tmp_path)
        try:
            for path, needle in [("/", "Workers"), ("/jobs", "every second"),
                                 ("/jobs/ok", "Runs, newest"), ("/failures", "broken")]:
                status, body, _ = server.get(path)
                assert status == 200, (path, body)
                assert needle in body, path
            overview = server.json("/")
            assert overview["database"] == pg_url
            assert overview["disk"] is None and overview["database_bytes"] > 0
            assert overview["worker"]["running"] is True
            assert overview["worker"]["pid"] == worker.proc.pid
            status = cli_json(tmp_path, pg_url, "status")
            assert [w["name"] for w in overview["workers"]] == [
                w["name"] for w in status["workers"]]
            assert {j["name"] for j in server.json("/jobs")} == {"ok", "broken"}
            failed = server.json("/failures")["tasks"][0]
            assert failed["job"] == "broken"
            assert server.json(f"/runs/{failed['id']}") == cli_json(
                tmp_path, pg_url, "tasks", "show", str(failed["id"]))
            status, body, _ = server.get(f"/runs/{failed['id']}")
            assert "about to fail" in body and "exit status 3" in body
        finally:
            assert server.stop() == 0
        assert "Traceback" not in server.log()
        assert worker.stop() == 0


def test_the_pages_connection_cannot_write(pg_url, tmp_path):
    subprocess.run([sys.executable, "-m", "edgeworker", "--db", pg_url, "migrate"], check=True,
                   capture_output=True, cwd=tmp_path)
    site = Site(pg_url)
    with pytest.raises(Exception, match="read-only transaction"):
        site.with_database(lambda: site.database.execute_sql("DELETE FROM jobs"))


def test_a_database_not_migrated_yet_gives_a_503_page(tmp_path, pg_url):
    server = ServeProcess(db=pg_url, log_dir=tmp_path)
    try:
        status, body, _ = server.get("/jobs")
        assert status == 503
        assert "being migrated or needs `edgeworker migrate`" in body
        subprocess.run([sys.executable, "-m", "edgeworker", "--db", pg_url, "migrate"],
                       check=True, capture_output=True, cwd=tmp_path)
        assert server.get("/jobs")[0] == 200
    finally:
        assert server.stop() == 0


def test_a_server_that_is_not_there_gives_a_503_page(tmp_path):
    url = f"postgresql://postgres@/edgeworker?host={tmp_path}"
    server = ServeProcess(db=url, log_dir=tmp_path)
    try:
        status, body, _ = server.get("/?format=json")
        assert status == 503
        assert json.loads(body)["error"] == (
            f'{url}: cannot connect to the server on socket "{tmp_path}/.s.PGSQL.5432": '
            "No such file or directory")
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log()
