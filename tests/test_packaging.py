"""The Debian package's layout (packaging/deb), built from a stand-in unpacked build in a second,
without PyInstaller or qemu. `make test-arm` installs the real one in a booted systemd."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from edgeworker import __version__

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not found")


@pytest.fixture(scope="module")
def deb(tmp_path_factory) -> Path:
    unpacked = tmp_path_factory.mktemp("unpacked") / "edgeworker"
    (unpacked / "_internal").mkdir(parents=True)
    (unpacked / "edgeworker").write_text("#!/bin/sh\necho stand-in\n")
    (unpacked / "edgeworker").chmod(0o755)
    (unpacked / "_internal" / "libpython3.11.so.1.0").write_bytes(b"\x7fELF")
    (unpacked / "_internal" / "libpython3.11.so.1.0").chmod(0o755)
    out = tmp_path_factory.mktemp("deb") / f"edgeworker_{__version__}_arm64.deb"
    built = subprocess.run([REPO / "packaging" / "deb", "arm64", unpacked, out],
                           capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    return out


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", deb, field], capture_output=True, text=True,
                          check=True).stdout.strip()


def contents(deb: Path) -> dict[str, tuple[str, str]]:
    """path -> (mode and type, owner) from `dpkg-deb --contents`."""
    listing = subprocess.run(["dpkg-deb", "--contents", deb], capture_output=True, text=True,
                             check=True).stdout
    entries = {}
    for line in listing.splitlines():
        mode, owner, _size, _date, _time, path, *rest = line.split()
        entries[path.removeprefix(".").rstrip("/") or "/"] = (mode, owner, " ".join(rest))
    return entries


def test_control_fields(deb):
    assert deb_field(deb, "Package") == "edgeworker"
    assert deb_field(deb, "Version") == __version__
    assert deb_field(deb, "Architecture") == "arm64"
    assert deb_field(deb, "Depends") == "libc6 (>= 2.36), zlib1g, adduser"


def test_layout(deb):
    files = contents(deb)
    assert files["/usr/lib/edgeworker/edgeworker"][:2] == ("-rwxr-xr-x", "root/root")
    # Libraries are not programs (lintian: shared-library-is-executable).
    assert files["/usr/lib/edgeworker/_internal/libpython3.11.so.1.0"][0] == "-rw-r--r--"
    assert files["/usr/bin/edgeworker"][0].startswith("l")
    assert files["/usr/bin/edgeworker"][2] == "-> ../lib/edgeworker/edgeworker"
    assert files["/etc/edgeworker/edgeworker.toml"][:2] == ("-rw-r-----", "root/root")
    assert "/lib/systemd/system/edgeworker.service" in files
    for doc in ("copyright", "changelog.gz", "deploy.md.gz"):
        assert f"/usr/share/doc/edgeworker/{doc}" in files
    assert not any(path.startswith(("/usr/local", "/var", "/opt")) for path in files)


def test_unit_points_at_the_packaged_program(deb, tmp_path):
    subprocess.run(["dpkg-deb", "--extract", deb, tmp_path], check=True)
    unit = (tmp_path / "lib/systemd/system/edgeworker.service").read_text()
    assert "/usr/local" not in unit
    assert "ExecStart=/usr/bin/edgeworker --config /etc/edgeworker/edgeworker.toml run\n" in unit
    assert "Documentation=file:///usr/share/doc/edgeworker/deploy.md.gz\n" in unit
    shipped = (REPO / "systemd/edgeworker.service").read_text()
    assert unit.count("\n") == shipped.count("\n")


def test_maintainer_scripts_and_conffiles(deb, tmp_path):
    subprocess.run(["dpkg-deb", "--control", deb, tmp_path], check=True)
    assert (tmp_path / "conffiles").read_text() == "/etc/edgeworker/edgeworker.toml\n"
    for script in ("postinst", "prerm", "postrm"):
        path = tmp_path / script
        assert path.stat().st_mode & 0o777 == 0o755
        assert subprocess.run(["sh", "-n", path]).returncode == 0
    # Nothing is enabled or started by the package: only a running service is restarted.
    commands = [line.split() for s in ("postinst", "prerm", "postrm")
                for line in (tmp_path / s).read_text().splitlines()
                if not line.lstrip().startswith("#")]
    actions = {words[i + 1] for words in commands for i, word in enumerate(words[:-1])
               if word in ("systemctl", "deb-systemd-invoke", "deb-systemd-helper")
               and words[i - 1:i] != ["-v"]}
    assert actions == {"--system", "try-restart", "stop", "purge"}
