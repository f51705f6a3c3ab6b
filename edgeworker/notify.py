"""sd_notify: telling systemd that the worker is ready, alive, and stopping.

A few lines over the datagram socket named by $NOTIFY_SOCKET (the protocol is that small; a
library would add a dependency for nothing). Silent when the variable is unset. Under a
PyInstaller one-file binary the worker is the bootloader's child, so the unit needs
`NotifyAccess=all`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

logger = logging.getLogger("edgeworker.notify")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self.address = address or None
        self.socket: socket.socket | None = None
        if self.address:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        watched = {os.getpid()}
        if getattr(sys, "frozen", False):
            watched.add(os.getppid())  # systemd watches the one-file binary's bootloader
        owned = not watchdog_pid or watchdog_pid in {str(pid) for pid in watched}
        # systemd wants a ping at least every WATCHDOG_USEC; ping at half of it.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and owned else None

    @property
    def enabled(self) -> bool:
        return self.socket is not None

    def send(self, *fields: str) -> None:
        if self.socket is None:
            return
        try:
            self.socket.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            logger.warning("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")
