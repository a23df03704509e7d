"""``dyadsync demo --live``: the simulated room keeps running with the room console; an operator starts a
session, adds a marker and stops it over the console's HTTP API; Ctrl-C ends the demo cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from broker import store

from ..conftest import ctrl_c_works

ROOT = Path(__file__).resolve().parents[2]


def test_live_demo_is_operated_from_the_console(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "dyadsync", "demo", "--live", "--minutes", "10", "--quiet",
                             "--data-dir", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=ctrl_c_works)
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "room console:" in line:
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(180), "".join(lines)
        m = re.search(r"room console: (\S+)\s+user: (\S+)\s+password: (\S+)", "".join(lines))
        assert m, "".join(lines)
        url, user, password = m.groups()
        with httpx.Client(base_url=url, timeout=60, headers={"X-Dyadsync": "1"}) as http:
            assert http.post("/api/start", json={"therapist": "T09", "client": "C09"}).status_code == 401
            assert http.post("/api/login", json={"user": user, "password": password}).status_code == 200
            r = http.post("/api/start", json={"session": "live-1", "therapist": "T09", "client": "C09"})
            assert r.status_code == 200, r.text
            time.sleep(2)  # a marker a moment after the start (any time inside the session will do)
            r = http.post("/api/marker", json={"label": "rupture"})
            assert r.status_code == 200, r.text
            r = http.post("/api/stop", json={})
            assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    out = "".join(lines)
    assert "dyadsync report live-1" in out, out
    con = store.connect(tmp_path / "hub.sqlite", readonly=True)
    try:
        s = store.get_session(con, "live-1")
        assert s is not None and s["therapist_code"] == "T09" and s["client_code"] == "C09", s
        assert s["stopped_ns"] is not None
        assert [m["label"] for m in store.session_markers(con, "live-1")] == ["rupture"]
    finally:
        con.close()
