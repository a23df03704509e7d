"""SerialLink over a real pty against the emulated firmware: handshake, unplugs, exact loss accounting."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
import tty
import zlib
from collections import defaultdict

import numpy as np
import pytest
import serial

from core.vocab import BlockFlags
from firmware_bridge.link import SerialLink
from firmware_bridge.protocol import HEADER, ChannelInfo, Config, Hello, StatusBits, cobs_encode

from .conftest import wait_sim


def collect(link):
    per_stream = defaultdict(list)
    for d in link.drain():
        per_stream[d.block.stream].append(d)
    return per_stream


def check_exact_accounting(emu, link, deliveries):
    """Every delivered sample has the emulator's value for its index; received + lost spans the range."""
    stats = link.stats()
    for ch_id, ch in emu.channels.items():
        stream = f"{ch.role}/{ch.signal_name}"
        ds = deliveries[stream]
        assert ds, f"no data for {stream}"
        assert [d.block.seq for d in ds] == list(range(len(ds))), f"{stream}: seq not consecutive"
        received = sum(d.block.n for d in ds)
        lost = sum(d.lost_before for d in ds)
        span = ds[-1].first_index + ds[-1].block.n - ds[0].first_index
        assert received + lost == span, f"{stream}: received {received} + lost {lost} != sent {span}"
        assert stats["lost_samples"][stream] == lost
        assert stats["received_samples"][stream] == received
        # indices are contiguous except at flagged gaps, and values are exactly the emulator's
        expect_next = ds[0].first_index
        for d in ds:
            gap = d.first_index - expect_next
            assert gap == d.lost_before
            assert bool(d.block.flags & BlockFlags.GAP_BEFORE) == (gap > 0)
            want = np.array([emu.value_at(ch_id, d.first_index + i) for i in range(d.block.n)], dtype=np.float32)
            np.testing.assert_array_equal(d.block.values, want, err_msg=f"{stream} index {d.first_index}")
            expect_next = d.first_index + d.block.n
        assert ch.sent >= received
    return stats


_STARVER = """
import os, random, signal, sys, time
pid, stall_s, seed = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
n = 0
while True:
    time.sleep(rng.uniform(1.0, 2.5))
    try:
        os.kill(pid, signal.SIGSTOP)
        time.sleep(stall_s)
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        break
    n += 1
    print(n, flush=True)
"""


@pytest.fixture
def starve():
    """Freeze this whole test process (SIGSTOP from a helper process) for ``stall_s`` every 1-2.5 s: the link,
    the reader thread and the in-process emulated device all stop, as on a host that does not schedule the
    unit's process. ``start(stall_s)`` returns ``stop()``, which ends the freezing and gives the number of stalls."""
    procs: list[subprocess.Popen] = []

    def start(stall_s: float, seed: int = 1):
        p = subprocess.Popen([sys.executable, "-c", _STARVER, str(os.getpid()), str(stall_s), str(seed)],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)

        def stop() -> int:
            p.terminate()
            out, _ = p.communicate(timeout=10)
            os.kill(os.getpid(), signal.SIGCONT)  # (harmless: this process runs)
            return len(out.split())

        return stop

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.parametrize("stall_s", [0.0, 2.0], ids=["idle", "starved"])
def test_ten_simulated_minutes_with_two_unplugs(emulator_factory, link_factory, starve, stall_s):
    """Two unplugs in ten simulated minutes: exactly one reconnect per unplug and exact accounting — also when
    the whole process is frozen for 2 s (40 simulated s) every 1-2.5 s, as on a starved host."""
    speed = 20.0
    stop_starving = starve(stall_s) if stall_s else None
    emu = emulator_factory(speed=speed, drift_ppm=-90.0, start_device_us=2**32 - 200_000_000)  # wraps at ~200 s
    link = link_factory(emu)
    unplugs = [(180.0, 4.0), (420.0, 9.0)]
    for at, dur in unplugs:
        wait_sim(emu, at)
        emu.unplug(dur)
    wait_sim(emu, 600.0)
    # stop once the link has read up to ~596 s (a process starved just now has a burst still to read)
    deliveries = defaultdict(list)

    def read_to_the_end() -> bool:
        for stream, ds in collect(link).items():
            deliveries[stream] += ds
        eda = deliveries["therapist/eda"]
        return bool(eda) and eda[-1].first_index + eda[-1].block.n >= 596 * 32

    deadline = time.monotonic() + 60
    while not read_to_the_end() and time.monotonic() < deadline:
        time.sleep(0.05)
    stalls = stop_starving() if stop_starving else 0
    # the helper's seeded schedule completes its 7th stall 26.4 s after it starts, well inside the 30-s run:
    # >= 5 shows the process was starved without racing the last stall's report
    assert stalls >= 5 or not stall_s, stalls
    link.stop()
    read_to_the_end()
    deliveries = dict(deliveries)
    stats = check_exact_accounting(emu, link, deliveries)
    # one reconnect per unplug, each at the first handshake, none for a silence (a starved process included)
    assert stats["connects"] == 3 and stats["disconnects"] >= 2, stats
    assert stats["silences"] == 0 and stats["handshake_failures"] == 0, stats
    # a starved process is a burst of simulated seconds at once: the device's buffer takes it (frames that do
    # not fit are dropped whole, tested below), so no byte is cut and no frame is lost outside the unplugs
    assert stats["decoder"]["crc_errors"] == 0 and emu.frames_dropped_full == 0, (stats, emu.frames_dropped_full)
    # every unplug is recovered (a START after each replug), and each gap lies where the unplug was: it begins
    # by the unplug (earlier by what the link had not read yet: bytes in the port die with it, more of them on a
    # busy machine) and ends with the first frame after the START. How long recovery took in simulated seconds
    # depends on how busy the machine is (0.1 simulated s per real 5 ms at 20x): reported, not asserted
    ev = emu.events
    pulls = [t for t, name, _ in ev if name == "unplug"]
    replugs = [t for t, name, _ in ev if name == "replug"]
    starts = [t for t, name, _ in ev if name == "start"]
    assert len(pulls) == len(replugs) == 2
    spans = []
    for (at, dur), t_pull, t_re in zip(unplugs, pulls, replugs, strict=True):
        assert t_pull >= at and t_re >= t_pull + dur
        after = [t for t in starts if t >= t_re]
        assert after, f"no START after the replug at {t_re:.1f} s"
        spans.append((t_pull, t_re, min(after)))
    recovery = [round(t_start - t_re, 2) for _, t_re, t_start in spans]
    chans = {f"{c.role}/{c.signal_name}": c for c in emu.channels.values()}
    for stream, ds in deliveries.items():
        ch = chans[stream]
        frame_s = ch.frame_samples / ch.rate_hz
        gapped = [d for d in ds if d.lost_before]
        assert len(gapped) == 2, (stream, [d.lost_before for d in gapped])
        for (t_pull, t_re, t_start), d in zip(spans, gapped, strict=True):
            t_first_missing = emu.sample_time_s(ch, d.first_index - d.lost_before)
            t_back = emu.sample_time_s(ch, d.first_index)
            why = (stream, t_pull, t_re, t_start, t_first_missing, t_back, recovery)
            assert t_first_missing <= t_pull + frame_s, why
            # (a late emulator step sends the samples it catches up on after START: taken after the replug)
            assert t_re - frame_s - 1e-6 <= t_back <= t_start + frame_s, why
            assert d.lost_before >= (t_re - t_pull - frame_s) * ch.rate_hz - 1, why
    # ten minutes of data per stream minus the gaps: streaming began at the first handshake (within 30
    # simulated s = 1.5 s real) and was read to the end; in between, exact accounting and the two gaps above
    # (a gap may begin before its unplug by what the device had not sent yet: it dies with the cable)
    eda = deliveries["therapist/eda"]
    assert eda[0].first_index < 30 * 32 and eda[-1].first_index + eda[-1].block.n >= 596 * 32
    # time stamps: the clock fit follows the emulator's drifting clock (errors in simulated time)
    off = link.clock.utc_offset_ns()
    errs = []
    for d in deliveries["client/ppg"][200:]:
        sim_t = emu.sample_time_s(emu.channels[3], d.first_index)
        real_t = emu._real_t0 + (sim_t - emu._sim_base) / speed
        errs.append((d.block.t0_ns - off) / 1e9 - real_t)
    err_sim_s = np.abs(np.array(errs)) * speed
    assert np.median(err_sim_s) < 0.1, f"median stamp error {np.median(err_sim_s):.3f} simulated s"
    assert link.clock.resets_detected == 0


class _StallingPort:
    """A real port whose next read, once armed, is late by ``stall_s`` and then finds nothing.

    With ``hold`` (the in-process emulator) the device is held for the stall too and catches up by itself
    afterwards, as when the whole process was not scheduled; without it the device goes on sampling while the
    port stays unread, so its bytes pile up in the device's output buffer."""

    def __init__(self, port, armed: threading.Event, stall_s: float, hold=None) -> None:
        self._port, self._armed, self._stall_s, self._hold = port, armed, stall_s, hold
        self.stalls = 0

    def read(self, n: int = 1) -> bytes:
        if self._armed.is_set():
            if self._hold is not None:
                with self._hold._lock:  # the device does not run either (its steps take this lock)
                    time.sleep(self._stall_s)
            else:
                time.sleep(self._stall_s)
            self._armed.clear()
            self.stalls += 1
            return b""
        return self._port.read(n)

    def __getattr__(self, name):
        return getattr(self._port, name)


def test_a_starved_process_is_not_taken_for_a_silent_device(emulator_factory, link_factory):
    """Liveness is judged on the time the link watched the port: a reader late by 3x the silence timeout,
    with the device starved alongside, keeps its connection; the device's burst afterwards is accounted."""
    emu = emulator_factory(speed=20.0)
    armed = threading.Event()
    ports: list[_StallingPort] = []

    def factory(url, **kw):
        ports.append(_StallingPort(serial.serial_for_url(url, **kw), armed, stall_s=1.5, hold=emu))
        return ports[-1]

    link = link_factory(emu, serial_factory=factory)
    assert link.silence_timeout_s == 0.5
    wait_sim(emu, 10.0)
    armed.set()
    deadline = time.monotonic() + 30
    while armed.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not armed.is_set() and sum(p.stalls for p in ports) == 1
    wait_sim(emu, emu.sim_time() + 10.0)
    time.sleep(0.1)
    link.stop()
    stats = check_exact_accounting(emu, link, collect(link))
    assert stats["silences"] == 0 and stats["connects"] == 1, stats  # (one disconnect: the stop)


def test_a_full_device_buffer_drops_whole_frames_and_the_host_counts_them(emulator_factory, link_factory):
    """docs/firmware-protocol.md: a device whose output buffer is full drops whole frames, never half frames,
    so the host sees index gaps it counts exactly, not CRC errors."""
    emu = emulator_factory(speed=20.0, tx_buffer_bytes=2048)
    armed = threading.Event()

    def factory(url, **kw):
        return _StallingPort(serial.serial_for_url(url, **kw), armed, stall_s=1.5)  # 30 simulated s unread

    link = link_factory(emu, serial_factory=factory)
    wait_sim(emu, 10.0)
    armed.set()
    deadline = time.monotonic() + 30
    while armed.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    wait_sim(emu, emu.sim_time() + 10.0)
    time.sleep(0.1)
    link.stop()
    stats = check_exact_accounting(emu, link, collect(link))
    assert emu.frames_dropped_full > 0 and stats["decoder"]["crc_errors"] == 0, (emu.frames_dropped_full, stats)
    assert stats["decoder"]["decode_errors"] == 0 and stats["connects"] == 1, stats
    for ch in emu.channels.values():
        assert stats["lost_samples"][f"{ch.role}/{ch.signal_name}"] == ch.dropped_full > 0, (ch, stats)


def test_mute_is_detected_as_silence_and_recovered(emulator_factory, link_factory):
    emu = emulator_factory(speed=20.0)
    link = link_factory(emu)
    wait_sim(emu, 20.0)
    emu.mute(30.0)  # 3x the link's silence timeout (0.5 s real = 10 s simulated): declared on a busy machine too
    wait_sim(emu, 70.0)
    time.sleep(0.1)
    link.stop()
    stats = check_exact_accounting(emu, link, collect(link))
    assert stats["silences"] == 1 and stats["connects"] == 2
    # the loss is the samples the device took during the mute, up to the next START at most (the silence is
    # declared after 10 simulated s of it, later on a busy machine: the time is not asserted)
    t_mute = next(t for t, name, _ in emu.events if name == "mute")
    t_start = min(t for t, name, _ in emu.events if name == "start" and t > t_mute)
    assert t_start >= t_mute + 30.0 and stats["last_outage_s"] > 0
    lost = stats["lost_samples"]["therapist/eda"]  # (frames sent once the mute ends count, START or not)
    assert 30.0 * 32 - 8 <= lost <= (t_start - t_mute) * 32 + 16, (lost, t_start - t_mute)


def test_bit_errors_and_dropped_bytes_are_counted_exactly(emulator_factory, link_factory):
    emu = emulator_factory(speed=20.0, bit_error_rate=2e-4, drop_byte_rate=2e-4, seed=5)
    link = link_factory(emu)
    wait_sim(emu, 60.0)
    time.sleep(0.1)
    link.stop()
    stats = check_exact_accounting(emu, link, collect(link))
    dec = stats["decoder"]
    assert dec["crc_errors"] + dec["decode_errors"] > 0
    assert sum(stats["lost_samples"].values()) > 0


def test_device_reset_starts_a_new_segment(emulator_factory, link_factory):
    emu = emulator_factory(speed=20.0)
    link = link_factory(emu)
    wait_sim(emu, 20.0)
    seg0 = link.clock.segment
    emu.reset_device()
    wait_sim(emu, 40.0)
    time.sleep(0.1)
    link.stop()
    stats = link.stats()
    assert stats["device_resets"] == 1
    assert link.clock.segment == seg0 + 1
    ds = collect(link)["therapist/eda"]
    after = [d for d in ds if d.segment == seg0 + 1]
    assert after and after[0].block.flags & BlockFlags.GAP_BEFORE
    assert after[0].first_index < 32 * 2  # indices restarted after the reboot
    assert [d.block.seq for d in ds] == list(range(len(ds)))


def test_unknown_major_version_is_refused(emulator_factory, link_factory):
    emu = emulator_factory(speed=5.0, major=2, minor=1)
    link = link_factory(emu)
    deadline = time.monotonic() + 5.0
    while link.refused is None and time.monotonic() < deadline:
        time.sleep(0.01)
    link.stop()
    assert link.refused is not None and "2.1" in link.refused and "1.x" in link.refused
    assert link.get(timeout_s=0) is None
    assert link.stats()["connects"] == 0 and link.channels == {}


def test_loop_url_opens_and_fails_handshake_cleanly():
    link = SerialLink("loop://", handshake_timeout_s=0.1, backoff_initial_s=0.01, backoff_max_s=0.02).start()
    deadline = time.monotonic() + 5.0
    while link.stats()["handshake_failures"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    link.stop()
    st = link.stats()
    assert st["handshake_failures"] >= 2 and st["connects"] == 0
    assert "HELLO" in link.last_error


def test_missing_port_is_retried_with_backoff(tmp_path):
    link = SerialLink(str(tmp_path / "nothing"), backoff_initial_s=0.01, backoff_max_s=0.04).start()
    time.sleep(0.3)
    link.stop()
    n = link.stats()["open_failures"]
    assert 3 <= n <= 0.3 / 0.01 + 2  # backoff doubles, so far fewer than one try per 10 ms
    with pytest.raises(ValueError, match="backoff"):
        SerialLink("loop://", backoff_initial_s=0.0)


def test_status_flags_and_config_ack_nack(emulator_factory, link_factory):
    emu = emulator_factory(speed=20.0)
    link = link_factory(emu)
    wait_sim(emu, 5.0)
    emu.send_status(((0, int(StatusBits.CONTACT_LOST), 3),))
    wait_sim(emu, 10.0)
    link.send(Config(0, "frame_samples", 4))
    link.send(Config(9, "frame_samples", 4))
    wait_sim(emu, 15.0)
    link.stop()
    ds = collect(link)
    eda_t = ds["therapist/eda"]
    lost_flags = [bool(d.block.flags & BlockFlags.CONTACT_LOST) for d in eda_t]
    assert lost_flags[0] is False and lost_flags[-1] is True
    assert lost_flags == sorted(lost_flags)  # off, then on from the STATUS frame onwards
    assert not any(d.block.flags & BlockFlags.CONTACT_LOST for d in ds["client/eda"])
    assert eda_t[-1].block.n == 4 and eda_t[0].block.n == 8
    st = link.stats()
    assert st["nacks"] == 1 and st["acks"] >= 2  # START + CONFIG


def test_consumer_too_slow_drops_newest_blocks_counted_and_flagged(emulator_factory, link_factory):
    emu = emulator_factory(speed=20.0)
    link = link_factory(emu, queue_max=50)
    wait_sim(emu, 20.0)  # ~ 2 x 80 + 2 x 25 blocks produced, nobody consumes
    got = [link.get(timeout_s=0) for _ in range(50)]
    assert all(b is not None for b in got)
    wait_sim(emu, 25.0)
    link.stop()
    st = link.stats()
    assert st["queue_dropped_blocks"] > 0 and st["queue_dropped_samples"] > 0
    after = collect(link)
    for stream, ds in after.items():
        first = ds[0]
        before = [b for b in got if b.stream == stream]
        # the first block after the drop carries GAP_BEFORE and its seq jumps past the dropped ones
        if before:
            assert first.block.seq > before[-1].seq + 1
        assert first.block.flags & BlockFlags.GAP_BEFORE


def test_malformed_hello_gives_a_clear_handshake_error(tmp_path):
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    link = SerialLink(path, handshake_timeout_s=0.3, backoff_initial_s=0.05, backoff_max_s=0.1).start()
    try:
        payload = bytearray(Hello("fw", (1, 0, 0), 1, 1, (ChannelInfo(0, "therapist", "eda", 4.0, "uS"),)).encode_payload())
        payload[20] = 7  # role code of channel 0: neither therapist (0) nor client (1)
        body = HEADER.pack(1, 0, 0x01, 0, 1, 0) + bytes(payload)
        body += struct.pack("<I", zlib.crc32(body))
        deadline = time.monotonic() + 5
        while link.stats()["handshake_failures"] < 1 and time.monotonic() < deadline:
            os.write(master, cobs_encode(body) + b"\x00")
            time.sleep(0.05)
    finally:
        link.stop()
        os.close(master)
        os.close(slave)
    assert link.stats()["connects"] == 0
    assert "no HELLO" in link.last_error and "unknown role code 7" in link.last_error
    assert link.stats()["decoder"]["decode_errors"] >= 1


@pytest.mark.slow
def test_ten_minutes_slower_speed_with_unplugs_mute_and_bit_errors(emulator_factory, link_factory):
    """The long variant: speed 5 (two real minutes), bit errors, two unplugs and a silent spell."""
    emu = emulator_factory(speed=5.0, drift_ppm=100.0, bit_error_rate=1e-5, seed=3)
    link = link_factory(emu)
    wait_sim(emu, 150.0)
    emu.unplug(3.0)
    wait_sim(emu, 300.0)
    emu.mute(20.0)  # longer than the silence timeout (1.6 s real = 8 s simulated)
    wait_sim(emu, 450.0)
    emu.unplug(20.0)
    wait_sim(emu, 600.0)
    time.sleep(0.2)
    link.stop()
    stats = check_exact_accounting(emu, link, collect(link))
    assert stats["connects"] == 4
    replugs = [t for t, name, _ in emu.events if name == "replug"]
    starts = [t for t, name, _ in emu.events if name == "start"]
    for t_re in replugs:
        assert [t for t in starts if t >= t_re], f"no START after the replug at {t_re:.1f} s"
