#!/usr/bin/env bash
# Prove the unit on its real target, emulated: a Debian 12 (bookworm) arm64 root under qemu-user.
#
#   sudo tools/arm64-check.sh [WORKDIR]        (default WORKDIR /var/tmp/dyadsync-arm64; needs root)
#
# Stages (each leaves a marker in WORKDIR and is skipped when re-run; delete WORKDIR/*.done to redo one):
#   1 root     debootstrap --foreign --arch arm64 + second stage inside the root (qemu-user-static, binfmt)
#   2 wheel    the builder: gcc + python3-dev in the root, `pip wheel .` -> WORKDIR/dist/dyadsync-*-aarch64.whl
#              (this is the only place that compiles: units install the wheel, see docs/install.md)
#   3 unit     the documented unit install: a fresh venv, `pip install --only-binary=:all: WHEEL[unit]`
#              (proves no compiler is needed); time, size, what got installed, import checks
#   4 tests    a second venv with the wheel + test tools; `pytest tests/dsp_ext tests/firmware_bridge`
#   5 room     a hub on this machine (dyadsync hub init, Mosquitto, recorder) and the arm64 unit set up by
#              `dyadsync setup unit --credentials ...` inside the root, run with simulated sensors; a
#              session is started through RoomConsole and the hub's database must hold its data
# Times under qemu emulation are NOT Raspberry Pi times (emulation is ~5-20x slower than a Pi 4/5).
# Not part of `make test`.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/var/tmp/dyadsync-arm64}
ROOT=$WORK/root
MIRROR=${MIRROR:-http://deb.debian.org/debian}
HOSTPY=${HOSTPY:-$REPO/.venv/bin/python}
[ -x "$HOSTPY" ] || HOSTPY=/work/main/.venv/bin/python
STAGES=" ${STAGES:-1 2 3 4 5} "   # e.g. STAGES=5: only the room check, with the unit already installed
want() { [[ $STAGES == *" $1 "* ]]; }
mkdir -p "$WORK"

log() { printf '\n==== [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
done_() { [ -e "$WORK/$1.done" ]; }
mark() { date -u +%s > "$WORK/$1.done"; }
secs() { local t0=$1; echo $(( $(date +%s) - t0 )); }

if [ "$(id -u)" != 0 ]; then echo "arm64-check: run as root (debootstrap, chroot, mounts)" >&2; exit 2; fi

# ---- prerequisites on this machine ----
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -e /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64

mounted=()
umount_all() {
    for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
    mounted=()
}
bind_root() {
    for d in proc sys dev dev/pts; do
        if ! mountpoint -q "$ROOT/$d"; then
            case $d in
                proc) mount -t proc proc "$ROOT/proc" ;;
                sys) mount -t sysfs sys "$ROOT/sys" ;;
                dev) mount --bind /dev "$ROOT/dev" ;;
                dev/pts) mount -t devpts devpts "$ROOT/dev/pts" -o newinstance,ptmxmode=0666 ;;
            esac
            mounted+=("$ROOT/$d")
        fi
    done
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    if [ -n "$HOST_CA" ] && [ -f "$HOST_CA" ]; then cp "$HOST_CA" "$ROOT/etc/ssl/host-ca.crt"; fi
}
cleanup() { [ -n "${HUB_PIDS:-}" ] && kill $HUB_PIDS 2>/dev/null; umount_all; }
trap cleanup EXIT
# This machine's CA bundle goes into the root too: behind an egress proxy with its own CA, pip in the
# root must trust what pip here trusts (HOST_CA= to skip).
HOST_CA=${HOST_CA-/etc/ssl/certs/ca-certificates.crt}
inroot() {
    local ca=()
    [ -n "$HOST_CA" ] && [ -e "$ROOT/etc/ssl/host-ca.crt" ] && ca=(PIP_CERT=/etc/ssl/host-ca.crt SSL_CERT_FILE=/etc/ssl/host-ca.crt)
    chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
        PIP_DISABLE_PIP_VERSION_CHECK=1 "${ca[@]}" "$@"
}

# ---- 1: the arm64 root ----
if want 1 && ! done_ root; then
    log "stage 1: debootstrap bookworm arm64 into $ROOT (foreign, then second stage under qemu)"
    t0=$(date +%s)
    rm -rf "$ROOT"
    debootstrap --foreign --arch=arm64 --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates,udev,systemd,chrony,git \
        bookworm "$ROOT" "$MIRROR"
    chroot "$ROOT" /debootstrap/debootstrap --second-stage
    echo "deb $MIRROR bookworm main" > "$ROOT/etc/apt/sources.list"
    log "stage 1 done in $(secs "$t0") s (emulated)"
    mark root
fi
bind_root
inroot uname -m
inroot python3 --version

# The source as committed plus the working tree's changes (no build artefacts, no venv). /src/build and the
# generated .c of an earlier run stay: setuptools then recompiles only kernels whose source changed (an hour
# under emulation otherwise). Compiler flags are not tracked: `rm -rf WORKDIR/root/src` after changing them.
if want 2; then
log "copying the source tree into the root (/src)"
mkdir -p "$ROOT/src"
(cd "$REPO" && git ls-files -co --exclude-standard -z | grep -zv -E '\.(so|c)$' | tar --null -T - -cf -) \
    | tar -xf - -C "$ROOT/src"
fi

# ---- 2: build the aarch64 wheel (the one compile) ----
SRC_ID=$(cd "$REPO" && { git rev-parse HEAD; git diff HEAD; } | sha256sum | cut -c1-16)
if want 2 && [ "$(cat "$WORK/wheel.src" 2>/dev/null)" != "$SRC_ID" ] || ! ls "$WORK"/dist/dyadsync-*aarch64.whl >/dev/null 2>&1; then
    rm -f "$WORK/unit.done"  # a new wheel: install it again
    log "stage 2: building the aarch64 wheel (gcc $(inroot sh -c 'gcc -dumpfullversion 2>/dev/null || echo absent'))"
    t0=$(date +%s)
    inroot apt-get update -q
    DEBIAN_FRONTEND=noninteractive inroot apt-get install -y -q build-essential python3-dev
    inroot python3 -m venv /opt/build
    inroot /opt/build/bin/pip install -q --upgrade pip
    rm -rf "$ROOT/dist" && mkdir -p "$ROOT/dist"
    inroot /opt/build/bin/pip wheel --no-deps -w /dist /src
    mkdir -p "$WORK/dist" && rm -f "$WORK"/dist/dyadsync-*.whl && cp "$ROOT"/dist/dyadsync-*.whl "$WORK/dist/"
    log "stage 2 done in $(secs "$t0") s (emulated): $(ls "$WORK"/dist/)"
    echo "$SRC_ID" > "$WORK/wheel.src"
fi
WHEEL=$(basename "$(ls "$WORK"/dist/dyadsync-*aarch64.whl | head -1)")
mkdir -p "$ROOT/dist" && cp "$WORK/dist/$WHEEL" "$ROOT/dist/"
ls -l "$WORK/dist/$WHEEL"

# ---- 3: the unit install, as docs/install.md says ----
if want 3 && ! done_ unit; then
    log "stage 3: unit-only install from the wheel (--only-binary=:all:: nothing may compile)"
    rm -rf "$ROOT/opt/dyadsync"
    t0=$(date +%s)
    inroot python3 -m venv /opt/dyadsync
    inroot /opt/dyadsync/bin/pip install -q --only-binary=:all: "/dist/$WHEEL[unit]"
    echo "unit install: $(secs "$t0") s (emulated), venv size $(du -sm "$ROOT/opt/dyadsync" | cut -f1) MB"
    inroot /opt/dyadsync/bin/pip list --format=freeze
    inroot /opt/dyadsync/bin/python - <<'EOF'
import importlib.util, sys
import device.unit  # noqa: F401  the unit daemon imports
import dsp_ext  # noqa: F401
heavy = [m for m in ("scipy", "pandas", "statsmodels", "matplotlib", "fastapi", "uvicorn")
         if importlib.util.find_spec(m)]
assert not heavy, f"hub/lab packages installed in a unit venv: {heavy}"
print("import device.unit: OK; no scipy/pandas/statsmodels/matplotlib/fastapi/uvicorn")
EOF
    inroot /opt/dyadsync/bin/python -c "import dsp_ext, sys; assert 'serial' not in sys.modules; print('dsp_ext without serial: OK')"
    ln -sf /opt/dyadsync/bin/dyadsync "$ROOT/usr/local/bin/dyadsync"
    inroot dyadsync --version
    mark unit
fi

# ---- 4: the kernels' tests on aarch64 ----
if want 4 && ! done_ tests; then
    log "stage 4: pytest tests/dsp_ext tests/firmware_bridge on aarch64"
    rm -rf "$ROOT/opt/dyadsync-test" "$ROOT/srv/t" && mkdir -p "$ROOT/srv/t"
    inroot python3 -m venv /opt/dyadsync-test
    inroot /opt/dyadsync-test/bin/pip install -q --only-binary=:all: "/dist/$WHEEL[unit]" \
        pytest pytest-timeout hypothesis scipy
    # tests and pytest settings only: the package comes from the installed wheel, not from /src
    cp -a "$ROOT/src/tests" "$ROOT/src/pyproject.toml" "$ROOT/srv/t/"
    t0=$(date +%s)
    set +e
    inroot sh -c 'cd /srv/t && /opt/dyadsync-test/bin/python -m pytest -q -p no:cacheprovider -m "not slow" \
        tests/dsp_ext tests/firmware_bridge --timeout=3000' 2>&1 | tail -25
    rc=${PIPESTATUS[0]}
    set -e
    log "stage 4: pytest exit $rc after $(secs "$t0") s (emulated)"
    [ "$rc" = 0 ] && mark tests
fi

# ---- 5: a unit in the arm64 root against a hub on this machine ----
want 5 || exit 0
log "stage 5: the arm64 unit against a hub on this machine"
HUB=$WORK/hub
rm -rf "$HUB" && mkdir -p "$HUB"
PORT=$("$HOSTPY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$HUB/hub.toml" <<EOF
room = "room-a"
units = ["unit-a"]
out_dir = "out"
[listener]
host = "127.0.0.1"
port = $PORT
advertise_host = "127.0.0.1"
[recorder]
db = "hub.sqlite"
EOF
export PYTHONPATH=$REPO
"$HOSTPY" -m dyadsync hub init -c "$HUB/hub.toml"
mosquitto -c "$HUB/out/mosquitto/mosquitto.conf" > "$HUB/mosquitto.stderr" 2>&1 &
HUB_PIDS="$!"
"$HOSTPY" -m dyadsync hub run -c "$HUB/hub.toml" > "$HUB/recorder.log" 2>&1 &
HUB_PIDS="$HUB_PIDS $!"
# one step on the unit: the credentials directory from `hub init`, copied as it is
rm -rf "$ROOT/tmp/unit-a" && cp -a "$HUB/out/units/unit-a" "$ROOT/tmp/unit-a"
inroot dyadsync setup unit --credentials /tmp/unit-a --sensors synthetic --leds none
inroot dyadsync unit check-config /etc/dyadsync/unit.toml
# started without the inroot function, so that $! is the unit itself (chroot and env exec into it)
chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 \
    dyadsync unit run --config /etc/dyadsync/unit.toml > "$HUB/unit.log" 2>&1 &
UNIT_PID=$!
HUB_PIDS="$HUB_PIDS $UNIT_PID"
set +e
"$HOSTPY" - "$HUB" <<'EOF'
import sqlite3, sys, time, tomllib
from pathlib import Path
from broker import wire
from broker.console import RoomConsole
hub = Path(sys.argv[1])
svc = tomllib.loads((hub / "out/services/console.toml").read_text())["broker"]
host, port = svc["url"].split("//")[1].split(":")
with RoomConsole(host, int(port), "room-a", svc["username"], svc["password"]) as c:
    ok = c.wait_status(["unit-a"], lambda s: s.state in ("idle", "recording"), timeout_s=300)
    print("unit-a status:", c.status.get("unit-a"))
    assert ok, "the arm64 unit never reported idle"
    sid = time.strftime("arm64-%Y%m%dT%H%M%S")
    cid = c.send("start", sid, participants={"therapist": "T01", "client": "C01"})
    acks = c.wait_acks(cid, ["unit-a"], timeout_s=120)
    print("start ack:", acks.get("unit-a"))
    assert acks.get("unit-a") and acks["unit-a"].ok, "the arm64 unit did not accept the session"
    time.sleep(90)
    cid = c.send("stop", sid)
    print("stop ack:", c.wait_acks(cid, ["unit-a"], timeout_s=120).get("unit-a"))
time.sleep(10)
con = sqlite3.connect(f"file:{hub / 'out' / 'hub.sqlite'}?mode=ro", uri=True)  # recorder.db is relative to out_dir
rows = con.execute("SELECT kind, stream, COUNT(*) FROM blocks WHERE session=? GROUP BY kind, stream", (sid,)).fetchall()
metrics = con.execute("SELECT name, COUNT(*) FROM metrics WHERE session=? GROUP BY name", (sid,)).fetchall()
print("hub database, session", sid)
for r in rows:
    print("  blocks", *r)
for m in metrics:
    print("  metric", *m)
assert rows, "no data from the arm64 unit reached the hub"
print("ROOM OK")
EOF
rc=$?
set -e
kill -TERM "$UNIT_PID" 2>/dev/null || true
wait "$UNIT_PID" 2>/dev/null || true
echo "unit log (tail):"; tail -15 "$HUB/unit.log"
log "stage 5: exit $rc"
exit $rc
