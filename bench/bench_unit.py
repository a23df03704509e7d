"""Benchmark: the unit daemon at real time with two participants (2 x EDA 32 Hz, 2 x PPG 100 Hz).

Starts a Mosquitto with the project's generated config, runs ``dyadsync unit run`` as a separate process
on synthetic sensors (or an emulated-hardware factory given with ``--factory``), starts a session and
measures, over ``--minutes`` (default 5):

* CPU time / wall time of the unit process (user + system from /proc, one core = 100 %),
* peak RSS of the unit process (VmHWM),
* latency from the completion of a synchrony window (the end of its last 4 Hz bin, ``window_end + lag``)
  to the arrival of its metric at a subscriber on the broker (p50 / p99 / max),
* messages delivered and queued at the end.

Targets (issue 5): CPU/wall <= 5 %, peak RSS <= 120 MB, latency p99 <= 200 ms. Exit status 1 if one is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker import wire  # noqa: E402
from broker.auth import RoomAuth  # noqa: E402
from broker.console import RoomConsole  # noqa: E402
from broker.mosquitto import MosquittoProcess, write_broker_files  # noqa: E402
from broker.mqtt import client_id, make_client  # noqa: E402

ROOM, UNIT = "room-bench", "unit-bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def write_config(d: Path, host: str, port: int, password: str, factory: str | None,
                 emulated: bool, hr_grid: str = "live") -> Path:
    sensors = ""
    if emulated:  # register-level I2C emulators behind a TCA9548A, driven by the real drivers
        from tests.device import emu_hw

        sensors = emu_hw.SENSORS
        factory = factory or "bench.emu_timed:make"  # emu_hw with the CPU time inside the emulated bus counted
    else:
        for role in ("therapist", "client"):
            for sig in ("eda", "ppg"):
                sensors += (f'[[sensors]]\nname = "{role[0]}-{sig}"\nkind = "synthetic"\nrole = "{role}"\n'
                            f'signal = "{sig}"\nblock_s = 0.1\n')
    hw = f'[hardware]\nmode = "emulated"\nfactory = "{factory}"\n' if factory else ""
    cfg = d / "unit.toml"
    cfg.write_text(
        f'room = "{ROOM}"\nunit = "{UNIT}"\ndata_dir = "{d / "data"}"\n'
        f'[broker]\nurl = "mqtt://{host}:{port}"\nusername = "{UNIT}"\npassword = "{password}"\n'
        f'[clock]\ncheck = "chronyc"\n[dsp]\n'
        f'hr_grid = "{hr_grid}"\n{hw}\n{sensors}'
    )
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="session length at real time (default 5)")
    ap.add_argument("--factory", default=None, help="hardware.factory 'module:function' for emulated sensors")
    ap.add_argument("--emulated", action="store_true",
                    help="hil register-level emulators (TCA9548A, ADS1115, MAX30102) instead of synthetic sensors")
    ap.add_argument("--hr-grid", default="live", choices=["live", "corrected"], help="dsp.hr_grid")
    args = ap.parse_args()
    import subprocess

    with tempfile.TemporaryDirectory(prefix="bench-unit-") as tmp:
        d = Path(tmp)
        auth = RoomAuth.generate(ROOM, [UNIT])
        broker = MosquittoProcess(write_broker_files(d / "broker", auth, persistence=False)).start()
        lat_ms: dict[str, list[float]] = {"sync_eda": [], "sync_hr": []}
        counts = {"metrics": 0, "feat": 0, "raw": 0}
        lock = threading.Lock()
        lag_ns = 10 * 10**9
        from dsp_ext.grid import GRID_NS

        last_point_ns = {"eda": GRID_NS, "hr": GRID_NS}

        def on_message(client, userdata, msg):
            now = time.time_ns()
            t = wire.parse_topic(msg.topic)
            with lock:
                if t.kind == "metric":
                    m = wire.Metric.decode(msg.payload)
                    counts["metrics"] += 1
                    if m.name in lat_ms:
                        # the window's last feature sample: a 4 Hz grid point (dsp_ext) at end - 250 ms, or
                        # the end of the last 250 ms bin (fast fallback), plus the client lag span
                        point = last_point_ns[m.name.removeprefix("sync_")]
                        lat_ms[m.name].append((now - (m.window_end_ns + lag_ns - point)) / 1e6)
                elif t.kind in ("feat", "raw"):
                    counts[t.kind] += 1

        user, pw = auth.service_user("recorder")
        sub = make_client(client_id("bench"), username=user, password=pw, on_message=on_message)
        sub.connect(broker.host, broker.port)
        sub.loop_start()
        sub.subscribe(f"{wire.unit_prefix(ROOM, UNIT)}/#", qos=1)
        con = RoomConsole(broker.host, broker.port, ROOM, *auth.service_user("console"))
        cfg = write_config(d, broker.host, broker.port, auth.units[UNIT], args.factory,
                           args.emulated, args.hr_grid)
        # the environment of device/systemd/dyadsync-unit.service (MALLOC_ARENA_MAX keeps glibc from giving
        # every thread its own malloc arena)
        emu_file = d / "emu-cpu.txt"
        env = dict(os.environ, PYTHONPATH=str(ROOT), MALLOC_ARENA_MAX="2", DYADSYNC_EMU_CPU_FILE=str(emu_file))

        def emu_cpu_s() -> float:  # CPU time inside the emulated I2C bus so far (bench/emu_timed.py)
            try:
                return float(emu_file.read_text())
            except (OSError, ValueError):
                return 0.0

        log = open(d / "unit.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "dyadsync", "unit", "run", "--config", str(cfg)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(3.0)  # start-up (imports, connect) is not part of the steady state
            con.send("start", "bench", cid="bench-start", participants={"therapist": "T01", "client": "C01"})
            time.sleep(1.0)
            c0, w0, e0 = cpu_s(proc.pid), time.monotonic(), emu_cpu_s()
            time.sleep(args.minutes * 60)
            c1, w1, e1 = cpu_s(proc.pid), time.monotonic(), emu_cpu_s()
            rss = vm_hwm_mb(proc.pid)
            con.send("stop", "bench", cid="bench-stop")
            time.sleep(1.0)
            proc.terminate()
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
            sub.disconnect()
            sub.loop_stop()
            con.close()
            broker.stop()
        cpu_pct = 100.0 * (c1 - c0) / (w1 - w0)
        emu_pct = 100.0 * (e1 - e0) / (w1 - w0)
        own_pct = cpu_pct - emu_pct
        if emu_file.exists():  # register-level emulators in the process: the target applies to the unit's part
            rows = [
                ("CPU / wall, whole process incl. emulated chips", f"{cpu_pct:.2f} %", "", True),
                ("CPU / wall inside the emulated I2C bus (+ meter)", f"{emu_pct:.2f} %", "", True),
                ("CPU / wall, the unit (process - emulation)", f"{own_pct:.2f} %", "<= 5 %", own_pct <= 5.0),
            ]
        else:
            rows = [("CPU time / wall time (one core)", f"{cpu_pct:.2f} %", "<= 5 %", cpu_pct <= 5.0)]
        rows += [
            ("peak RSS (VmHWM)", f"{rss:.1f} MB", "<= 120 MB", rss <= 120.0),
        ]
        for name, values in lat_ms.items():
            lat = np.array(values)
            p50, p99, mx = (np.percentile(lat, 50), np.percentile(lat, 99), lat.max()) if lat.size else (np.nan,) * 3
            # with hr_grid = "corrected" the HR series itself is final only ~2 beats after its grid time (the
            # dsp_ext IBI correction): its latency is reported, the 200 ms target is checked on the other rows
            target = name == "sync_eda" or args.hr_grid == "live"
            rows += [
                (f"{name}: window -> metric at broker, p50", f"{p50:.1f} ms", "", True),
                (f"{name}: window -> metric at broker, p99", f"{p99:.1f} ms", "<= 200 ms" if target else "",
                 bool(p99 <= 200.0) if target else True),
                (f"{name}: window -> metric at broker, max", f"{mx:.1f} ms", "", True),
                (f"{name}: windows measured", f"{lat.size}", "> 0", lat.size > 0),
            ]
        rows += [
            ("metrics / feature blocks / raw blocks", f"{counts['metrics']} / {counts['feat']} / {counts['raw']}", "", True),
        ]
        print(f"\nbench_unit: {args.minutes:g} min at real time, 2 x EDA 32 Hz + 2 x PPG 100 Hz, "
              f"{'I2C emulators' if args.emulated else ('factory ' + args.factory if args.factory else 'synthetic sensors')}"
              f", hr_grid {args.hr_grid}, "
              f"unit exit {proc.returncode}")
        print(f"{'measure':<48} {'value':>22} {'target':>10}  ok")
        for name, value, target, ok in rows:
            print(f"{name:<48} {value:>22} {target:>10}  {('yes' if ok else 'NO') if target else '-'}")
        return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
