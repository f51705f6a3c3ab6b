"""The status page in a real browser: headless Chromium (Debian's `chromium`) loads each page
from a real `edgeworker serve` over a database made by a real worker, the test checks the DOM the
browser built, and each page leaves a screenshot (phone-sized) in the test's tmp_path."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import require
from test_web import NASTY, ServeProcess, jobs_config
from workerproc import WorkerProcess

pytestmark = pytest.mark.timeout(60)

PHONE = (412, 900)


def chromium_unavailable_reason() -> str | None:
    if shutil.which("chromium") is None:
        return "chromium not found (apt-get install chromium; .ci/run installs it)"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    require(chromium_unavailable_reason())
    directory = tmp_path_factory.mktemp("browser")
    with WorkerProcess(directory, jobs_config(directory)) as worker:
        worker.start().wait_running()
        worker.wait_tasks("status = 'failed'", 2)
        worker.wait_tasks("status = 'succeeded' AND job = 'ok'", 2)
        server = ServeProcess(db=worker.db)
        try:
            yield worker, server
        finally:
            assert server.stop() == 0


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    # --no-sandbox: Chromium's own sandbox refuses to run as root (CI runs as root).
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
                           *args], capture_output=True, text=True, timeout=45)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def pages(worker: WorkerProcess) -> dict[str, tuple[str, list[str]]]:
    run = worker.tasks("status = 'succeeded' AND job = 'ok'")[0]["id"]
    failed = worker.tasks("status = 'failed'")[0]["id"]
    return {
        "overview": ("/", ["Worker", "up</span>", "Last recovery", "Free disk", "Last 24 h"]),
        "jobs": ("/jobs", ["every second", "daily at 02:00", 'class="strip"', 'class="failed"']),
        "job": ("/jobs/broken", ["Runs, newest first", "exit status 3"]),
        "run": (f"/runs/{run}", ["Output (last 64 KiB)", "&lt;script&gt;alert"]),
        "failed-run": (f"/runs/{failed}", ["about to fail", "exit status 3"]),
        "failures": ("/failures", ["broken", 'class="s failed"']),
    }


@pytest.mark.parametrize("name", ["overview", "jobs", "job", "run", "failed-run", "failures"])
def test_each_page_in_chromium(site, name, tmp_path):
    worker, server = site
    path, expected = pages(worker)[name]
    dom = chromium("--dump-dom", server.base + path, profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for text in expected:
        assert text in dom.stdout, (name, text)
    # The DOM as the browser built it: the job's output is text, never an element.
    assert "<script" not in dom.stdout
    assert "<b>bold" not in dom.stdout
    assert "Traceback" not in dom.stdout

    shot = tmp_path / f"{name}.png"
    result = chromium(f"--window-size={PHONE[0]},{PHONE[1]}", f"--screenshot={shot}",
                      server.base + path, profile=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    assert png_size(shot) == PHONE
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


def test_the_run_page_shows_the_output_as_the_job_printed_it(site, tmp_path):
    worker, server = site
    run = worker.tasks("status = 'succeeded' AND job = 'ok'")[0]["id"]
    dom = chromium("--dump-dom", f"{server.base}/runs/{run}", profile=tmp_path / "profile")
    # Serialising the DOM escapes only &, < and > in text (quotes stay as they are): the <pre>
    # holds the job's output character for character, decoded from the page's escapes.
    escaped = NASTY.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert f"<pre>{escaped}</pre>" in dom.stdout
