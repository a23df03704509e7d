"""The room console driven in a real headless Chromium (Debian's chromium + chromedriver, via selenium) as an
operator: log in, start a session with codes, see the traces move and synchrony appear, add two markers,
stop. Afterwards the hub database and a `lab pull` hold exactly that session, those codes and markers.
The data comes from a real unit with simulated sensors on a real Mosquitto, recorded by the real recorder.
On failure a screenshot is saved next to the test's files (its path is in the failure message)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker import store
from broker.api import ApiServer
from broker.console_app import ConsoleServer, Login, write_login
from broker.recorder import Recorder
from device.config import load_config
from device.unit import Unit

from .conftest import SENSORS_BOTH, RunningUnit, wait

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1500"]


def chrome(profile: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")
    from selenium.webdriver.chrome.service import Service

    exe = shutil.which("chromium") or "/usr/bin/chromium"
    driver_exe = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not Path(exe).exists() or not Path(driver_exe).exists():
        pytest.fail("chromium and chromium-driver are needed: `make test` installs Debian's packages")
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver_exe))


@pytest.fixture
def hub(tmp_path, mosquitto, room_auth, unit_toml):
    """Recorder, unit-a (synthetic sensors, real time, 8-s synchrony windows), pull API and console page."""
    db = tmp_path / "hub.sqlite"
    rec = Recorder(db, "room-a", mosquitto.host, mosquitto.port, *room_auth.service_user("recorder")).start()
    cfg = load_config(unit_toml(sensors=SENSORS_BOTH, extra='[dsp]\nwin_s = 8\nlag_s = 3\nfeature_block_s = 0.5\n'
                                                                       'regulation_epoch_s = 8\n'))
    unit = RunningUnit(Unit(cfg))
    write_login(tmp_path / "login.json", "operator", "correct horse battery")
    token = "t" * 32
    (tmp_path / "token").write_text(token)
    console = ConsoleServer("room-a", ["unit-a"], (mosquitto.host, mosquitto.port,
                                                   *room_auth.service_user("console")),
                            Login.load(tmp_path / "login.json"), db_path=db)
    api = ApiServer(db, token)
    try:
        console.start()
        api.start()
        yield {"db": db, "console": console, "api": api, "recorder": rec, "token_file": tmp_path / "token"}
    finally:
        api.stop()
        console.stop()
        unit.close()
        rec.stop()


def _text(driver, css: str) -> str:
    """The element's text ('' if absent, or replaced by the page's re-rendering while read)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        els = driver.find_elements(By.CSS_SELECTOR, css)
        return els[0].text if els else ""
    except StaleElementReferenceException:
        return ""


def _attr(driver, css: str, name: str) -> str:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        els = driver.find_elements(By.CSS_SELECTOR, css)
        return (els[0].get_attribute(name) or "") if els else ""
    except StaleElementReferenceException:
        return ""


def test_operator_runs_a_session_in_the_browser(hub, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome(tmp_path / "chrome-profile")
    until = WebDriverWait(driver, 60, poll_frequency=0.2).until
    url = hub["console"].url
    try:
        try:
            driver.get(url + "/")
            until(lambda d: d.current_url.endswith("/login"))  # not logged in: sent to the login page
            driver.find_element(By.ID, "password").send_keys("wrong password")
            driver.find_element(By.ID, "login-btn").click()
            until(lambda d: "wrong user or password" in _text(d, "#login-error"))
            pw = driver.find_element(By.ID, "password")
            pw.clear()
            pw.send_keys("correct horse battery")
            driver.find_element(By.ID, "login-btn").click()
            until(lambda d: d.current_url.rstrip("/") == url)

            # state first: the unit, ready, and the broker link
            until(lambda d: _attr(d, '.unit[data-unit="unit-a"] .state', "data-state") == "idle")
            until(lambda d: _text(d, "#link") == "broker connected")

            # start with codes
            driver.find_element(By.ID, "therapist").send_keys("T01")
            driver.find_element(By.ID, "client").send_keys("C07")
            sid = driver.find_element(By.ID, "session-input")
            sid.clear()
            sid.send_keys("s-browser")
            driver.find_element(By.ID, "start-btn").click()
            until(lambda d: "accepted by every unit" in _text(d, "#cmd-result"))
            until(lambda d: _text(d, "#session-id") == "s-browser" and _text(d, "#session-state") == "recording")
            until(lambda d: "therapist T01" in _text(d, "#session-codes"))
            until(lambda d: _text(d, "#elapsed") not in ("", "--:--:--"))

            # the traces move: more points, later times, both people, both signals
            until(lambda d: int(_attr(d, "#trace-eda", "data-points") or 0) > 8
                  and int(_attr(d, "#trace-hr", "data-points") or 0) > 8)
            first = driver.execute_script("return window.__lastFeat.t0_ns")
            n_first = int(_attr(driver, "#trace-eda", "data-points"))
            until(lambda d: d.execute_script("return window.__lastFeat.t0_ns") > first
                  and int(_attr(d, "#trace-eda", "data-points")) > n_first)
            until(lambda d: _attr(d, '.qcard[data-role="client"] [data-signal="eda"]', "data-quality") == "ok")

            # synchrony appears (8-s windows): therapist-led / client-led values and the plot
            until(lambda d: _text(d, "#sync-eda .tl") not in ("", "–")
                  and int(_attr(d, "#sync-eda", "data-windows") or 0) >= 2
                  and int(_attr(d, "#sync-plot", "data-windows") or 0) >= 4)  # two lines, two windows each
            assert _text(driver, "#sync-eda .ip") != "–"
            # who leads (the unit's pooled_leader): a side with r and lag, or "none" (docs/dsp.md "Who leads")
            assert re.fullmatch(r"none|(therapist|client) -?\d\.\d\d \(-?\d+\.\d\d\)", _text(driver, "#sync-eda .ld"))
            # beat quality of each person from the unit's regulation epochs (8 s here)
            for role in ("therapist", "client"):
                until(lambda d, role=role: _attr(d, f'.qcard[data-role="{role}"] [data-beats]', "data-beats")
                      in ("good", "fair", "poor"))
                assert re.search(r"beats: \d+ of \d+ flagged \(last 8 s\)",
                                 _text(driver, f'.qcard[data-role="{role}"] [data-beats]')), role

            # two markers: a configured button and free text (Enter)
            driver.find_element(By.CSS_SELECTOR, '.marker-btn[data-label="task start"]').click()
            until(lambda d: 'marker "task start": accepted by every unit' in _text(d, "#cmd-result"))
            box = driver.find_element(By.ID, "marker-text")
            box.send_keys("rupture at minute one", Keys.ENTER)
            until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#marker-list li")) == 2)
            labels = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#marker-list li")]
            assert labels[0].endswith("task start") and labels[1].endswith("rupture at minute one"), labels

            # stop, with a confirmation
            driver.find_element(By.ID, "stop-btn").click()
            until(lambda d: d.find_element(By.ID, "confirm-stop").is_displayed())
            driver.find_element(By.ID, "confirm-stop-yes").click()
            until(lambda d: "stop s-browser: accepted by every unit" in _text(d, "#cmd-result"))
            until(lambda d: _text(d, "#session-state") == "no session")
            errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"
                      and "/api/login" not in e.get("message", "")]  # the wrong password above was a 401
            assert errors == [], errors
        except BaseException:
            shot = tmp_path / "console-failure.png"
            driver.save_screenshot(str(shot))
            print(f"screenshot of the console at the failure: {shot}", file=sys.stderr)
            raise
    finally:
        driver.quit()

    # the hub's record: exactly that session, those codes and those markers
    assert wait(lambda: hub["recorder"].pending() == 0, 10)
    con = store.connect(hub["db"], readonly=True)
    try:
        assert wait(lambda: len(store.session_markers(con, "s-browser")) == 2 and
                    (store.get_session(con, "s-browser") or {}).get("stopped_ns") is not None, 20)
        sessions = store.list_sessions(con)
        assert [s["session"] for s in sessions] == ["s-browser"]
        s = sessions[0]
        assert (s["therapist_code"], s["client_code"]) == ("T01", "C07") and s["started_ns"] < s["stopped_ns"]
        marks = store.session_markers(con, "s-browser")
        assert [m["label"] for m in marks] == ["task start", "rupture at minute one"]
        assert store.command_counts(con)["bad"] == 0
        assert len(list(store.read_metrics(con, "s-browser", "sync_eda"))) >= 2
    finally:
        con.close()

    # and what the lab pulls says the same
    dest = tmp_path / "lab"
    out = subprocess.run([sys.executable, "-m", "dyadsync", "lab", "pull", "--hub", hub["api"].url, "--token-file",
                          str(hub["token_file"]), "--no-progress", str(dest)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    pulled = list(dest.rglob("session.json"))  # the pulled copy of each session (sourcedata/<room>/<session>/)
    assert [p.parent.name for p in pulled] == ["s-browser"], pulled
    meta = json.loads(pulled[0].read_text())
    assert (meta["therapist_code"], meta["client_code"]) == ("T01", "C07")
    assert [m["label"] for m in meta["markers"]] == ["task start", "rupture at minute one"]
