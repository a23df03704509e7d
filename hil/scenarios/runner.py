"""Run a scenario: Mosquitto, the hub recorder and the unit daemon(s) as separate processes.

Sequence (all times simulated unless said otherwise; ``speed`` simulated seconds per real second). The
processes are started and watched by :class:`hil.room.RoomProcesses`: one that fails to start or dies
(when no fault asked for it) stops the run at once with the last lines of its log.

1. Room credentials (:class:`broker.auth.RoomAuth`), the generated authenticated Mosquitto config
   (:func:`broker.mosquitto.write_broker_files`) and Mosquitto on a free loopback port (or ``broker_port``).
2. The hub recorder: ``python -m dyadsync hub run --db ... --credentials ... --room ...``.
3. Per unit a config (:func:`hil.room.unit_toml`: emulated hardware ``hil.wiring:make_hardware``, LED on
   a simulated sysfs tree, ``hardware.speed``, one ``sim_epoch_ns`` for all) and the
   :class:`hil.wiring.HilSpec` in its data dir; ``python -m dyadsync unit run --config ...``.
4. ``lead_s`` after the epoch (real start-up time x speed; the simulator's time 0 is ``PRE_S`` before
   that, so the simulated dyad is the same at every speed) the room console
   (:class:`broker.console.RoomConsole`, account ``svc-console``) sends ``start``; the fault timeline runs
   (broker killed/restarted, units SIGKILLed/restarted, ...); at ``lead_s + session_s`` it sends ``stop``.
5. Units get SIGTERM (they flush their outbox and publish ``offline``), the recorder is stopped after it
   stored everything, then Mosquitto.
6. :mod:`hil.scenarios.scoring` scores the hub database, the LED log and the unit logs against the truth.

Work directory: ``workdir``, or a new private directory under the system's temporary directory that the
runner keeps (:func:`hil.scenarios.run_scenario` removes it after a run that passed and names it after one
that did not). Mosquitto runs as whoever runs the scenario (:func:`broker.mosquitto.child_broker_user`), so
a private directory works as root and as a normal user.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from broker import store, wire
from broker.auth import RoomAuth
from broker.console import RoomConsole
from core.errors import ConfigError, DyadsyncError
from device.clock import ScaledClock

from ..room import RoomError, RoomProcesses, RoomTimeout, led_tree, read_led, sensors_toml, unit_toml
from ..wiring import SPEC_FILE, HilSpec, t0_file, waiting_file
from .catalogue import Scenario, UnitPlan

logger = logging.getLogger(__name__)

ROOM = "hil-room"
TAIL_S = 40.0  # simulator margin after the session
START_WAIT_S = 180.0  # wall seconds for the unit processes to build their simulators (a busy machine is slow)
PRE_S = 30.0  # simulator time before the session start (the simulated dyad does not depend on the speed)


class ScenarioError(RoomError):
    """The scenario could not be run (a process did not start or died, a command was not acknowledged...)."""


@dataclass
class RunRecord:
    """What happened during a run, in UTC ns of the shared simulated time line (for the scorer)."""

    scenario: Scenario
    spec: HilSpec
    speed: float
    seed: int
    workdir: Path
    db_path: Path
    session: str
    t0_ns: int
    lead_s: float  # simulator seconds before the session start
    start_ns: int = 0
    stop_ns: int = 0
    events: list[tuple[str, str, int]] = field(default_factory=list)  # (kind, target, ns)
    led: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # unit -> (ns, state) changes
    acks: list[wire.Ack] = field(default_factory=list)
    exit_codes: dict[str, list[int]] = field(default_factory=dict)
    wall_s: float = 0.0

    def sim_s(self, ns: int) -> float:
        """Session-relative seconds of a UTC ns."""
        return (ns - self.start_ns) / 1e9

    def ns_of_session_s(self, t_s: float) -> int:
        return self.start_ns + round(t_s * 1e9)


class Runner:
    """Runs one scenario end to end; :meth:`run` returns the :class:`RunRecord` for the scorer."""

    def __init__(self, scenario: Scenario, *, speed: float | None = None, seed: int | None = None,
                 workdir: Path | str | None = None, lead_real_s: float = 15.0, verbose: bool = False,
                 broker_port: int | None = None) -> None:
        self.s = scenario
        self.speed = float(speed or scenario.speed)
        if not self.speed > 0:
            raise ConfigError(f"--speed must be > 0, got {speed!r}")
        self.seed = scenario.seed if seed is None else int(seed)
        if workdir is None:
            workdir = tempfile.mkdtemp(prefix=f"dyadsync-hil-{scenario.name}-")
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lead_s = round(max(30.0, lead_real_s * self.speed))
        self.verbose = verbose
        self.broker_port = broker_port
        self.auth: RoomAuth | None = None
        self.procs = RoomProcesses(self.workdir, ROOM, verbose=verbose)
        self.unit_configs: dict[str, Path] = {}
        self._led_dirs: dict[str, Path] = {}
        self._stop_led = threading.Event()
        self._led_thread: threading.Thread | None = None

    # ---------------------------------------------------------------------------------- set-up
    def _spec(self, t0_ns: int) -> HilSpec:
        s = self.s
        lead = PRE_S
        sched = [{"start_s": lead + g.start_s, "end_s": lead + g.end_s, "mode": g.mode, "lag_s": g.lag_s,
                  "gain": g.gain, "channel": g.channel} for g in s.segments]
        events = [{"stream": f.target, "kind": "contact_loss", "start_s": lead + f.at_s, "end_s": lead + f.end_s}
                  for f in s.faults if f.kind == "contact_loss"]
        drops: dict[str, list[list[float]]] = {}
        for f in s.faults:
            if f.kind == "drop_blocks":
                drops.setdefault(f.target, []).append([lead + f.at_s, f.count])
        sim = {"seed": self.seed, "duration_s": lead + s.session_s + TAIL_S, "schedule": sched, "events": events}
        serial = {"bit_error_rate": s.extra.get("bit_error_rate", 0.0),
                  "drift_ppm": {u.name: u.drift_ppm for u in s.units}}
        inproc = [{"kind": f.kind, "at_s": lead + f.at_s, "duration_s": f.duration_s, "target": f.target,
                   "count": f.count} for f in s.faults if f.kind in ("unplug", "nack_burst", "fifo_stall")]
        return HilSpec(sim=sim, t0_ns=t0_ns, drops=drops, serial=serial, faults=inproc)

    def _unit_toml(self, plan: UnitPlan, data_dir: Path, led_root: Path, epoch_ns: int) -> str:
        assert self.auth is not None and self.procs.broker is not None
        b = self.procs.broker
        dyad = {"partner": plan.partner, "compute": None if plan.compute else False}
        return unit_toml(room=ROOM, unit=plan.name, data_dir=data_dir, host=b.host, port=b.port,
                         password=self.auth.units[plan.name], led_root=led_root, speed=self.speed,
                         epoch_ns=epoch_ns, sensors=sensors_toml(plan.name, plan.roles, plan.wiring),
                         dsp={"win_s": self.s.win_s, "lag_s": self.s.lag_s}, dyad=dyad)

    def _poll_leds(self, clock: ScaledClock, rec: RunRecord) -> None:
        last: dict[str, str | None] = {}
        while not self._stop_led.wait(0.02):
            for unit, d in self._led_dirs.items():
                state = read_led(d)
                if state is not None and state != last.get(unit):
                    last[unit] = state
                    rec.led.setdefault(unit, []).append((clock.now_ns(), state))

    # ------------------------------------------------------------------------------------- run
    def run(self) -> RunRecord:
        """Run the scenario. A process that cannot start or dies, or a command no unit acknowledges, raises
        :class:`ScenarioError` with the cause (the last lines of that process's log) and the work directory."""
        try:
            return self._run()
        except ScenarioError as exc:
            raise ScenarioError(f"{exc}\nwork directory kept: {self.workdir}") from None
        except DyadsyncError as exc:
            raise ScenarioError(f"scenario {self.s.name}: {exc}\nwork directory kept: {self.workdir}") from None

    def _run(self) -> RunRecord:
        s = self.s
        procs = self.procs
        wall0 = time.monotonic()
        epoch_ns = time.time_ns()
        clock = ScaledClock(self.speed, epoch_ns)
        # the time line is fixed once every unit's simulator is built (hil.wiring: <spec>.waiting, <spec>.t0), so
        # however long the processes take to start on a busy machine, the session keeps its simulated lead
        spec = self._spec(None)
        unit_names = [u.name for u in s.units]
        partners = {u.name: u.partner for u in s.units if u.partner}
        self.auth = RoomAuth.generate(ROOM, unit_names, partners=partners)
        session = f"hil-{s.name}-{uuid.uuid4().hex[:6]}"
        db = self.workdir / "hub.sqlite"
        rec = RunRecord(s, spec, self.speed, self.seed, self.workdir, db, session, 0, PRE_S)
        console: RoomConsole | None = None
        logger.info("scenario %s: work directory %s", s.name, self.workdir)
        try:
            broker = procs.start_broker(self.auth, prefer="mosquitto", port=self.broker_port)
            for plan in s.units:
                data = self.workdir / f"data-{plan.name}"
                data.mkdir(exist_ok=True)
                spec.write(data / SPEC_FILE)
                led_root = self.workdir / f"leds-{plan.name}"
                self._led_dirs[plan.name] = led_tree(led_root)
                cfg = self.workdir / f"{plan.name}.toml"
                cfg.write_text(self._unit_toml(plan, data, led_root, epoch_ns))
                self.unit_configs[plan.name] = cfg
                procs.start_unit(plan.name, cfg)
            procs.start_recorder(db, self.auth)
            specs = [self.workdir / f"data-{u}" / SPEC_FILE for u in unit_names]
            procs.wait_for(lambda: all(waiting_file(p).exists() for p in specs), START_WAIT_S,
                           "the units' simulators to be built")
            t0_ns = clock.now_ns() + round((self.lead_s - PRE_S) * 1e9)
            for p in specs:
                tmp = p.with_name(p.name + ".t0.tmp")
                tmp.write_text(f"{t0_ns}\n")
                tmp.replace(t0_file(p))
            spec.t0_ns = rec.t0_ns = t0_ns
            self._led_thread = threading.Thread(target=self._poll_leds, args=(clock, rec), name="hil-leds",
                                                daemon=True)
            self._led_thread.start()
            console = RoomConsole(broker.host, broker.port, ROOM, *self.auth.service_user("console"))
            start_at = t0_ns + round(PRE_S * 1e9)
            ready_by = (start_at - clock.now_ns()) / 1e9 / self.speed
            try:
                procs.wait_for(lambda: all(u in console.status and console.status[u].state == "idle"
                                           for u in unit_names), max(0.5, ready_by), "the units to be ready")
            except RoomTimeout:
                raise ScenarioError(
                    f"units {unit_names} not ready (status idle) {self.lead_s:.0f} simulated s after start at "
                    f"speed {self.speed:g}: lower --speed (statuses: "
                    f"{ {u: st.state for u, st in console.status.items()} })") from None
            self._sleep_until(clock, start_at)
            rec.start_ns = clock.now_ns()
            cid = console.send("start", session, time_ns=rec.start_ns, cid=f"start-{session}",
                               participants={"therapist": "T01", "client": "C01"})
            self._wait_acks(console, cid, unit_names, 20)
            self._timeline(clock, rec)
            self._sleep_until(clock, rec.start_ns + round(s.session_s * 1e9))
            rec.stop_ns = clock.now_ns()
            cid = console.send("stop", session, time_ns=rec.stop_ns, cid=f"stop-{session}")
            self._wait_acks(console, cid, unit_names, 30)
            rec.acks = list(console.acks)
            for name in unit_names:
                rec.exit_codes.setdefault(name, []).append(procs.terminate(f"unit-{name}"))
            self._wait_stored(db, unit_names, rec.stop_ns)
        finally:
            if console is not None:
                console.close()
            self._cleanup()
        rec.wall_s = time.monotonic() - wall0
        return rec

    def _wait_acks(self, console: RoomConsole, cid: str, units: list[str], timeout_s: float) -> None:
        """Every unit's ``ok`` answer to ``cid``, while watching the processes."""
        try:
            self.procs.wait_for(lambda: {a.unit for a in console.acks_for(cid)} >= set(units), timeout_s,
                                f"every unit to acknowledge {cid}")
        except RoomTimeout:
            raise ScenarioError(f"{cid} not acknowledged by every unit within {timeout_s:g} s: "
                                f"{console.acks_for(cid)}") from None
        acks = console.acks_for(cid)
        if {a.unit for a in acks if a.ok} != set(units):
            raise ScenarioError(f"{cid} refused: {[a for a in acks if not a.ok]}")

    def _sleep_until(self, clock: ScaledClock, ns: int) -> None:
        while True:
            left = (ns - clock.now_ns()) / 1e9 / self.speed
            if left <= 0:
                return
            self.procs.sleep(min(left, 0.2))

    def _timeline(self, clock: ScaledClock, rec: RunRecord) -> None:
        """Run the actions of the fault list at their simulated times (threads for overlapping faults)."""
        actions: list[tuple[float, str, str]] = []
        for f in self.s.faults:
            if f.kind == "broker_outage":
                actions += [(f.at_s, "broker_kill", ""), (f.end_s, "broker_start", "")]
            elif f.kind == "power_cut":
                actions += [(f.at_s, "unit_kill", f.target), (f.end_s, "unit_start", f.target)]
            elif f.kind in ("unplug", "nack_burst", "fifo_stall"):
                pass  # executed inside the unit process by hil.wiring from the spec
        procs = self.procs
        for at_s, action, target in sorted(actions):
            self._sleep_until(clock, rec.ns_of_session_s(at_s))
            ns = clock.now_ns()
            logger.info("t=%.1f s: %s %s", rec.sim_s(ns), action, target)
            if action == "broker_kill":
                procs.down("broker")
                procs.broker.kill()
            elif action == "broker_start":
                procs.broker.start()
                procs.up("broker")
            elif action == "unit_kill":
                rec.exit_codes.setdefault(target, []).append(procs.kill(f"unit-{target}"))
            elif action == "unit_start":
                procs.start_unit(target, self.unit_configs[target])
            rec.events.append((action, target, ns))
        # faults that do not need the runner still appear in the event log (for the scorer)
        for f in self.s.faults:
            if f.kind not in ("broker_outage", "power_cut"):
                rec.events.append((f.kind, f.target, rec.ns_of_session_s(f.at_s)))

    def _wait_stored(self, db: Path, units: list[str], stop_ns: int, timeout_s: float = 60.0) -> None:
        """Until the hub stored each unit's final ``offline`` status (sent after its outbox was flushed)."""

        def stored() -> bool:
            try:
                con = store.connect(db, readonly=True)
                try:
                    done = store.units_drained_since(con, stop_ns)
                finally:
                    con.close()
            except Exception as exc:  # the db may not exist yet
                logger.debug("waiting for the hub db: %s", exc)
                return False
            return done >= set(units)

        try:
            self.procs.wait_for(stored, timeout_s, "the hub to store every unit's final status")
        except RoomTimeout:
            logger.warning("the hub did not store a flushed offline status of every unit within %.0f s", timeout_s)
            return
        time.sleep(0.5)  # the recorder commits in batches: let the last one land

    def _cleanup(self) -> None:
        self._stop_led.set()
        if self._led_thread is not None:
            self._led_thread.join(2)
        self.procs.close()
