"""The scenarios: a simulated room (units, sensors, coupling schedule) plus a timeline of faults.

Every scenario exists in two lengths: ``full`` (the issue's numbers: 10-minute sessions, a 60-s broker
outage, DSP defaults win 30 s / lag 10 s) and ``short`` (the default pytest run: 4.5-minute sessions of three
90-s segments at 25x, the same faults). Times are seconds of
simulated time relative to the session start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: fault kinds and what they do (the runner executes them, the scorer checks the health they cause)
FAULT_KINDS = {
    "broker_outage": "Mosquitto killed (SIGKILL) for duration_s, then restarted on the same port",
    "power_cut": "unit `target` SIGKILLed, restarted after duration_s",
    "contact_loss": "sensor stream `target` loses skin contact for duration_s (simulator event)",
    "drop_blocks": "`count` sensor blocks of stream `target` lost (sequence gap) at at_s",
    "unplug": "serial firmware of unit `target` unplugged for duration_s",
    "nack_burst": "I2C chip of stream `target` NACKs `count` transactions",
    "fifo_stall": "MAX30102 of stream `target` not read for duration_s (FIFO overflows)",
}


@dataclass(frozen=True)
class Fault:
    kind: str
    at_s: float
    duration_s: float = 0.0
    target: str = ""
    count: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; known: {sorted(FAULT_KINDS)}")

    @property
    def end_s(self) -> float:
        return self.at_s + self.duration_s


@dataclass(frozen=True)
class UnitPlan:
    """One unit process: the roles measured there, its sensors' wiring and its partner link."""

    name: str
    roles: tuple[str, ...] = ("therapist", "client")
    wiring: str = "sim"  # sim: block-level simulated sensors; i2c: emulated chips; serial: emulated firmware
    partner: str | None = None  # the computing unit subscribes to this unit's feature stream
    compute: bool = True
    drift_ppm: float = 0.0  # serial wiring: the firmware crystal's error


@dataclass(frozen=True)
class SegmentPlan:
    start_s: float
    end_s: float
    mode: str = "uncoupled"
    lag_s: float = 0.0
    gain: float = 0.85
    channel: str = "eda"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    session_s: float
    segments: tuple[SegmentPlan, ...]
    units: tuple[UnitPlan, ...] = (UnitPlan("unit-a"),)
    faults: tuple[Fault, ...] = ()
    win_s: float = 30.0
    lag_s: float = 10.0
    speed: float = 20.0
    seed: int = 5
    requires: tuple[str, ...] = ()  # importable modules the scenario needs (emulators, drivers)
    science_channels: tuple[str, ...] = ("eda",)
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def computing_unit(self) -> UnitPlan:
        return next(u for u in self.units if u.compute)


def _schedule(session_s: float, short: bool) -> tuple[SegmentPlan, ...]:
    """Uncoupled, therapist-led (3 s), client-led (2 s) arousal coupling; full adds an uncoupled end."""
    if short:
        return (SegmentPlan(0, 90, "uncoupled"), SegmentPlan(90, 180, "therapist_led", 3.0),
                SegmentPlan(180, session_s, "client_led", 2.0))
    return (SegmentPlan(0, 120, "uncoupled"), SegmentPlan(120, 270, "therapist_led", 3.0),
            SegmentPlan(270, 420, "client_led", 2.0), SegmentPlan(420, session_s, "uncoupled"))


I2C = ("firmware_bridge.max30102", "firmware_bridge.ads1115", "hil.emulators")
SERIAL = ("firmware_bridge.link", "hil.emulators")


def catalogue(short: bool = False) -> dict[str, Scenario]:
    """All scenarios, by name (``short``: the lengths of the default test run)."""
    L = 270.0 if short else 600.0
    dsp = {"win_s": 30.0, "lag_s": 10.0}
    sched = _schedule(L, short)
    mid = 120.0 if short else 300.0
    speed = {"speed": 25.0} if short else {}
    dsp.update(speed)
    two = (UnitPlan("unit-t", ("therapist",), partner="unit-c"), UnitPlan("unit-c", ("client",), compute=False))
    slow = {**dsp, "speed": min(dsp.get("speed", 20.0), 5.0)}  # the link's clock pings jitter x speed
    i2c = {**dsp, "speed": 3.0}  # the drivers poll the 32-sample MAX30102 FIFO: ~10 x real time overflows it
    two_serial = (UnitPlan("unit-t", ("therapist",), wiring="serial", partner="unit-c"),
                  UnitPlan("unit-c", ("client",), wiring="serial", compute=False))
    out = [
        Scenario("room-basic", "one unit, both participants on I2C through the TCA9548A mux", L, sched,
                 units=(UnitPlan("unit-a", wiring="i2c"),), requires=I2C, **i2c),
        Scenario("room-basic-sim", "one unit, both participants, block-level simulated sensors (no emulators)",
                 L, sched, **dsp),
        Scenario("two-units", "therapist and client at two units; synchrony from the partner's feature stream",
                 L, sched, units=two, **dsp),
        Scenario("two-units-serial", "two units with the participants on serial firmware (pty emulators)",
                 L, sched, units=two_serial, requires=SERIAL, **slow),
        Scenario("broker-outage", "Mosquitto killed for 60 s mid-session, then restarted", L, sched,
                 faults=(Fault("broker_outage", mid, 60.0),), **dsp),
        Scenario("power-cut", "the unit SIGKILLed mid-session and restarted", L, sched,
                 faults=(Fault("power_cut", 60.0, 20.0, target="unit-a"),),
                 **{**dsp, "speed": min(dsp.get("speed", 20.0), 10.0)},
                 notes="a restarted process needs seconds of real time to come back: run slower"),
        Scenario("noisy-serial", "serial firmware with bit-error rate 1e-4 and two unplugs", L, sched,
                 units=two_serial, requires=SERIAL, extra={"bit_error_rate": 1e-4},
                 faults=(Fault("unplug", 40.0, 10.0, target="unit-t"), Fault("unplug", 120.0, 10.0, target="unit-c")),
                 **slow),
        Scenario("i2c-glitches", "I2C NACK bursts and a stalled FIFO read causing a MAX30102 overflow", L, sched,
                 units=(UnitPlan("unit-a", wiring="i2c"),), requires=I2C,
                 faults=(Fault("nack_burst", 50.0, target="therapist/eda", count=3),
                         Fault("nack_burst", 130.0, target="client/ppg", count=3),
                         Fault("fifo_stall", 90.0, 0.5, target="therapist/ppg")), **i2c),
        Scenario("clock-drift", "two serial units whose firmware clocks run at +100 and -100 ppm", L, sched,
                 units=(UnitPlan("unit-t", ("therapist",), wiring="serial", partner="unit-c", drift_ppm=100.0),
                        UnitPlan("unit-c", ("client",), wiring="serial", compute=False, drift_ppm=-100.0)),
                 requires=SERIAL, **slow),
        Scenario("contact-loss", "the client's EDA sensor comes off the skin for 20 s", L, sched,
                 faults=(Fault("contact_loss", 30.0, 20.0, target="client/eda"),), **dsp),
        Scenario("sample-loss", "blocks lost at the sensor (sequence gaps) must be reported exactly", L, sched,
                 faults=(Fault("drop_blocks", 30.0, target="therapist/ppg", count=3),
                         Fault("drop_blocks", mid + 50.0, target="client/eda", count=2)), **dsp),
    ]
    return {s.name: s for s in out}


def missing_requirements(s: Scenario) -> list[str]:
    """Modules a scenario needs that this build does not have."""
    import importlib.util

    out = []
    for mod in s.requires:
        try:
            if importlib.util.find_spec(mod) is None:
                out.append(mod)
        except ModuleNotFoundError:
            out.append(mod)
    return out
