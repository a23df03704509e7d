"""`dyadsync hub run` started before its broker waits for it (saying so), then records."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

from broker import store, wire
from broker.mosquitto import free_port

from .helpers import ack, client, close, make_blocks, publish_all, start_cmd, wait
from .test_hub_cli import _toml


def test_hub_run_waits_for_its_broker(hub_factory, tmp_path):
    cfg, layout, proc = hub_factory(name="hub", start=False)
    conf = _toml(cfg.out_dir, proc, free_port())
    assert subprocess.run([sys.executable, "-m", "dyadsync", "hub", "init", "-c", str(conf)],
                          capture_output=True, timeout=60).returncode == 0
    run = subprocess.Popen([sys.executable, "-m", "dyadsync", "hub", "run", "-c", str(conf)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(run.stdout.readline, "")), daemon=True)
    reader.start()
    unit = None
    try:
        assert wait(lambda: any("waiting for the broker" in ln for ln in lines), 60), lines
        assert run.poll() is None  # still there, not exited
        proc.start()
        assert wait(lambda: any("recording room" in ln for ln in lines), 90), lines
        unit = client(proc.host, proc.port, "unit-a", layout.auth.units["unit-a"])
        console = client(proc.host, proc.port, *layout.auth.service_user("console"))
        publish_all(console, [(wire.cmd_topic("room-a"), start_cmd("late1").encode())])
        publish_all(unit, [ack("unit-a", "late1-start")])
        publish_all(unit, [(wire.raw_topic("room-a", "unit-a", "client/eda"), wire.encode_block(b, "late1"))
                           for b in make_blocks("client/eda", 32.0, 5, 32)])
        close(console)
        db = cfg.out_dir / "hub.sqlite"

        def stored():
            con = store.connect(db, readonly=True)
            try:
                return store.stored_counts(con, session="late1")["raw"], store.get_session(con, "late1")
            finally:
                con.close()

        assert wait(lambda: stored()[0] == 5 and (stored()[1] or {}).get("therapist_code") == "T01", 30)
    finally:
        if unit is not None:
            close(unit)
        run.send_signal(signal.SIGTERM)
        run.wait(30)
        reader.join(5)
    assert run.returncode == 0, "".join(lines)
