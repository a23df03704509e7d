"""Faults injected at the seams: a sensor that fails and comes back, a broker outage mid-session (LED and
status say buffering, nothing is lost), an unsynchronised clock (blocks flagged), a full outbox quota."""

from __future__ import annotations

import threading

from broker import store
from core.vocab import BlockFlags
from device.clock import ScaledClock
from device.config import load_config
from device.sources import Source, SyntheticSource
from device.unit import Unit
from firmware_bridge.errors import SensorError

from .conftest import start_cmd
from .test_unit import Running, _hub, _wait


class ContactSource(Source):
    """Synthetic blocks that carry CONTACT_LOST while the test says the electrode is off."""

    def __init__(self, inner: SyntheticSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.streams = inner.streams
        self.off = threading.Event()

    def read(self, timeout_s: float):
        from dataclasses import replace

        blocks = self.inner.read(timeout_s)
        if self.off.is_set():
            blocks = [replace(b, flags=b.flags | BlockFlags.CONTACT_LOST) for b in blocks]
        return blocks


class FlakySource(Source):
    """A synthetic sensor whose bus can be 'unplugged' by the test (reads and opens raise SensorError)."""

    def __init__(self, inner: SyntheticSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.streams = inner.streams
        self.unplugged = threading.Event()

    def open(self) -> None:
        if self.unplugged.is_set():
            raise SensorError(f"{self.name}: no ACK from 0x48 on i2c-1")

    def read(self, timeout_s: float):
        if self.unplugged.is_set():
            raise SensorError(f"{self.name}: I2C read failed (errno 121)")
        return self.inner.read(timeout_s)


def _sources(cfg, clock):
    return [SyntheticSource(s.name, s.stream, s.rate_hz, clock, block_s=0.1) for s in cfg.sensors]


def _stored_raw(tmp_path, session: str) -> int:
    c = _hub(tmp_path)
    try:
        return store.stored_counts(c, "unit-a", session)["raw"]
    finally:
        c.close()


def test_sensor_fault_and_recovery(tmp_path, unit_toml, console, mosquitto, room_auth):
    leds = tmp_path / "leds" / "status"
    leds.mkdir(parents=True)
    for f in ("brightness", "trigger", "max_brightness"):
        (leds / f).write_text("1\n")
    cfg = load_config(unit_toml(speed=2.0, extra=f'[leds]\nbackend = "sysfs"\nsysfs_root = "{tmp_path / "leds"}"\n'
                                                f'name = "status"\n'))
    clock = ScaledClock(2.0)
    srcs = _sources(cfg, clock)
    flaky = FlakySource(srcs[0])
    unit = Unit(cfg, clock=clock, sources=[flaky, *srcs[1:]])
    run = Running(unit)
    try:
        assert console.wait_status("unit-a", lambda s: s.state == "idle" and s.sensors.get("t-eda") == "ok")
        assert console.wait_ack(start_cmd(console, "s-f"))[0].ok
        assert console.wait_status("unit-a", lambda s: s.state == "recording")
        assert (leds / "trigger").read_text().strip() == "none" and (leds / "brightness").read_text().strip() == "1"
        flaky.unplugged.set()
        st = console.wait_status("unit-a", lambda s: s.state == "sensor_fault")
        assert st is not None and st.sensors["t-eda"] == "fault" and st.sensors["c-eda"] == "ok"
        assert (leds / "trigger").read_text().strip() == "timer"
        assert (leds / "delay_on").read_text().strip() == "100"
        flaky.unplugged.clear()  # plugged back in: the source thread reopens it with backoff
        assert console.wait_status("unit-a", lambda s: s.state == "recording" and s.sensors["t-eda"] == "ok")
    finally:
        run.close()
    assert "sensor_fault" in unit.led.history and unit.led.history[0] == "booting"


def test_broker_outage_buffers_then_delivers_everything(tmp_path, unit_toml, console, mosquitto, room_auth):
    from broker.recorder import Recorder

    rec = Recorder(tmp_path / "hub.sqlite", "room-a", mosquitto.host, mosquitto.port,
                   *room_auth.service_user("recorder")).start()
    cfg = load_config(unit_toml(speed=4.0))
    unit = Unit(cfg)
    run = Running(unit)
    try:
        assert console.wait_status("unit-a", lambda s: s.state == "idle")
        assert console.wait_ack(start_cmd(console, "s-out"))[0].ok
        # data reaches the hub (the real condition; the outbox's depth while recording is never reliably 0)
        assert _wait(lambda: _stored_raw(tmp_path, "s-out") >= 8 and unit.link.connected)
        mosquitto.stop()
        assert _wait(lambda: unit.led.state == "buffering", 20)
        assert _wait(lambda: unit.outbox.depth > 40, 20)  # data keeps being kept while the broker is away
        backlog_end = unit.outbox.pending(0, 10**6)[-1].id  # the last row queued during the outage

        def caught_up() -> bool:  # every row of the outage's backlog acknowledged (newer rows may be queued)
            rows = unit.outbox.pending(0, 1)
            return not rows or rows[0].id > backlog_end

        mosquitto.start()
        st = console
        assert st.wait_connected()  # the console's own client reconnects by itself
        assert _wait(lambda: unit.led.state == "recording" and caught_up(), 40)
        stop = st.send("stop", "s-out")
        assert st.wait_ack(stop)[0].ok
        assert _wait(lambda: unit.outbox.depth == 0, 20)
    finally:
        run.close()
        # the recorder reconnects with its own backoff (up to 5 s): wait until it has stored every raw block
        expected = sum(unit.pipeline.raw_seq.values())

        def stored() -> int:
            c = _hub(tmp_path)
            try:
                return store.stored_counts(c, "unit-a", "s-out")["raw"]
            finally:
                c.close()

        _wait(lambda: stored() >= expected, 30)
        _wait(lambda: rec.pending() == 0, 10)
        rec.stop()
    assert "buffering" in unit.led.history
    assert stored() == expected
    con = _hub(tmp_path)
    assert store.gaps(con, "s-out") == []  # nothing lost across the outage
    counts = store.stored_counts(con, "unit-a", "s-out")
    assert counts["raw"] >= 4 * 6 and counts["feat"] >= 4 * 5, counts


def test_unsynced_clock_flags_blocks_and_quota_drops_are_reported(tmp_path, unit_toml, console, mosquitto,
                                                                  room_auth):
    from broker import wire
    from broker.recorder import Recorder

    rec = Recorder(tmp_path / "hub.sqlite", "room-a", mosquitto.host, mosquitto.port,
                   *room_auth.service_user("recorder")).start()
    text = open(unit_toml(speed=4.0)).read().replace('check = "assume_synced"', 'check = "assume_unsynced"')
    text += "\n[outbox]\nquota_mb = 0.02\n"
    path = tmp_path / "unsynced.toml"
    path.write_text(text)
    cfg = load_config(path)
    unit = Unit(cfg)
    run = Running(unit)
    try:
        assert console.wait_status("unit-a", lambda s: s.state == "idle" and s.clock_synced is False)
        assert console.wait_ack(start_cmd(console, "s-u"))[0].ok
        con = _hub(tmp_path)
        assert _wait(lambda: store.stored_counts(con, "unit-a", "s-u")["raw"] >= 8)
        mosquitto.stop()  # the 20 kB quota fills within seconds: raw blocks go first
        assert _wait(lambda: unit.outbox.counters().get("dropped_raw", 0) > 0, 30)
        mosquitto.start()
        st = console.wait_status("unit-a", lambda s: s.dropped.get("outbox_raw", 0) > 0, 30)
        assert st is not None
        assert unit.outbox.bytes_queued <= 0.02 * 2**20 + 4096
    finally:
        run.close()

        def raw_gap() -> bool:  # the recorder reconnects with its own backoff
            c = _hub(tmp_path)
            try:
                return any(g.kind == "raw" for g in store.gaps(c, "s-u"))
            finally:
                c.close()

        _wait(raw_gap, 30)
        _wait(lambda: rec.pending() == 0, 10)
        rec.stop()
    con = _hub(tmp_path)
    flags = [f for (f,) in con.execute("SELECT flags FROM blocks WHERE session='s-u'")]
    assert flags and all(f & BlockFlags.CLOCK_UNSYNCED for f in flags)
    assert any(g.kind == "raw" for g in store.gaps(con, "s-u"))  # dropped raw blocks stay visible as gaps
    assert wire  # noqa: B018


def test_emulated_hardware_factory_is_used(tmp_path, unit_toml, console):
    from core.errors import ConfigError
    from device.hardware import load_hardware

    from . import fake_hw

    fake_hw.CALLS.clear()
    sensors = '[[sensors]]\nname = "t-ppg"\nkind = "max30102"\nrole = "therapist"\naddress = 0x57\n'
    cfg = load_config(unit_toml(sensors=sensors, speed=2.0,
                                hardware='mode = "emulated"\nfactory = "tests.device.fake_hw:make"\n'))
    assert cfg.hardware.mode == "emulated"
    run = Running(Unit(cfg))
    try:
        st = console.wait_status("unit-a", lambda s: s.sensors.get("t-ppg") == "ok")
        assert st is not None
    finally:
        run.close()
    assert fake_hw.CALLS[0] == ("make", "unit-a", 2.0) and ("source", "t-ppg") in fake_hw.CALLS
    bad = cfg.model_copy(update={"hardware": cfg.hardware.model_copy(update={"factory": "tests.device.nope:make"})})
    try:
        load_hardware(bad, None)
    except ConfigError as exc:
        assert "tests.device.nope:make" in str(exc)
    else:
        raise AssertionError("a factory that cannot be imported must be a ConfigError")


def test_contact_loss_shows_as_sensor_fault(tmp_path, unit_toml, console):
    cfg = load_config(unit_toml(speed=2.0))
    clock = ScaledClock(2.0)
    srcs = _sources(cfg, clock)
    contact = ContactSource(srcs[2])  # c-eda
    unit = Unit(cfg, clock=clock, sources=[*srcs[:2], contact, srcs[3]])
    run = Running(unit)
    try:
        assert console.wait_status("unit-a", lambda s: s.state == "idle" and s.sensors.get("c-eda") == "ok")
        contact.off.set()
        st = console.wait_status("unit-a", lambda s: s.state == "sensor_fault")
        assert st is not None and st.sensors["c-eda"] == "contact_lost" and st.sensors["t-eda"] == "ok"
        contact.off.clear()
        assert console.wait_status("unit-a", lambda s: s.state == "idle" and s.sensors["c-eda"] == "ok")
    finally:
        run.close()
    assert "sensor_fault" in unit.led.history
