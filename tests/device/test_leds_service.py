"""Status LED backends on a temp sysfs tree and a gpiod v2 stand-in; sd_notify over a real AF_UNIX
datagram socket; chrony tracking parsing and the clock monitor with a scripted chronyc."""

from __future__ import annotations

import os
import socket
import stat
import threading
import types

import pytest

from device.leds import PATTERNS, GpiodLed, LedError, NullLed, StatusLed, SysfsLed, resolve_state
from device.service import ClockMonitor, Notifier, parse_chronyc_tracking


@pytest.fixture
def led_tree(tmp_path):
    d = tmp_path / "leds" / "dyadsync:status"
    d.mkdir(parents=True)
    for name, value in (("brightness", "0"), ("max_brightness", "255"), ("trigger", "[none] timer heartbeat")):
        (d / name).write_text(value + "\n")
    return tmp_path / "leds"


def _read(tree, attr):
    return (tree / "dyadsync:status" / attr).read_text().strip()


def test_sysfs_backend_writes_trigger_and_delays(led_tree):
    led = StatusLed(SysfsLed(led_tree, "dyadsync:status"))
    led.set("recording")
    assert _read(led_tree, "trigger") == "none" and _read(led_tree, "brightness") == "255"
    led.set("buffering")
    assert _read(led_tree, "trigger") == "timer"
    assert (_read(led_tree, "delay_on"), _read(led_tree, "delay_off")) == ("500", "500")
    led.set("fatal")
    assert (_read(led_tree, "delay_on"), _read(led_tree, "delay_off")) == ("50", "50")
    led.set("fatal")  # no change, no rewrite
    assert led.history == ["recording", "buffering", "fatal"]
    led.close()
    assert _read(led_tree, "brightness") == "0" and _read(led_tree, "trigger") == "none"


def test_sysfs_missing_led_and_unwritable_file(led_tree):
    with pytest.raises(LedError, match="not found"):
        SysfsLed(led_tree, "nope")
    backend = SysfsLed(led_tree, "dyadsync:status")
    trig = led_tree / "dyadsync:status" / "trigger"
    trig.chmod(stat.S_IRUSR)
    led = StatusLed(backend)
    if os.geteuid() != 0:
        led.set("idle")  # logged, never raised: a broken LED must not stop the unit
        assert led.state == "idle"
    trig.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_patterns_are_distinct_and_resolution_order():
    assert len(set(PATTERNS.values())) == len(PATTERNS)
    assert resolve_state(ready=False) == "booting"
    assert resolve_state() == "idle"
    assert resolve_state(recording=True) == "recording"
    assert resolve_state(recording=True, buffering=True) == "buffering"
    assert resolve_state(recording=True, buffering=True, sensor_fault=True) == "sensor_fault"
    assert resolve_state(fatal=True, sensor_fault=True) == "fatal"
    with pytest.raises(ValueError):
        StatusLed(NullLed()).set("dancing")


def _fake_gpiod():
    """A stand-in with libgpiod v2's Python API that records every value written."""
    log: list[tuple[int, str]] = []
    changed = threading.Condition()

    class Value:
        ACTIVE = "active"
        INACTIVE = "inactive"

    class Direction:
        OUTPUT = "output"

    class LineSettings:
        def __init__(self, **kw):
            self.kw = kw

    class Request:
        def __init__(self, chip, consumer, config):
            self.chip, self.consumer, self.config = chip, consumer, config
            self.released = False

        def set_value(self, line, value):
            with changed:
                log.append((line, value))
                changed.notify_all()

        def release(self):
            self.released = True

    requests = []

    def request_lines(chip, consumer, config):
        r = Request(chip, consumer, config)
        requests.append(r)
        return r

    mod = types.SimpleNamespace(LineSettings=LineSettings, request_lines=request_lines,
                                line=types.SimpleNamespace(Value=Value, Direction=Direction))
    return mod, log, changed, requests


def test_gpiod_backend_blinks_and_goes_solid():
    mod, log, changed, requests = _fake_gpiod()
    led = StatusLed(GpiodLed("/dev/gpiochip0", 17, gpiod_module=mod))
    assert requests[0].config[17].kw["direction"] == "output"
    led.set("fatal")  # 50/50 ms blinking: both levels appear
    with changed:
        assert changed.wait_for(lambda: {"active", "inactive"} <= {v for _, v in log[-6:]}, 5)
    led.set("recording")
    with changed:
        n = len(log)
        assert changed.wait_for(lambda: len(log) > n and log[-1] == (17, "active"), 5)
    led.close()
    assert log[-1] == (17, "inactive") and requests[0].released


def test_sd_notify_over_real_datagram_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(5)
    try:
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
        assert n.watchdog_interval_s == 5.0
        assert n.ready("idle")
        assert srv.recv(4096) == b"READY=1\nSTATUS=idle"
        assert n.watchdog()
        assert srv.recv(4096) == b"WATCHDOG=1"
        assert n.stopping()
        assert srv.recv(4096) == b"STOPPING=1"
    finally:
        srv.close()


def test_sd_notify_abstract_socket_and_disabled():
    name = f"dyadsync-test-{os.getpid()}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind("\0" + name)
    srv.settimeout(5)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert srv.recv(100) == b"READY=1"
    finally:
        srv.close()
    off = Notifier({})
    assert not off.enabled and not off.ready() and off.watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval_s is None


TRACKING_OK = """Reference ID    : C0A80001 (hub.local)
Stratum         : 3
System time     : 0.000012345 seconds fast of NTP time
Leap status     : Normal
"""


def test_parse_chronyc_tracking():
    assert parse_chronyc_tracking(TRACKING_OK, 10) is True
    assert parse_chronyc_tracking(TRACKING_OK.replace("0.000012345", "0.5"), 10) is False
    assert parse_chronyc_tracking(TRACKING_OK.replace("Normal", "Not synchronised"), 10) is False
    assert parse_chronyc_tracking("garbage", 10) is None


def test_clock_monitor_runs_command(tmp_path):
    script = tmp_path / "chronyc"
    script.write_text("#!/bin/sh\ncat \"$(dirname \"$0\")/out.txt\"\n")
    script.chmod(0o755)
    (tmp_path / "out.txt").write_text(TRACKING_OK)
    t = [0.0]
    mon = ClockMonitor("chronyc", [str(script)], interval_s=60, monotonic=lambda: t[0])
    assert mon.poll() is True
    (tmp_path / "out.txt").write_text(TRACKING_OK.replace("Normal", "Not synchronised"))
    assert mon.poll() is True  # cached until the interval passes
    t[0] = 61
    assert mon.poll() is False
    missing = ClockMonitor("chronyc", [str(tmp_path / "no-such-chronyc")])
    assert missing.poll() is None
    assert ClockMonitor("assume_unsynced").poll() is False


def test_systemd_unit_file():
    import configparser
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "device" / "systemd" / "dyadsync-unit.service"
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read_string(path.read_text())
    svc = cp["Service"]
    assert svc["Type"] == "notify" and svc["Restart"] == "on-failure"
    assert int(svc["WatchdogSec"]) > 0 and "unit run --config" in svc["ExecStart"]
    assert int(svc["TimeoutStopSec"]) > 10  # room for the outbox flush on SIGTERM


def test_scaled_clock_epoch_and_start():
    import time

    from device.clock import ScaledClock

    epoch = time.time_ns()
    a, b = ScaledClock(50.0, epoch), ScaledClock(50.0, epoch)
    time.sleep(0.05)
    ta, tb = a.now_ns(), b.now_ns()
    assert abs(ta - tb) < 50 * 5_000_000  # one shared time line (within 5 ms of wall time)
    assert ta - epoch >= 50 * 0.05e9 * 0.9
    c = ScaledClock(1000.0, start_ns=1_800_000_000_000_000_000)
    t = c.now_ns()
    assert 1_800_000_000_000_000_000 <= t < 1_800_000_000_000_000_000 + 1000 * 1e9
