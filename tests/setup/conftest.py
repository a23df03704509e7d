"""Scratch roots that look like a fresh Raspberry Pi OS Bookworm to ``dyadsync setup --root``."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import pytest

from dyadsync.cli import main

# Raspberry Pi OS Bookworm's defaults, shortened (the parts setup looks at).
CONFIG_TXT = """# For more options and information see http://rptl.io/configtxt
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
arm_64bit=1
disable_overscan=1
arm_boost=1

[cm4]
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
"""
CMDLINE_TXT = ("console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes "
               "rootwait quiet splash plymouth.ignore-serial-consoles cfg80211.ieee80211_regdom=GB\n")


def make_pi_root(root: Path, *, act_led: bool = True, boards: dict[str, str] | None = None) -> Path:
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000:,,,:/home/pi:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:pi\npi:x:1000:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\npi:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\ndialout:*::pi\npi:!::\n")
    os.chmod(etc / "shadow", 0o640)
    os.chmod(etc / "gshadow", 0o640)
    fw = root / "boot" / "firmware"
    fw.mkdir(parents=True)
    (fw / "config.txt").write_text(CONFIG_TXT)
    (fw / "cmdline.txt").write_text(CMDLINE_TXT)
    if act_led:
        led = root / "sys" / "class" / "leds" / "ACT"
        led.mkdir(parents=True)
        for name, value in (("brightness", "0"), ("max_brightness", "255"), ("trigger", "mmc0")):
            (led / name).write_text(value + "\n")
    for tty, serial in (boards or {}).items():
        d = root / "sys" / "class" / "tty" / tty
        (d / "device").mkdir(parents=True)
        (d / "serial").write_text(serial + "\n")  # sysfs: <tty>/device/.. is the USB device with its serial
    # what the target has besides: systemd's own units (for systemd-analyze verify --root) and the binaries
    # the generated units start
    shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    (root / "bin").symlink_to("usr/bin")  # merged /usr, as on Bookworm
    for exe in ("usr/local/bin/dyadsync", "usr/sbin/mosquitto", "usr/bin/mkdir", "usr/bin/kill"):
        p = root / exe
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(0o755)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` -> (kind, mode, owner, content digest or link target). The shadow tools'
    own backups (``/etc/passwd-`` ...) and systemd's unit tree are left out."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel.startswith("usr/lib/systemd") or (rel.startswith("etc/") and rel.endswith("-")):
                continue
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                            hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def run_setup(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["setup", *argv])
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.fixture
def need_root():
    if os.geteuid() != 0:
        pytest.skip("setup --root creates users with useradd --prefix, which needs root")


@pytest.fixture
def hub_root(tmp_path, capsys, need_root):
    """A hub scratch root after `setup hub` (room-a, units unit-a and unit-b)."""
    root = make_pi_root(tmp_path / "hub", act_led=False)
    rc, out = run_setup(capsys, "hub", "--root", str(root), "--room", "room-a", "--units", "unit-a,unit-b",
                        "--advertise-host", "hub.lan")
    assert rc == 0, out
    return root
