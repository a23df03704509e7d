"""Benchmark: the room console, from a metric's publication to its appearance in the browser, and the
console's CPU on the hub for one room.

A real Mosquitto, the console as its own process (``dyadsync hub console``, so its CPU is its own), and a
headless Chromium (Debian's chromium + chromedriver, selenium) logged in to it. A simulated unit publishes
one room's live traffic in real time: 4 Hz features for both people (eda and hr, blocks of ``--feat-block-s``),
metrics ``sync_eda`` and ``sync_hr`` (``--metric-hz`` each) and a status every 2 s. The page gets a probe
listener on its event stream, registered after the page's own, so a metric counts as arrived once the page
has put its values into the document. Publisher and browser share the machine's clock: latency is the
browser's receive time minus the publication time.

Run: ``.venv/bin/python bench/bench_console.py [--seconds 60]``. Prints a table: n, p50, p90, p99, max
latency (ms), messages/s offered, console CPU (% of one core, user+system from /proc) and RSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
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
from broker.console_app import write_login  # noqa: E402
from broker.mosquitto import MosquittoProcess, free_port, wait_for_port, write_broker_files  # noqa: E402
from broker.mqtt import make_client  # noqa: E402
from firmware_bridge.block import SampleBlock  # noqa: E402

ROOM, UNIT = "room-a", "unit-a"
PROBE = """
window.__lat = [];
st.source.addEventListener('metric', function (e) {
  var d = JSON.parse(e.data);
  window.__lat.push([d.name, d.seq, performance.timeOrigin + performance.now()]);
});
return true;
"""


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def browser(url: str, profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    d = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    d.get(url + "/login")
    d.find_element(By.ID, "password").send_keys("bench password")
    d.find_element(By.ID, "login-btn").click()
    WebDriverWait(d, 30).until(lambda x: x.current_url.rstrip("/") == url and
                               x.execute_script("return typeof st !== 'undefined' && st.source !== null "
                                                "&& st.source.readyState === 1"))
    d.execute_script(PROBE)
    return d


def publish(client, stop: threading.Event, sent: dict, seconds: float, metric_hz: float, feat_block_s: float,
            counts: dict) -> None:
    """The unit's live traffic in real time; records each metric's publication time (ms, the wall clock)."""
    t0 = time.time()
    next_metric = next_feat = next_status = t0
    seq = {"sync_eda": 0, "sync_hr": 0}
    fseq = 0
    per_block = max(1, round(feat_block_s * 4))
    rng = np.random.default_rng(1)
    while not stop.is_set() and time.time() - t0 < seconds:
        now = time.time()
        if now >= next_feat:
            t_ns = int(now * 1e9) // 250_000_000 * 250_000_000
            for stream in ("therapist/eda", "client/eda", "therapist/hr", "client/hr"):
                vals = (rng.standard_normal(per_block) + (5 if stream.endswith("eda") else 70)).astype(np.float32)
                b = SampleBlock(stream, fseq, t_ns, 4.0, vals)
                client.publish(wire.feat_topic(ROOM, UNIT, stream), wire.encode_block(b, "bench"), qos=1)
                counts["msgs"] += 1
            fseq += 1
            next_feat += feat_block_s
        if now >= next_metric:
            for name in seq:
                ws = time.time_ns()
                m = wire.Metric("bench", seq[name], name, ws - 30 * 10**9, ws,
                                {"r0": 0.3, "therapist_led": 0.2, "client_led": 0.1, "inphase_r": 0.4,
                                 "inphase_lag_s": 1.5, "antiphase_r": -0.2, "antiphase_lag_s": -2.0})
                sent[(name, seq[name])] = time.time() * 1000
                client.publish(wire.metric_topic(ROOM, UNIT, name), m.encode(), qos=1)
                seq[name] += 1
                counts["msgs"] += 1
            next_metric += 1.0 / metric_hz
        if now >= next_status:
            s = wire.Status(unit=UNIT, state="recording", time_ns=time.time_ns(), session="bench",
                            sensors={"t-eda": "ok", "c-eda": "ok"}, clock_synced=True)
            client.publish(wire.status_topic(ROOM, UNIT), s.encode(), qos=1, retain=True)
            counts["msgs"] += 1
            next_status += 2.0
        time.sleep(max(0.0, min(next_metric, next_feat, next_status) - time.time()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--metric-hz", type=float, default=1.0, help="windows per second per channel (1 = inc_s 1 s)")
    ap.add_argument("--feat-block-s", type=float, default=1.0, help="feature block length (unit default 1 s)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-console-"))
    auth = RoomAuth.generate(ROOM, [UNIT])
    broker = MosquittoProcess(write_broker_files(work / "broker", auth)).start()
    user, pw = auth.service_user("console")
    creds = work / "console.toml"
    creds.write_text(f'room = "{ROOM}"\n[broker]\nurl = "mqtt://127.0.0.1:{broker.port}"\nusername = "{user}"\n'
                     f'password = "{pw}"\n')
    write_login(work / "login.json", "operator", "bench password")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    console = subprocess.Popen([sys.executable, "-m", "dyadsync", "hub", "console", "--credentials", str(creds),
                                "--units", UNIT, "--login", str(work / "login.json"), "--host", "127.0.0.1",
                                "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    driver = None
    unit = make_client("bench-unit", username=UNIT, password=auth.units[UNIT])
    try:
        if not wait_for_port("127.0.0.1", port, 30):
            raise SystemExit(f"the console did not start: {console.stderr.read().decode()[-2000:]}")
        unit.connect("127.0.0.1", broker.port)
        unit.loop_start()
        driver = browser(f"http://127.0.0.1:{port}", work / "profile")
        sent: dict = {}
        counts = {"msgs": 0}
        stop = threading.Event()
        cpu0, wall0 = cpu_s(console.pid), time.monotonic()
        publish(unit, stop, sent, args.seconds, args.metric_hz, args.feat_block_s, counts)
        time.sleep(2.0)  # the last ones arrive
        cpu1, wall1 = cpu_s(console.pid), time.monotonic()
        rss = rss_mb(console.pid)
        got = driver.execute_script("return window.__lat")
    finally:
        if driver is not None:
            driver.quit()
        unit.disconnect()
        unit.loop_stop()
        console.terminate()
        console.wait(20)
        broker.stop()
    lat = np.array([t - sent[(name, seq)] for name, seq, t in got if (name, seq) in sent])
    missing = len(sent) - len(lat)
    pct = np.percentile(lat, [50, 90, 99]) if lat.size else [float("nan")] * 3
    print(f"console benchmark: {args.seconds:g} s of one room in real time, {counts['msgs'] / args.seconds:.1f} "
          f"msg/s to the console ({args.metric_hz:g} metric windows/s per channel, feature blocks of "
          f"{args.feat_block_s:g} s), one browser")
    print("| metrics | missing | p50 ms | p90 ms | p99 ms | max ms | console CPU % of a core | console RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {lat.size} | {missing} | {pct[0]:.1f} | {pct[1]:.1f} | {pct[2]:.1f} | "
          f"{lat.max() if lat.size else float('nan'):.1f} | {100 * (cpu1 - cpu0) / (wall1 - wall0):.1f} | {rss:.0f} |")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if lat.size and missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
