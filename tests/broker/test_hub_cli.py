"""`dyadsync hub run` and `dyadsync hub serve` as real processes on the files `hub init` wrote."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx

from broker import store, wire
from broker.mosquitto import free_port, wait_for_port

from ..conftest import ROOM
from .helpers import client, close, make_blocks, publish_all, start_cmd, wait


def _toml(cfg_dir, proc, api_port):
    text = (f'room = "{ROOM}"\nunits = ["unit-a", "unit-b"]\nout_dir = "{cfg_dir}"\nmosquitto_user = "root"\n'
            f'[listener]\nhost = "127.0.0.1"\nport = {proc.port}\n[api]\nport = {api_port}\n')
    path = cfg_dir / "hub.toml"
    path.write_text(text)
    return path


def test_hub_run_and_serve_processes(hub_factory, tmp_path):
    cfg, layout, proc = hub_factory(name="hub")
    api_port = free_port()
    conf = _toml(cfg.out_dir, proc, api_port)  # the same out_dir: init keeps the passwords Mosquitto uses
    assert subprocess.run([sys.executable, "-m", "dyadsync", "hub", "init", "-c", str(conf)],
                          capture_output=True, timeout=60).returncode == 0
    proc.stop()
    proc.start()  # reload the regenerated files
    run = subprocess.Popen([sys.executable, "-m", "dyadsync", "hub", "run", "-c", str(conf)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    serve = subprocess.Popen([sys.executable, "-m", "dyadsync", "hub", "serve", "-c", str(conf)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    unit = console = None
    try:
        unit = client(proc.host, proc.port, "unit-a", layout.auth.units["unit-a"])
        console = client(proc.host, proc.port, *layout.auth.service_user("console"))
        db = cfg.out_dir / "hub.sqlite"
        assert wait(lambda: db.exists(), 30)
        time.sleep(1.0)  # the recorder subscribes right after connecting; its session keeps anything later
        publish_all(console, [(wire.cmd_topic(ROOM), start_cmd("cli1").encode())])
        blocks = make_blocks("client/eda", 32.0, 20, 32)
        publish_all(unit, [(wire.raw_topic(ROOM, "unit-a", "client/eda"), wire.encode_block(b, "cli1"))
                           for b in blocks])

        def stored():
            con = store.connect(db, readonly=True)
            try:
                return con.execute("SELECT COUNT(*) FROM blocks WHERE session='cli1'").fetchone()[0]
            finally:
                con.close()

        assert wait(lambda: stored() == 20, 30)
        assert wait_for_port("127.0.0.1", api_port, 30)
        token = (cfg.out_dir / "api" / "token").read_text().strip()
        url = f"http://127.0.0.1:{api_port}/v1/sessions/cli1"
        assert httpx.get(url).status_code == 401
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["streams"][0]["blocks"] == 20
    finally:
        close(*(c for c in (unit, console) if c is not None))
        for p in (run, serve):
            p.send_signal(signal.SIGTERM)
        out_run = run.communicate(timeout=30)[0].decode()
        serve.communicate(timeout=30)
    assert run.returncode == 0, out_run
    assert "recorder stopped" in out_run
