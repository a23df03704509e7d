"""``dyadsync setup`` against scratch roots: what it writes, that systemd and udev accept it, that a second
run changes nothing, and that ``--remove`` gives the tree back (data kept)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib

import pytest

from device.config import load_config

from .conftest import CMDLINE_TXT, CONFIG_TXT, make_pi_root, run_setup, snapshot

pytestmark = pytest.mark.usefixtures("need_root")


def systemd_verify(root, *units: str) -> str:
    """``systemd-analyze verify --root`` of ``units``; returns its complaints (empty when accepted)."""
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    proc = subprocess.run([exe, "verify", f"--root={root}", *units], capture_output=True, text=True, timeout=120)
    text = (proc.stdout + proc.stderr).strip()
    return text if proc.returncode != 0 or text else ""


def udev_check(rules_file) -> str:
    """Parse ``rules_file`` with the system's udevd rule parser (``udevadm test`` in a private mount namespace,
    where the file is the only rule in /etc/udev/rules.d and /dev is a throw-away tmpfs); returns the lines
    in which udev complains about it (empty when it parsed cleanly)."""
    if not shutil.which("udevadm") or not shutil.which("unshare"):
        pytest.fail("udevadm and unshare are needed: apt-get install udev util-linux")
    name = rules_file.name
    script = (f"mount -t tmpfs none /etc/udev/rules.d && cp {rules_file} /etc/udev/rules.d/ && "
              "mount -t tmpfs none /dev && udevadm test --action=add /class/tty/tty0 2>&1")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert f"Reading rules file: /etc/udev/rules.d/{name}" in out, out[-2000:]
    return "\n".join(ln for ln in out.splitlines() if f"{name}:" in ln)


def kept_data(before: dict, after: dict) -> dict:
    return {k: v for k, v in after.items() if k not in before}


def test_unit_setup_files_systemd_udev_idempotence_and_remove(tmp_path, capsys, hub_root):
    root = make_pi_root(tmp_path / "pi")
    creds = hub_root / "etc/dyadsync/hub/units/unit-a"
    before = snapshot(root)

    rc, out = run_setup(capsys, "unit", "--root", str(root), "--credentials", str(creds), "--dry-run")
    assert rc == 0, out
    assert snapshot(root) == before, "a dry run changed the tree"
    assert "would write /etc/dyadsync/unit.toml" in out and "would create system user dyadsync" in out

    rc, out = run_setup(capsys, "unit", "--root", str(root), "--credentials", str(creds))
    assert rc == 0, out
    assert "reboot" in out

    # the config: what `unit run` loads, wired as docs/install.md says, credentials from the hub
    cfg = load_config(root / "etc/dyadsync/unit.toml")
    assert (cfg.room, cfg.unit, cfg.broker.url, cfg.broker.username) == ("room-a", "unit-a", "mqtt://hub.lan:1883",
                                                                        "unit-a")
    hub_password = tomllib.loads((creds / "credentials.toml").read_text())["broker"]["password"]
    assert (root / "etc/dyadsync/unit.password").read_text().strip() == hub_password
    assert str(cfg.broker.password_file) == "/etc/dyadsync/unit.password"
    assert cfg.dyad.partner is None
    assert [(s.name, s.kind, s.mux_channel) for s in cfg.sensors] == [
        ("therapist-eda", "ads1115", 0), ("therapist-ppg", "max30102", 0),
        ("client-eda", "ads1115", 1), ("client-ppg", "max30102", 1)]
    assert (cfg.leds.backend, cfg.leds.name) == ("sysfs", "ACT")
    assert (root / "etc/dyadsync/unit.password").stat().st_mode & 0o777 == 0o640

    # the account, the groups it needs, the directories
    passwd = (root / "etc/passwd").read_text()
    assert "dyadsync:x:" in passwd and ":/var/lib/dyadsync:/usr/sbin/nologin" in passwd
    groups = {ln.split(":")[0]: ln.split(":")[3].split(",") for ln in (root / "etc/group").read_text().splitlines()}
    assert all("dyadsync" in groups[g] for g in ("i2c", "dialout", "gpio"))
    assert (root / "var/lib/dyadsync").is_dir()

    # systemd: installed, enabled (the WantedBy link), accepted by systemd-analyze verify
    wants = root / "etc/systemd/system/multi-user.target.wants/dyadsync-unit.service"
    assert wants.is_symlink() and str(wants.readlink()) == "/etc/systemd/system/dyadsync-unit.service"
    assert systemd_verify(root, "dyadsync-unit.service") == ""

    # I2C and UART on, the serial console off (config.txt way: no raspi-config in a scratch root)
    config = (root / "boot/firmware/config.txt").read_text()
    assert config.startswith(CONFIG_TXT) and "\n[all]\ndtparam=i2c_arm=on\nenable_uart=1\n" in config
    assert "console=serial0" not in (root / "boot/firmware/cmdline.txt").read_text()
    assert (root / "etc/modules-load.d/dyadsync.conf").read_text().splitlines()[-1] == "i2c-dev"

    # udev: the board names and the LED permissions, parsed by udev itself
    rules = root / "etc/udev/rules.d/99-dyadsync.rules"
    text = rules.read_text()
    assert 'SYMLINK+="dyadsync/board-$attr{serial}"' in text and 'KERNEL=="ACT"' in text
    assert udev_check(rules) == ""

    # chrony: the hub's snippet for this unit
    assert "server hub.lan iburst prefer" in (root / "etc/chrony/conf.d/dyadsync.conf").read_text()

    # idempotence: a second run changes nothing
    after = snapshot(root)
    rc, out = run_setup(capsys, "unit", "--root", str(root), "--credentials", str(creds))
    assert rc == 0 and "nothing to change" in out, out
    assert snapshot(root) == after

    # remove: everything back as it was, but the data directory
    (root / "var/lib/dyadsync/unit-unit-a.sqlite").write_bytes(b"session data")
    rc, out = run_setup(capsys, "--remove", "--root", str(root))
    assert rc == 0, out
    now = snapshot(root)
    assert kept_data(before, now).keys() == {"var", "var/lib", "var/lib/dyadsync", "var/lib/dyadsync/unit-unit-a.sqlite"}
    assert {k: v for k, v in now.items() if k in before} == before
    assert (root / "boot/firmware/cmdline.txt").read_text() == CMDLINE_TXT
    rc, out = run_setup(capsys, "--remove", "--root", str(root))
    assert rc == 0 and "nothing to remove" in out


def test_hub_setup_units_verify_credentials_idempotence_and_remove(tmp_path, capsys, need_root):
    root = make_pi_root(tmp_path / "hub", act_led=False)
    before = snapshot(root)
    args = ["hub", "--root", str(root), "--room", "room-b", "--units", "unit-a,unit-b", "--advertise-host", "hub.lan"]
    rc, out = run_setup(capsys, *args, "--dry-run")
    assert rc == 0 and snapshot(root) == before, out
    rc, out = run_setup(capsys, *args)
    assert rc == 0, out

    hub = root / "etc/dyadsync/hub"
    for unit in ("unit-a", "unit-b"):
        c = tomllib.loads((hub / "units" / unit / "credentials.toml").read_text())
        assert c["broker"]["url"] == "mqtt://hub.lan:1883" and c["unit"] == unit
    conf = (hub / "mosquitto/mosquitto.conf").read_text()
    assert str(root) not in conf and "password_file /etc/dyadsync/hub/mosquitto/passwd" in conf
    assert "allow_anonymous false" in conf
    dropin = (root / "etc/systemd/system/mosquitto.service.d/dyadsync.conf").read_text()
    assert "ExecStart=\nExecStart=/usr/sbin/mosquitto -c /etc/dyadsync/hub/mosquitto/mosquitto.conf" in dropin
    for svc in ("recorder", "api"):
        assert (root / f"etc/systemd/system/multi-user.target.wants/dyadsync-hub-{svc}.service").is_symlink()
    assert systemd_verify(root, "dyadsync-hub-recorder.service", "dyadsync-hub-api.service",
                          "dyadsync-hub-console.service", "mosquitto.service") == ""
    assert "local stratum 8 orphan" in (root / "etc/chrony/conf.d/dyadsync-hub.conf").read_text()
    assert (hub / "services/recorder.toml").stat().st_mode & 0o777 == 0o640
    hub_toml = (root / "etc/dyadsync/hub.toml").read_text()
    assert 'db = "/var/lib/dyadsync/hub.sqlite"' in hub_toml

    after = snapshot(root)
    rc, out = run_setup(capsys, *args)
    assert rc == 0 and "nothing to change" in out, out
    assert snapshot(root) == after

    rc, out = run_setup(capsys, "--remove", "--root", str(root))
    assert rc == 0, out
    now = snapshot(root)
    kept = kept_data(before, now)
    assert {k for k in kept if not k.startswith("etc/dyadsync/hub/")} == {
        "var", "var/lib", "var/lib/dyadsync", "etc/dyadsync", "etc/dyadsync/hub"}, sorted(kept)
    assert (root / "etc/dyadsync/hub/secrets/room-auth.json").exists(), "the room's secrets must be kept"
    assert {k: v for k, v in now.items() if k in before} == before


def test_unit_setup_serial_boards_synthetic_and_edits(tmp_path, capsys, hub_root):
    creds = hub_root / "etc/dyadsync/hub/units/unit-b"
    root = make_pi_root(tmp_path / "pi", act_led=False, boards={"ttyACM0": "E6614C311B4A8B2A"})
    rc, out = run_setup(capsys, "unit", "--root", str(root), "--credentials", str(creds), "--sensors", "serial")
    assert rc == 0, out
    cfg = load_config(root / "etc/dyadsync/unit.toml")
    assert [(s.kind, s.url) for s in cfg.sensors] == [("serial", "/dev/dyadsync/board-e6614c311b4a8b2a")]
    rules = (root / "etc/udev/rules.d/99-dyadsync.rules").read_text()
    assert 'ATTRS{serial}=="E6614C311B4A8B2A", SYMLINK+="dyadsync/board-e6614c311b4a8b2a"' in rules
    assert cfg.leds.backend == "none" and "no status LED" in out

    # named boards, a given hub URL, the synthetic sensors: a changed choice rewrites the generated config
    rc, out = run_setup(capsys, "unit", "--root", str(root), "--credentials", str(creds), "--sensors", "serial",
                        "--board", "therapist=ABC123", "--board", "client=DEF456", "--hub", "mqtt://10.0.0.2:1883")
    assert rc == 0, out
    cfg = load_config(root / "etc/dyadsync/unit.toml")
    assert [s.url for s in cfg.sensors] == ["/dev/dyadsync/therapist", "/dev/dyadsync/client"]
    assert cfg.broker.url == "mqtt://10.0.0.2:1883"
    rules = root / "etc/udev/rules.d/99-dyadsync.rules"
    assert 'ATTRS{serial}=="ABC123", SYMLINK+="dyadsync/therapist"' in rules.read_text()
    assert udev_check(rules) == ""
    assert "server 10.0.0.2 iburst" in (root / "etc/chrony/conf.d/dyadsync.conf").read_text()

    # an edit by the admin survives a re-run
    path = root / "etc/dyadsync/unit.toml"
    path.write_text(path.read_text().replace('check = "chronyc"', 'check = "assume_synced"'))
    rc, out = run_setup(capsys, "unit", "--root", str(root), "--credentials", str(creds), "--sensors", "synthetic")
    assert rc == 0 and "was edited since setup wrote it" in out, out
    assert load_config(path).clock.check == "assume_synced"
    state = json.loads((root / "etc/dyadsync/setup-state.json").read_text())
    assert "/etc/dyadsync/unit.toml" in state["files"]


@pytest.mark.parametrize("bad, message", [
    (["--credentials", "{empty}"], "no credentials.toml there"),
    (["--credentials", "{hub}", "--hub", "http://hub.lan"], "expected mqtt://HOST"),
    (["--credentials", "{hub}", "--board", "therapist=bad serial"], "expected NAME=SERIAL"),
    (["--credentials", "{hub}", "--sensors", "serial"], "no firmware board is plugged in"),
    (["--credentials", "{hub}", "--leds", "neon"], "expected auto, sysfs"),
    (["--credentials", "{hub}", "--roles", "patient"], "therapist, client or both"),
])
def test_unit_setup_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, hub_root, bad, message):
    root = make_pi_root(tmp_path / "pi")
    (tmp_path / "empty").mkdir()
    before = snapshot(root)
    argv = [a.format(empty=tmp_path / "empty", hub=hub_root / "etc/dyadsync/hub/units/unit-a") for a in bad]
    rc, out = run_setup(capsys, "unit", "--root", str(root), *argv)
    assert rc == 2 and message in out, out
    assert snapshot(root) == before
