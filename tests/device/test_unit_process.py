"""``dyadsync unit run`` as a separate process: sd_notify READY/WATCHDOG/STOPPING on a real datagram
socket, SIGTERM -> flushed outbox and retained offline status, SIGKILL -> the will, and the open
session resumes on restart without reusing a sequence number."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from broker import store
from broker.recorder import Recorder
from device.config import load_config

from .conftest import start_cmd

ROOT = Path(__file__).resolve().parents[2]


def _spawn(config: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "dyadsync", "unit", "run", "--config", config], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _recv_until(sock: socket.socket, wanted: bytes, timeout_s: float = 20) -> list[bytes]:
    got = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096)
        except TimeoutError:
            break
        got.append(msg)
        if wanted in msg.split(b"\n"):
            return got
    raise AssertionError(f"no {wanted!r} in {got}")


def test_sigterm_notify_and_clean_shutdown(tmp_path, unit_toml, console, mosquitto, room_auth):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    config = unit_toml(speed=4.0)
    proc = _spawn(config, {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"})
    try:
        _recv_until(sock, b"READY=1")
        _recv_until(sock, b"WATCHDOG=1")
        assert console.wait_status("unit-a", lambda s: s.state == "idle")
        cid = start_cmd(console, "s-term")
        assert console.wait_ack(cid)[0].ok
        assert console.wait_status("unit-a", lambda s: s.state == "recording")
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _recv_until(sock, b"STOPPING=1")
        out, _ = proc.communicate(30)
        assert proc.returncode == 0, out[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
    final = console.wait_status("unit-a", lambda s: s.state == "offline")
    assert final is not None and final.session == "s-term" and final.buffer_depth == 0
    db = load_config(config).db_path
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM outbox WHERE acked_ns IS NULL").fetchone()[0] == 0  # flushed
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # the CLI status shows the open session and the empty outbox
    out = subprocess.run([sys.executable, "-m", "dyadsync", "unit", "status", "--config", config], cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, check=True)
    assert "s-term (open" in out.stdout and "0 messages" in out.stdout
    assert "acknowledged kept to resend" in out.stdout


def test_sigkill_sends_will_and_session_resumes(tmp_path, unit_toml, console, mosquitto, room_auth):
    rec = Recorder(tmp_path / "hub.sqlite", "room-a", mosquitto.host, mosquitto.port,
                   *room_auth.service_user("recorder")).start()
    # simulated time anchored at a fixed epoch, so the restarted process continues the same time line
    config = unit_toml(speed=4.0, epoch_ns=time.time_ns())
    proc = _spawn(config)
    try:
        assert console.wait_status("unit-a", lambda s: s.state == "idle")
        cid = start_cmd(console, "s-crash")
        assert console.wait_ack(cid)[0].ok
        con = store.connect(tmp_path / "hub.sqlite", readonly=True)
        deadline = time.monotonic() + 30
        while store.stored_counts(con, "unit-a", "s-crash")["raw"] < 12 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.kill()
        proc.wait(10)
        will = console.wait_status("unit-a", lambda s: s.state == "offline")
        assert will is not None and will.session is None  # the will was set before any session existed
        before = {s: n for s, n in con.execute(
            "SELECT stream, MAX(seq) FROM blocks WHERE kind='raw' AND session='s-crash' GROUP BY stream")}
        proc = _spawn(config)
        back = console.wait_status("unit-a", lambda s: s.state == "recording" and s.session == "s-crash")
        assert back is not None, "the open session did not resume after SIGKILL"
        # a start for the same session is idempotent (acked again, not restarted)
        assert console.wait_ack(start_cmd(console, "s-crash"))[0].ok
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = {s: n for s, n in con.execute(
                "SELECT stream, MAX(seq) FROM blocks WHERE kind='raw' AND session='s-crash' GROUP BY stream")}
            if all(after.get(s, -1) >= n + 3 for s, n in before.items()):
                break
            time.sleep(0.1)
        assert all(after[s] >= n + 3 for s, n in before.items()), (before, after)
        stop = console.send("stop", "s-crash")
        assert console.wait_ack(stop)[0].ok
        proc.send_signal(signal.SIGTERM)
        proc.communicate(30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        time.sleep(0.5)
        rec.stop()
    con = store.connect(tmp_path / "hub.sqlite", readonly=True)
    # raw numbering continued after the crash: a gap only where data was lost in the kill, never reuse
    rows = con.execute("SELECT stream, seq, t0_ns FROM blocks WHERE kind='raw' AND session='s-crash' "
                       "ORDER BY stream, seq").fetchall()
    by_stream: dict[str, list[tuple[int, int]]] = {}
    for s, seq, t0 in rows:
        by_stream.setdefault(s, []).append((seq, t0))
    for s, items in by_stream.items():
        t0s = [t for _, t in items]
        assert t0s == sorted(t0s), f"{s}: a sequence number was reused for older data"
