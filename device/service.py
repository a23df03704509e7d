"""systemd integration (sd_notify over ``$NOTIFY_SOCKET``) and the host clock state (chrony).

``Notifier`` speaks the sd_notify datagram protocol itself (no libsystemd needed): ``READY=1``,
``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...``. A socket path starting with ``@`` is in the abstract
namespace. Without ``$NOTIFY_SOCKET`` (not run by systemd) every call is a no-op. ``watchdog_interval_s``
is half of ``$WATCHDOG_USEC`` (when ``$WATCHDOG_PID`` is unset or ours), as sd_watchdog_enabled(3) advises.

``ClockMonitor`` runs ``chronyc -n tracking`` and reports ``True`` (synchronised, |offset| within the
limit), ``False`` (not synchronised) or ``None`` (unknown: chronyc missing or unparseable).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = env.get("NOTIFY_SOCKET") or None
        self.watchdog_interval_s: float | None = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec and (not pid or pid == str(os.getpid())):
            try:
                self.watchdog_interval_s = int(usec) / 2e6
            except ValueError:
                logger.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
        self.sent: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        if not self.address:
            return False
        msg = "\n".join(fields)
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(addr)
                s.sendall(msg.encode())
        except OSError as exc:
            logger.warning("sd_notify %r to %s failed: %s", msg, self.address, exc)
            return False
        self.sent.append(msg)
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")


_LEAP_RE = re.compile(r"^Leap status\s*:\s*(.+)$", re.MULTILINE)
_OFFSET_RE = re.compile(r"^System time\s*:\s*([0-9.eE+-]+) seconds (fast|slow)", re.MULTILINE)


def parse_chronyc_tracking(text: str, max_offset_ms: float) -> bool | None:
    """``True``/``False``/``None`` from ``chronyc tracking`` output."""
    m = _LEAP_RE.search(text)
    if not m:
        return None
    if m.group(1).strip().lower().startswith("not synchronised"):
        return False
    off = _OFFSET_RE.search(text)
    if off is None:
        return None
    return abs(float(off.group(1))) * 1000.0 <= max_offset_ms


class ClockMonitor:
    """Polls the host clock state every ``interval_s`` (call :meth:`poll`; cheap between intervals)."""

    def __init__(self, check: str = "chronyc", command: Sequence[str] = ("chronyc", "-n", "tracking"),
                 interval_s: float = 60.0, max_offset_ms: float = 10.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.check = check
        self.command = list(command)
        self.interval_s = interval_s
        self.max_offset_ms = max_offset_ms
        self._monotonic = monotonic
        self._next = 0.0
        self._lock = threading.Lock()
        self.synced: bool | None = {"assume_synced": True, "assume_unsynced": False}.get(check)

    def poll(self, force: bool = False) -> bool | None:
        if self.check != "chronyc":
            return self.synced
        with self._lock:
            now = self._monotonic()
            if not force and now < self._next:
                return self.synced
            self._next = now + self.interval_s
        try:
            out = subprocess.run(self.command, capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.info("clock state unknown: %s", exc)
            self.synced = None
            return None
        new = parse_chronyc_tracking(out.stdout, self.max_offset_ms) if out.returncode == 0 else None
        if new != self.synced:
            logger.info("host clock synchronised: %s", new)
        self.synced = new
        return new
