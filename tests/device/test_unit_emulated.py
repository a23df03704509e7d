"""The unit on the hil register-level emulators (TCA9548A, ADS1115 + GSR front end, MAX30102) through
``hardware.mode = "emulated"``: real drivers, real Mosquitto, values checked against the emulated truth;
an unplugged chip gives sensor_fault and recovers."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hil.emulators.max30102", reason="hil emulators not merged yet")

from broker import store  # noqa: E402
from broker.recorder import Recorder  # noqa: E402
from device.config import load_config  # noqa: E402
from device.unit import Unit  # noqa: E402

from . import emu_hw  # noqa: E402
from .conftest import start_cmd  # noqa: E402
from .test_unit import Running, _hub, _wait  # noqa: E402


def test_unit_on_emulated_i2c_sensors(tmp_path, unit_toml, console, mosquitto, room_auth):
    rec = Recorder(tmp_path / "hub.sqlite", "room-a", mosquitto.host, mosquitto.port,
                   *room_auth.service_user("recorder")).start()
    cfg = load_config(unit_toml(sensors=emu_hw.SENSORS, speed=2.0,
                                hardware='mode = "emulated"\nfactory = "tests.device.emu_hw:make"\n',
                                extra='[dsp]\nwin_s = 8\nlag_s = 3\n'))
    unit = Unit(cfg)
    hw = emu_hw.PROVIDERS[-1]
    run = Running(unit)
    try:
        assert console.wait_status("unit-a", lambda s: s.state == "idle" and set(s.sensors.values()) == {"ok"}), \
            console.status
        assert console.wait_ack(start_cmd(console, "s-emu"))[0].ok
        con = _hub(tmp_path)
        assert _wait(lambda: store.stored_counts(con, "unit-a", "s-emu")["raw"] >= 4 * 15, 60)
        hw.chips["client/ppg"].faults.unplugged = True
        assert console.wait_status("unit-a", lambda s: s.sensors.get("c-ppg") == "fault")
        hw.chips["client/ppg"].faults.unplugged = False
        assert console.wait_status("unit-a", lambda s: s.sensors.get("c-ppg") == "ok" and s.state == "recording")
        assert _wait(lambda: len(list(store.read_metrics(con, "s-emu", "sync_eda", unit="unit-a"))) >= 5, 60)
        assert console.wait_ack(console.send("stop", "s-emu"))[0].ok
    finally:
        run.close()
        _wait(lambda: rec.pending() == 0, 10)
        rec.stop()
    con = _hub(tmp_path)
    for role in ("therapist", "client"):
        t, v, rate = store.read_stream(con, "s-emu", f"{role}/eda", kind="raw", unit="unit-a")
        assert rate == 32.0 and v.size > 32 * 10
        truth = np.array([emu_hw.eda_us(role, (ti - hw.origin_ns) / 1e9) for ti in t])
        ok = np.isfinite(v)
        assert ok.mean() > 0.95
        # µS through ADS1115 codes and the GSR formula; timestamps within a few samples of the truth
        assert np.nanmedian(np.abs(v[ok] - truth[ok])) < 0.05, role
        _, hr, _ = store.read_stream(con, "s-emu", f"{role}/hr", kind="feat", unit="unit-a")
        assert abs(np.nanmedian(hr) - 72.0) < 3.0, role
    flags = [f for (f,) in con.execute(
        "SELECT flags FROM blocks WHERE session='s-emu' AND kind='raw' AND stream='client/ppg'")]
    assert any(f & 0x10 for f in flags)  # the unplugged interval left a GAP_BEFORE mark


def test_unit_with_emulated_serial_firmware(tmp_path, unit_toml, console, mosquitto, room_auth):
    rec = Recorder(tmp_path / "hub.sqlite", "room-a", mosquitto.host, mosquitto.port,
                   *room_auth.service_user("recorder")).start()
    cfg = load_config(unit_toml(sensors=emu_hw.SENSORS_FW,
                                hardware='mode = "emulated"\nfactory = "tests.device.emu_hw:make_fw"\n'))
    unit = Unit(cfg)
    hw = emu_hw.PROVIDERS[-1]
    run = Running(unit)
    try:
        assert console.wait_status("unit-a", lambda s: s.state == "idle" and s.sensors.get("c-fw") == "ok"), \
            console.status
        assert console.wait_ack(start_cmd(console, "s-fw"))[0].ok
        con = _hub(tmp_path)
        assert _wait(lambda: store.stored_counts(con, "unit-a", "s-fw")["feat"] >= 4 * 4, 60)
        assert console.wait_ack(console.send("stop", "s-fw"))[0].ok
    finally:
        run.close()
        if hw.firmware is not None:
            hw.firmware.stop()
        _wait(lambda: rec.pending() == 0, 10)
        rec.stop()
    con = _hub(tmp_path)
    t, v, rate = store.read_stream(con, "s-fw", "client/eda", kind="raw", unit="unit-a")
    assert rate == 32.0 and v.size > 32 * 2
    assert np.nanmedian(v) == pytest.approx(5.0, abs=0.7)  # µS as the firmware's channel scale gives them
    _, hr, _ = store.read_stream(con, "s-fw", "client/hr", kind="feat", unit="unit-a")
    assert hr.size > 0
    assert store.gaps(con, "s-fw") == []
