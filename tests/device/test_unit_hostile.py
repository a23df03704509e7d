"""Nothing a message contains stops a unit, and a full disk loses nothing without a count.

Live, through a real Mosquitto with the recorder storing at a real hub database: hostile commands (20,000
``[``, an integer of 400 digits) are answered with a NACK (or counted when they carry no usable id), change
no state and leave the next session recording normally. A full disk (a real tmpfs of a few hundred KB, when
run as root) makes the unit hold its messages in memory and say ``fatal`` to the hub directly; when space
returns it commits them and recovers by itself, and what it had to drop is exactly the gap at the hub.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import threading

import pytest

from broker import store, wire
from device.config import load_config
from device.unit import Unit

from .conftest import start_cmd
from .test_unit import _hub, _wait


@pytest.fixture
def hub_recorder(tmp_path, mosquitto, room_auth):
    from broker.recorder import Recorder

    rec = Recorder(tmp_path / "hub.sqlite", "room-a", mosquitto.host, mosquitto.port,
                   *room_auth.service_user("recorder")).start()
    yield rec
    rec.stop()


class RunningRc:
    """``Unit.run`` in a thread, keeping its exit status."""

    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.stop = threading.Event()
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.rc = self.unit.run(self.stop, False)

    def close(self) -> int | None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.rc


def _stored(tmp_path, session: str) -> dict[str, int]:
    c = _hub(tmp_path)
    try:
        return store.stored_counts(c, "unit-a", session)
    finally:
        c.close()


def test_hostile_commands_are_nacked_counted_and_change_nothing(tmp_path, unit_toml, console, hub_recorder,
                                                                monkeypatch):
    unit = Unit(load_config(unit_toml(speed=4.0)))
    run = RunningRc(unit)
    try:
        assert console.wait_status("unit-a", lambda s: s.state == "idle")
        assert console.wait_ack(start_cmd(console, "s-h1"))[0].ok
        assert _wait(lambda: _stored(tmp_path, "s-h1")["raw"] >= 8)
        markers_before = unit.pipeline.session.markers

        console.send_raw(b"[" * 20_000)  # too deep for json: no usable id
        nack = console.wait_ack("invalid")
        # (refused by the wire's depth bound, or a RecursionError out of a decoder without it: a NACK either way)
        assert nack and not nack[0].ok and nack[0].error.startswith("bad command"), nack
        big = json.dumps({"cmd": "marker", "id": "m-big", "label": "x", "participants": {}, "schema": 1,
                          "session": "s-h1", "time_ns": 0}).replace('"time_ns": 0', '"time_ns": ' + "9" * 400)
        console.send_raw(big.encode())
        nack = console.wait_ack("m-big")
        assert nack and not nack[0].ok and ("int64" in nack[0].error or "time_ns" in nack[0].error), nack
        deep = b'{"cmd":"marker","id":"m-deep","session":"s-h1","time_ns":1,"label":' + b"[" * 20_000
        console.send_raw(deep)  # cut off and too deep: its id cannot be read either
        assert _wait(lambda: unit.bad_commands == 3)
        # whatever a decoder lets out (here the RecursionError / OverflowError main's decoders once let out),
        # the unit answers, counts and goes on
        real_decode = wire.Command.decode

        def leaky_decode(payload: bytes):
            if b"boom-r" in payload:
                raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")
            if b"boom-o" in payload:
                raise OverflowError("int too large to convert to float")
            return real_decode(payload)

        monkeypatch.setattr(wire.Command, "decode", staticmethod(leaky_decode))
        for cid, err in (("boom-r", "RecursionError"), ("boom-o", "OverflowError")):
            nack = console.wait_ack(console.send("marker", "s-h1", cid=cid, label="x"))
            assert nack and not nack[0].ok and err in nack[0].error, nack
        monkeypatch.undo()
        assert _wait(lambda: unit.bad_commands == 5)

        st = console.wait_status("unit-a", lambda s: s.dropped.get("bad_commands") == 5)
        assert st is not None and st.state == "recording" and st.session == "s-h1", st
        assert unit.fatal is None and unit.pipeline.session.id == "s-h1"
        assert unit.pipeline.session.markers == markers_before  # the 400-digit marker was not executed
        ok = console.send("marker", "s-h1", label="after")
        assert console.wait_ack(ok)[0].ok and unit.pipeline.session.markers == markers_before + 1
        assert console.wait_ack(console.send("stop", "s-h1"))[0].ok

        # the next session records normally
        assert console.wait_ack(start_cmd(console, "s-h2"))[0].ok
        assert _wait(lambda: _stored(tmp_path, "s-h2")["raw"] >= 8 and _stored(tmp_path, "s-h2")["feat"] >= 4)
        assert console.wait_ack(console.send("stop", "s-h2"))[0].ok
    finally:
        rc = run.close()
    assert rc == 0 and unit.fatal is None
    assert _wait(lambda: hub_recorder.pending() == 0, 10)
    con = _hub(tmp_path)
    assert store.gaps(con, "s-h1") == [] and store.gaps(con, "s-h2") == []
    acks = {r[0]: r[1] for r in con.execute("SELECT cmd_id, ok FROM acks WHERE unit='unit-a'")}
    assert acks.get("m-big") == 0 and acks.get("invalid") == 0


# ---------------------------------------------------------------------------------------- full disk
def _fill(path) -> int:
    """Write a file until the filesystem is full; returns the bytes written."""
    n = 0
    chunk = b"\0" * 4096
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n += f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        for size in (1024, 256, 64, 16, 1):  # the last crumbs too
            while True:
                try:
                    n += f.write(b"\0" * size)
                except OSError:
                    break
    return n


@pytest.fixture
def small_fs(tmp_path):
    """A real tmpfs of 1 MiB for the unit's data dir (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) on this machine")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1024k,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_holds_counts_tells_the_hub_and_recovers(tmp_path, small_fs, unit_toml, console, hub_recorder):
    cfg = load_config(unit_toml(speed=4.0, data_dir=small_fs / "data",
                                extra="[outbox]\nkeep_acked_s = 0\n"))
    unit = Unit(cfg)
    unit.HELD_MAX_BYTES = 24_000  # about 5 s of raw blocks at 4x: the spell below drops some, exactly counted
    unit.RETRY_WRITE_S = 0.2
    run = RunningRc(unit)
    filler = small_fs / "filler"
    try:
        assert console.wait_status("unit-a", lambda s: s.state == "idle")
        assert console.wait_ack(start_cmd(console, "s-full"))[0].ok
        assert _wait(lambda: _stored(tmp_path, "s-full")["raw"] >= 8)
        _fill(filler)
        st = console.wait_status("unit-a", lambda s: s.state == "fatal", 30)  # published around the outbox
        assert st is not None and unit.unwritable is not None, unit.unwritable
        assert "full" in unit.unwritable
        assert _wait(lambda: unit.status().dropped.get("outbox_unwritten_raw", 0) > 0, 60)
        # a command is still answered (its ack is held and sent once written; the NACK path is the same)
        marker = console.send("marker", "s-full", label="during")
        held_before_free = len(unit._held)
        assert held_before_free > 0
        filler.unlink()  # space returns
        assert console.wait_ack(marker)[0].ok
        st = console.wait_status("unit-a", lambda s: s.state == "recording", 30)
        assert st is not None and unit.unwritable is None and unit.fatal is None
        assert console.wait_ack(console.send("stop", "s-full"))[0].ok
        assert _wait(lambda: unit.outbox.depth == 0, 30)
        final = unit.status().dropped
    finally:
        if filler.exists():
            filler.unlink()
        rc = run.close()
    assert rc == 0, "a unit that recovered exits 0"
    assert _wait(lambda: hub_recorder.pending() == 0, 10)
    con = _hub(tmp_path)
    gaps = store.gaps(con, "s-full")
    missing = {"raw": 0, "feat": 0}
    for g in gaps:
        missing[g.kind] += g.missing
    assert missing["raw"] > 0
    assert missing == {"raw": final.get("outbox_unwritten_raw", 0), "feat": final.get("outbox_unwritten_feat", 0)}
    assert final.get("outbox_raw", 0) == 0 and final.get("outbox_feat", 0) == 0  # no quota drops besides
    # the hub heard of it: a fatal status while full, the exact counts in the last status, no fatal left
    rows = [json.loads(p) for (p,) in con.execute("SELECT payload FROM status WHERE unit='unit-a' ORDER BY time_ns")]
    states = [r["state"] for r in rows]
    assert "fatal" in states and states[-1] in ("idle", "offline"), states
    last_counted = [r for r in rows if "outbox_unwritten_raw" in r.get("dropped", {})][-1]
    assert last_counted["dropped"]["outbox_unwritten_raw"] == missing["raw"]
    assert [s for s in states[states.index("fatal"):] if s == "recording"], "no recording after the fatal spell"
