"""I2C drivers against the register-level emulators in simulated time."""

from __future__ import annotations

import errno
import math
import threading

import numpy as np
import pytest
from smbus2 import i2c_msg

from core.errors import ConfigError
from firmware_bridge.ads1115 import ADS1115, MultiplexedScanner
from firmware_bridge.errors import SensorError, SensorTimeout
from firmware_bridge.gsr import GsrFrontEnd
from firmware_bridge.max30102 import MAX30102
from firmware_bridge.tca9548a import TCA9548A
from hil.emulators.ads1115 import ADS1115Emulator
from hil.emulators.i2c import FakeSMBus, SimClock
from hil.emulators.max30102 import MAX30102Emulator
from hil.emulators.tca9548a import TCA9548AEmulator

RATE = 100.0


def ramp(offset: int):
    """An 18-bit signal that encodes the sample number: value(t) = offset + round(t * 100)."""
    return lambda t: offset + round(t * RATE)


@pytest.fixture
def sim():
    clock = SimClock()
    bus = FakeSMBus()
    return clock, bus


def make_ppg(sim, **kw):
    clock, bus = sim
    emu = bus.attach(MAX30102Emulator(ramp(1000), ramp(200_000), clock=clock, **kw))
    drv = MAX30102(bus, sleep=clock.sleep, monotonic=clock.now)
    drv.init()
    return clock, bus, emu, drv


def sample_numbers(data):
    return data.red.astype(np.int64) - 1000


def test_init_configures_spo2_100hz_411us_and_led_currents(sim):
    clock, bus, emu, drv = make_ppg(sim)
    assert emu.resets == 1
    assert emu.mode == 0b011 and emu.leds == 2
    assert emu.output_rate_hz == 100 and emu.resolution_bits == 18
    assert (emu.regs[0x0A] >> 5) & 0x03 == 3  # 16384 nA range
    assert emu.led_current_ma(0) == pytest.approx(7.0) and emu.led_current_ma(1) == pytest.approx(7.0)
    assert emu.regs[0x08] & 0x10  # rollover enabled
    with pytest.raises(ConfigError, match="400"):
        MAX30102(bus, sample_rate_hz=800, pulse_width_us=411)
    with pytest.raises(ConfigError, match="sample_rate_hz"):
        MAX30102(bus, sample_rate_hz=99)
    with pytest.raises(ConfigError, match="led_red_ma"):
        MAX30102(bus, led_red_ma=60)
    with pytest.raises(ConfigError, match="address"):
        MAX30102(bus, address=0x58)


def test_fifo_stream_is_continuous_across_pointer_wraps(sim):
    clock, bus, emu, drv = make_ppg(sim)
    got = []
    for step in [0.07, 0.13, 0.05, 0.29, 0.11] * 20:  # ~13 s, pointers wrap ~40 times
        clock.advance(step)
        data = drv.read_fifo()
        assert data.lost_before == 0
        assert np.all(data.red < 2**18) and np.all(data.ir < 2**18)  # 18-bit masking despite junk bits
        np.testing.assert_array_equal(data.ir.astype(np.int64) - 200_000, sample_numbers(data))
        got.append(sample_numbers(data))
    seq = np.concatenate(got)
    np.testing.assert_array_equal(seq, np.arange(1, len(seq) + 1))
    assert len(seq) == emu.samples_generated - emu.count
    # every FIFO burst stayed within the 32-byte SMBus block limit and whole samples
    reads = [d for _, op, r, d in emu.log if op == "read" and r == 0x07]
    assert reads and all(len(d) <= 32 and len(d) % 6 == 0 for d in reads)


@pytest.mark.parametrize("stall_s", [0.35, 0.50, 0.62])
def test_fifo_overflow_gives_exact_lost_count(sim, stall_s):
    clock, bus, emu, drv = make_ppg(sim)
    clock.advance(0.1)
    first = drv.read_fifo()
    gen0 = emu.samples_generated
    clock.advance(stall_s)  # the driver is away: more than 32 samples arrive
    data = drv.read_fifo()
    expected_lost = emu.samples_generated - gen0 - 32  # the FIFO was empty after the first read
    assert abs(expected_lost - (stall_s * RATE - 32)) <= 1
    assert data.lost_before == expected_lost and data.lost_exact
    assert data.n == 32
    # the samples read are the newest 32; the lost ones are exactly those between
    last_before = sample_numbers(first)[-1]
    assert sample_numbers(data)[0] - last_before - 1 == expected_lost
    assert drv.lost_samples == expected_lost == emu.samples_lost
    clock.advance(0.1)
    nxt = drv.read_fifo()
    assert nxt.lost_before == 0 and sample_numbers(nxt)[0] == sample_numbers(data)[-1] + 1


@pytest.mark.parametrize("late_s", [0.316, 0.3245])
def test_a_full_fifo_before_its_first_overflow_is_read_not_taken_for_empty(sim, late_s):
    """32 samples and none lost yet: the pointers meet and OVF_COUNTER is 0. The driver must read the 32
    (it did read none, and the FIFO clock took the count for 32 short: a PPG stream off for a stretch)."""
    clock, bus, emu, drv = make_ppg(sim)
    clock.advance(0.105)
    first = drv.read_fifo()
    clock.advance(late_s)
    data = drv.read_fifo()
    assert emu.samples_lost == 0  # it was full, and had not overflowed yet
    assert data.n == 32 and data.lost_before == 0 and data.lost_exact
    np.testing.assert_array_equal(sample_numbers(data), sample_numbers(first)[-1] + 1 + np.arange(32))
    assert drv.read_fifo().n == 0  # and an empty FIFO right after a drain is empty


class SlowFifoBus:
    """Each FIFO data transaction takes ``per_read_s`` (a slow or preempted drain): samples keep arriving."""

    def __init__(self, bus, clock, per_read_s):
        self._bus = bus
        self._clock = clock
        self.per_read_s = per_read_s

    def read_i2c_block_data(self, addr, reg, length, force=None):
        if reg == 0x07:
            self._clock.advance(self.per_read_s)
        return self._bus.read_i2c_block_data(addr, reg, length)

    def __getattr__(self, name):
        return getattr(self._bus, name)


def test_samples_overwritten_during_a_drain_are_counted_at_the_next(sim):
    """A nearly full FIFO drained slowly overflows while it is read; OVF_COUNTER is reset by the next pop, so
    the loss shows only as a read pointer that moved further: the next drain counts it."""
    clock, bus = sim
    emu = bus.attach(MAX30102Emulator(ramp(1000), ramp(200_000), clock=clock))
    slow = SlowFifoBus(bus, clock, 0.0)
    drv = MAX30102(slow, sleep=clock.sleep, monotonic=clock.now)
    drv.init()
    clock.advance(0.305)  # 30 samples: almost full
    slow.per_read_s = 0.025  # 7 transactions of 25 ms: ~17 samples arrive during the drain
    first = drv.read_fifo()
    # the drain took long enough for the FIFO to fill up: the driver looked again and found the overwrites
    assert emu.samples_lost > 0 and first.overwritten == first.lost_before == emu.samples_lost
    assert first.n == 30 and first.lost_exact
    assert first.snapshot_s[0] == first.snapshot_s[1] == clock.now()  # the second snapshot, after the drain
    assert first.queued == emu.count  # what the FIFO holds by then
    slow.per_read_s = 0.0
    clock.advance(0.05)
    nxt = drv.read_fifo()
    assert nxt.lost_before == 0
    # the numbers: every sample generated is read or counted lost
    numbers = np.concatenate([sample_numbers(first), sample_numbers(nxt)])
    assert numbers[-1] == numbers.size + first.lost_before
    assert drv.status()["overwritten"] == emu.samples_lost


@pytest.mark.parametrize("delay_s", [0.2, 0.5, 0.8])
def test_a_drain_delayed_past_a_whole_fifo_counts_every_overwrite(sim, delay_s):
    """The thread is held up between the pointer read and the burst data read (waiting for a bus another
    sensor's transaction stalls) long enough for 32 or more overwrites: the read pointer alone counts them
    modulo 32, the time taken in between tells the multiple."""
    clock, bus = sim
    emu = bus.attach(MAX30102Emulator(ramp(1000), ramp(200_000), clock=clock))

    class HeldUp:
        def __init__(self):
            self.armed = False

        def i2c_rdwr(self, *msgs):
            if self.armed:
                self.armed = False
                clock.advance(delay_s)
            return bus.i2c_rdwr(*msgs)

        def __getattr__(self, name):
            return getattr(bus, name)

    held = HeldUp()
    drv = MAX30102(held, use_i2c_rdwr=True, sleep=clock.sleep, monotonic=clock.now)
    drv.init()
    clock.advance(0.145)  # 14 samples waiting
    held.armed = True
    data = drv.read_fifo()
    assert emu.samples_lost == data.lost_before == data.overwritten
    # the samples read are the newest ones: exactly lost_before after the 0 read before
    assert sample_numbers(data)[0] == 1 + data.lost_before
    clock.advance(0.1)
    nxt = drv.read_fifo()
    assert nxt.lost_before == 0 and sample_numbers(nxt)[0] == sample_numbers(data)[-1] + 1


def test_a_drain_that_waited_for_the_bus_before_its_snapshot_is_not_miscounted(sim):
    """The thread waited 0.5 s for the bus before its pointer read (the driver's clock saw the wait inside the
    pointer read's window): the FIFO overflowed before the snapshot (counted by OVF_COUNTER), nothing was
    overwritten during the drain, and the FIFO is empty after it, not full."""
    clock, bus = sim
    emu = bus.attach(MAX30102Emulator(ramp(1000), ramp(200_000), clock=clock))

    class Waits:
        armed = False

        def read_i2c_block_data(self, addr, reg, length, force=None):
            if self.armed and reg == 0x04:
                self.armed = False
                clock.advance(0.5)
            return bus.read_i2c_block_data(addr, reg, length)

        def __getattr__(self, name):
            return getattr(bus, name)

    w = Waits()
    drv = MAX30102(w, use_i2c_rdwr=True, sleep=clock.sleep, monotonic=clock.now)
    drv.init()
    clock.advance(0.105)
    first = drv.read_fifo()
    clock.advance(0.1)
    w.armed = True
    data = drv.read_fifo()
    assert data.overwritten == 0 and data.lost_before == emu.samples_lost and data.lost_exact
    assert data.queued == 0 and data.n == 32
    assert sample_numbers(data)[0] == sample_numbers(first)[-1] + 1 + data.lost_before


def test_overwrites_a_drain_did_not_check_are_counted_by_the_next(sim):
    """A FIFO that overflows between the pointer read and the data read of a short drain (the thread was
    preempted): OVF_COUNTER is reset by the first pop, the read pointer tells at the next drain."""
    clock, bus = sim
    emu = bus.attach(MAX30102Emulator(ramp(1000), ramp(200_000), clock=clock))

    class Preempted(SlowFifoBus):
        def read_i2c_block_data(self, addr, reg, length, force=None):
            if reg == 0x07 and self.per_read_s:
                self._clock.advance(self.per_read_s)  # only before the first data read
                self.per_read_s = 0.0
                out = self._bus.read_i2c_block_data(addr, reg, length)
                self._clock.t_s -= 0.0  # the drain itself is quick
                return out
            return self._bus.read_i2c_block_data(addr, reg, length)

    slow = Preempted(bus, clock, 0.0)
    drv = MAX30102(slow, sleep=clock.sleep, monotonic=lambda: 0.0)  # a clock that does not see the delay
    drv.init()
    clock.advance(0.305)
    slow.per_read_s = 0.05
    first = drv.read_fifo()
    assert first.lost_before == 0 and emu.samples_lost > 0
    clock.advance(0.05)
    nxt = drv.read_fifo()
    assert nxt.overwritten == nxt.lost_before == emu.samples_lost
    numbers = np.concatenate([sample_numbers(first), sample_numbers(nxt)])
    assert numbers[-1] == numbers.size + nxt.lost_before


def test_saturated_overflow_counter_is_flagged_as_lower_bound(sim):
    clock, bus, emu, drv = make_ppg(sim)
    clock.advance(1.0)  # 100 samples, 68 lost, counter saturates at 31
    data = drv.read_fifo()
    assert emu.ovf_counter == 0  # popped
    assert data.lost_before == 31 and not data.lost_exact
    assert emu.samples_lost == 68
    assert drv.status()["lost_inexact_events"] == 1


def test_nack_bursts_are_survived_and_counted(sim):
    clock, bus, emu, drv = make_ppg(sim)
    got = []
    for i in range(40):
        clock.advance(0.1)
        if i % 5 == 2:
            emu.faults.nack_next(3)  # shorter than the retry budget (3 retries)
        if i % 5 == 4:
            bus.faults.stall_next(1, 0.002)
        got.append(sample_numbers(drv.read_fifo()))
    seq = np.concatenate(got)
    np.testing.assert_array_equal(seq, np.arange(1, len(seq) + 1))  # nothing lost
    st = drv.status()
    assert st["bus_errors"] == 8 * 3 + 8 and st["reinits"] == 0 and st["failures"] == 0
    assert st["errnos"] == {"EREMOTEIO": 24, "ETIMEDOUT": 8}
    # a burst longer than the budget: the chip is re-initialised and the loss is flagged inexact
    emu.faults.nack_next(4)
    clock.advance(0.1)
    data = drv.read_fifo()
    assert data.reinitialised and not data.lost_exact
    assert drv.status()["reinits"] == 1 and emu.resets == 2
    clock.advance(0.1)
    assert drv.read_fifo().n == 10
    # unplugged for good: a clear SensorError naming the address
    emu.faults.unplugged = True
    clock.advance(0.1)
    with pytest.raises(SensorError, match="0x57") as ei:
        drv.read_fifo()
    assert ei.value.errno == errno.EREMOTEIO and isinstance(ei.value, OSError)


def test_acquisition_loop_survives_chaos_and_unplug(sim):
    """Random NACK bursts, stalls, corrupted bytes and a 2-s unplug: only SensorError ever reaches the
    loop, every injected fault is counted, and data flows again after the sensor returns."""
    clock, bus, emu, drv = make_ppg(sim)
    rng = np.random.default_rng(9)
    emu.faults.bit_error_rate = 1e-4
    emu.faults.drop_byte_rate = 1e-4
    sensor_errors = 0
    per_step = []
    for i in range(600):  # 60 simulated seconds
        clock.advance(0.1)
        r = rng.random()
        if r < 0.05:
            emu.faults.nack_next(int(rng.integers(1, 7)))
        elif r < 0.08:
            bus.faults.stall_next(int(rng.integers(1, 3)), 0.003)
        if i == 300:
            emu.faults.unplugged = True
        if i == 320:
            emu.faults.unplugged = False
        try:
            data = drv.read_fifo()
        except SensorError:
            sensor_errors += 1
            per_step.append(-1)
            continue
        assert np.all(data.red < 2**18) and np.all(data.ir < 2**18)
        per_step.append(data.n)
    st = drv.status()
    injected = emu.faults.nacks_injected + emu.faults.stalls_injected + bus.faults.stalls_injected
    assert st["bus_errors"] >= injected > 0
    assert sensor_errors >= 19  # unplugged for 20 polls; NACK bursts longer than the budget add a few
    assert st["reinits"] >= 1 and drv.initialised
    assert all(n >= 9 for n in per_step[-50:])  # streaming at 100 Hz again


def test_wrong_part_id_is_a_clear_error(sim):
    clock, bus = sim
    bus.attach(MAX30102Emulator(ramp(0), ramp(0), clock=clock, part_id=0x11))
    drv = MAX30102(bus, sleep=clock.sleep, monotonic=clock.now)
    with pytest.raises(SensorError, match=r"0x57.*PART_ID \(0xFF\) read 0x11, expected 0x15"):
        drv.init()
    empty = FakeSMBus()
    with pytest.raises(SensorError, match="0x57"):
        MAX30102(empty, sleep=clock.sleep, monotonic=clock.now).init()


def test_temperature(sim):
    clock, bus, emu, drv = make_ppg(sim)
    emu.temperature_c = -3.4375
    assert drv.read_temperature_c() == pytest.approx(-3.4375)


def test_two_max30102_behind_tca9548a(sim):
    clock, bus = sim
    mux = bus.attach(TCA9548AEmulator(address=0x71, clock=clock))
    therapist = mux.attach(0, MAX30102Emulator(ramp(1000), ramp(200_000), clock=clock, seed=1))
    client = mux.attach(5, MAX30102Emulator(ramp(50_000), ramp(100_000), clock=clock, seed=2))
    tca = TCA9548A(bus, 0x71, sleep=clock.sleep, monotonic=clock.now)
    with pytest.raises(OSError):
        bus.read_byte_data(0x57, 0xFF)  # no channel enabled: nobody answers at 0x57
    drivers = {
        "therapist": MAX30102(tca.channel_bus(0), sleep=clock.sleep, monotonic=clock.now),
        "client": MAX30102(tca.channel_bus(5), sleep=clock.sleep, monotonic=clock.now),
    }
    for d in drivers.values():
        d.init()
    assert therapist.resets == 1 and client.resets == 1
    out = {"therapist": [], "client": []}
    for _ in range(10):
        clock.advance(0.1)
        for role, d in drivers.items():
            out[role].append(d.read_fifo().red.astype(np.int64))
    t = np.concatenate(out["therapist"]) - 1000
    c = np.concatenate(out["client"]) - 50_000
    np.testing.assert_array_equal(t, np.arange(1, len(t) + 1))
    np.testing.assert_array_equal(c, np.arange(1, len(c) + 1))
    assert tca.read_control() == 1 << 5
    # the mux missed a select (NACK): the channel bus re-selects and the data still comes from the right chip
    mux.faults.nack_next(1)
    clock.advance(0.1)
    assert drivers["therapist"].read_fifo().red[0] - 1000 == t[-1] + 1
    assert mux.writes_to(None)[-1] == (1,)


class PreemptingBus:
    """A bus on which thread "A" is preempted right after its mux select, and thread "B" gets to run its own
    select and transaction before A's transaction goes out (the worst moment)."""

    def __init__(self, bus, mux_address):
        self._bus = bus
        self._mux = mux_address
        self.a_selected = threading.Event()
        self.b_done = threading.Event()

    def write_byte(self, addr, value, force=None):
        self._bus.write_byte(addr, value)
        if addr == self._mux and threading.current_thread().name == "A":
            self.a_selected.set()
            self.b_done.wait(0.3)  # B cannot finish while A holds the mux: then A goes on after 0.3 s

    def __getattr__(self, name):
        return getattr(self._bus, name)


def test_mux_select_and_transaction_are_one_step_across_threads(sim):
    """Two chips at one address behind the mux, driven from two threads: a thread switching the mux between
    another thread's select and its transaction must not make that transaction reach the wrong chip."""
    clock, bus = sim
    mux = bus.attach(TCA9548AEmulator(clock=clock))
    mux.attach(0, MAX30102Emulator(ramp(1000), ramp(200_000), clock=clock, part_id=0x15))
    mux.attach(1, MAX30102Emulator(ramp(1000), ramp(200_000), clock=clock, part_id=0x16))
    gate = PreemptingBus(bus, 0x70)
    tca = TCA9548A(gate)
    got = {}

    def a():
        got["A"] = tca.channel_bus(0).read_byte_data(0x57, 0xFF)

    def b():
        gate.a_selected.wait(2.0)
        got["B"] = tca.channel_bus(1).read_byte_data(0x57, 0xFF)
        gate.b_done.set()

    threads = [threading.Thread(target=a, name="A"), threading.Thread(target=b, name="B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5.0)
    assert got == {"A": 0x15, "B": 0x16}


def test_fifo_read_with_i2c_rdwr_beyond_32_bytes(sim):
    clock, bus = sim
    emu = bus.attach(MAX30102Emulator(ramp(1000), ramp(200_000), clock=clock))
    drv = MAX30102(bus, use_i2c_rdwr=True, sleep=clock.sleep, monotonic=clock.now)
    drv.init()
    clock.advance(0.25)
    emu.faults.nack_next(2)
    data = drv.read_fifo()
    np.testing.assert_array_equal(sample_numbers(data), np.arange(1, 26))
    assert [len(d) for _, op, r, d in emu.log if op == "read" and r == 0x07] == [150]  # one transaction
    assert drv.counters.bus_errors == 2


class RecordingBus:
    """Records which bus methods a driver calls (to check them against smbus2.SMBus)."""

    def __init__(self, bus):
        self._bus = bus
        self.called = set()

    def __getattr__(self, name):
        self.called.add(name)
        return getattr(self._bus, name)


def test_drivers_use_only_smbus2_methods(sim):
    import smbus2

    clock, bus = sim
    mux = bus.attach(TCA9548AEmulator(clock=clock))
    mux.attach(2, MAX30102Emulator(ramp(0), ramp(0), clock=clock))
    bus.attach(ADS1115Emulator({0: lambda t: 1.0}, clock=clock))
    rec = RecordingBus(bus)
    tca = TCA9548A(rec, sleep=clock.sleep, monotonic=clock.now)
    for rdwr in (False, True):
        ppg = MAX30102(tca.channel_bus(2), use_i2c_rdwr=rdwr, sleep=clock.sleep, monotonic=clock.now)
        ppg.init()
        clock.advance(0.1)
        ppg.read_fifo()
        ppg.read_temperature_c()
    adc = ADS1115(rec, sleep=clock.sleep, monotonic=clock.now)
    adc.init()
    adc.read_volts(0)
    adc.start_continuous(0)
    adc.read_latest_volts()
    tca.read_control()
    assert rec.called and rec.called <= set(dir(smbus2.SMBus)), rec.called - set(dir(smbus2.SMBus))


def test_fake_bus_semantics():
    clock = SimClock()
    bus = FakeSMBus()
    emu = bus.attach(MAX30102Emulator(ramp(0), ramp(0), clock=clock))
    with pytest.raises(ValueError, match="32"):
        bus.read_i2c_block_data(0x57, 0x07, 33)
    with pytest.raises(OSError) as ei:
        bus.read_byte(0x20)
    assert ei.value.errno == errno.EREMOTEIO
    # register auto-increment stops at FIFO_DATA; i2c_rdwr reads past 32 bytes
    bus.write_i2c_block_data(0x57, 0x04, [3, 0, 3])
    assert bus.read_i2c_block_data(0x57, 0x04, 3) == [3, 0, 3]
    w, r = i2c_msg.write(0x57, [0xFE]), i2c_msg.read(0x57, 2)
    bus.i2c_rdwr(w, r)
    assert list(r) == [0x03, 0x15]
    assert emu.log[-1][1:3] == ("read", 0xFE)


def test_emulator_overflow_without_rollover_keeps_old_samples():
    clock = SimClock()
    bus = FakeSMBus()
    emu = bus.attach(MAX30102Emulator(ramp(0), ramp(0), clock=clock, junk_upper_bits=False))
    bus.write_byte_data(0x57, 0x0A, (1 << 2) | 3)  # 100 Hz, 411 us
    bus.write_byte_data(0x57, 0x0C, 0x20)
    bus.write_byte_data(0x57, 0x0D, 0x20)
    bus.write_byte_data(0x57, 0x09, 0x03)
    clock.advance(0.9)
    assert bus.read_byte_data(0x57, 0x05) == 0x1F  # saturates
    assert emu.samples_lost == emu.samples_generated - 32 > 31
    data = bus.read_i2c_block_data(0x57, 0x07, 6)
    assert (data[0] << 16 | data[1] << 8 | data[2]) == 1  # the oldest sample survived
    assert bus.read_byte_data(0x57, 0x05) == 0  # cleared by the pop


# ------------------------------------------------------------------------------------------ ADS1115
def adc_setup(rate_error=0.0, **kw):
    clock = SimClock()
    bus = FakeSMBus()
    inputs = {0: lambda t: 1.0 + 0.5 * math.sin(2 * math.pi * 0.3 * t), 1: lambda t: -0.25, 2: lambda t: 3.0, 3: lambda t: 0.5}
    emu = bus.attach(ADS1115Emulator(inputs, address=0x49, clock=clock, rate_error=rate_error))
    drv = ADS1115(bus, 0x49, sleep=clock.sleep, monotonic=clock.now, **kw)
    drv.init()
    return clock, bus, emu, drv


def test_ads1115_single_shot_differential_and_clipping():
    clock, bus, emu, drv = adc_setup(fsr_v=2.048, data_rate_sps=860)
    assert drv.read_volts(1) == pytest.approx(-0.25, abs=1e-4)  # single-ended below ground reads negative
    assert drv.read_raw("AIN2-AIN3") == 32767  # 2.5 V over a ±2.048 V range clips
    assert drv.read_raw(2) == 32767
    assert drv.read_volts("AIN1-AIN3") == pytest.approx(-0.75, abs=1e-4)
    assert drv.read_volts("AIN0-AIN3") == pytest.approx(emu.volts(1, clock.now() - 0.5 / 860), abs=1e-3)
    assert drv.read_volts(3) == pytest.approx(0.5, abs=1e-4)
    cfg = emu.regs[0x01]
    assert (cfg >> 9) & 7 == 2 and (cfg >> 5) & 7 == 7 and cfg & 0x3 == 0x3
    with pytest.raises(ConfigError, match="data_rate_sps"):
        ADS1115(bus, 0x49, data_rate_sps=100)
    with pytest.raises(ConfigError, match="AIN"):
        drv.read_raw(4)


def test_ads1115_conversion_timeout_is_clear():
    clock, bus, emu, drv = adc_setup()
    emu.rate_error = -0.5  # twice as slow as the data rate says: still within the driver's budget
    assert drv.read_volts(3) == pytest.approx(0.5, abs=1e-3)
    emu.hang_conversions = True  # the chip never finishes
    t = clock.now()
    with pytest.raises(SensorTimeout, match=r"0x49.*AIN0 not ready"):
        drv.read_raw(0)
    assert clock.now() - t < 0.05 and drv.timeouts == 1


@pytest.mark.parametrize("rate_error", [0.0, -0.09, 0.08])
def test_ads1115_delivers_configured_per_channel_rate(rate_error):
    clock, bus, emu, drv = adc_setup(rate_error=rate_error, fsr_v=4.096, data_rate_sps=250)
    scan = MultiplexedScanner(drv, [0, 3], rate_hz=32.0)
    scan.run_until(10.0)
    for name in ("AIN0", "AIN3"):
        res = scan.results[name]
        assert len(res.times_s) in (320, 321), (name, len(res.times_s))
        periods = np.diff(res.times_s[::1])
        assert np.all(np.abs(periods - 1 / 32.0) < 0.002)  # a fixed schedule, no drift, no bunching
    assert scan.missed_scans == 0 and scan.failed == 0
    v0 = np.array(scan.results["AIN0"].volts)
    t0 = np.array(scan.results["AIN0"].times_s)
    assert np.max(np.abs(v0 - (1.0 + 0.5 * np.sin(2 * np.pi * 0.3 * t0)))) < 0.01
    assert np.allclose(scan.results["AIN3"].volts, 0.5, atol=2e-4)
    # the emulator converted only the selected inputs, alternating
    muxes = [m for _, m, _ in emu.conversions]
    assert muxes[:6] == [4, 7, 4, 7, 4, 7]
    with pytest.raises(ConfigError, match="raise data_rate_sps"):
        MultiplexedScanner(ADS1115(bus, 0x49, data_rate_sps=8), [0, 1], rate_hz=32.0)


def test_ads1115_continuous_mode_and_nacks():
    clock, bus, emu, drv = adc_setup(data_rate_sps=64)
    drv.start_continuous(2)
    clock.advance(0.1)
    assert drv.read_latest_volts() == pytest.approx(3.0, abs=1e-3)
    assert len(emu.conversions) == 6  # 0.1 s at 64 SPS
    emu.faults.nack_next(2)
    assert drv.read_latest_volts() == pytest.approx(3.0, abs=1e-3)
    assert drv.counters.bus_errors == 2
    drv.stop()
    with pytest.raises(SensorError, match="continuous"):
        drv.read_latest_volts()


def test_ads1115_scanner_survives_unplug_and_nack_bursts():
    clock, bus, emu, drv = adc_setup(data_rate_sps=475)
    scan = MultiplexedScanner(drv, [0, 3], rate_hz=20.0)
    scan.run_until(2.0)
    emu.faults.nack_next(3)  # within the retry budget: no NaN
    scan.run_until(3.0)
    assert scan.failed == 0 and drv.counters.bus_errors == 3
    emu.faults.unplugged = True
    scan.run_until(4.0)
    emu.faults.unplugged = False
    scan.run_until(6.0)
    v = np.array(scan.results["AIN3"].volts)
    t = np.array(scan.results["AIN3"].times_s)
    assert len(v) == 120 and scan.missed_scans == 0  # the schedule kept going through the outage
    outage = (t >= 3.0) & (t < 4.0)
    assert np.all(np.isnan(v[outage])) and np.allclose(v[t >= 4.1], 0.5, atol=1e-3)
    assert not np.any(np.isnan(v[t < 3.0]))
    assert scan.failed == 2 * outage.sum()
    assert drv.status()["reinits"] >= 1


def test_ads1115_one_input_scans_are_pipelined_one_wake_per_sample():
    """One input: scan k's conversion is started at its time and read at scan k + 1's, so the host sleeps once
    per sample (twice with the wait-for-each path). The values, times and the late-start rule are the same;
    a conversion started too late is read and dropped, never taken for the next scan's."""
    def run(channels, seconds=5.0):
        clock, bus, emu, drv = adc_setup(data_rate_sps=128)
        sleeps = []
        drv.sleep = lambda dt: (sleeps.append(dt), clock.sleep(dt))
        scan = MultiplexedScanner(drv, channels, rate_hz=32.0)
        scan.run_until(seconds)
        return clock, emu, drv, scan, sleeps

    clock, emu, drv, scan, sleeps = run([0])
    assert scan.pipelined and scan.missed_scans == 0 and scan.failed == 0
    res = scan.results["AIN0"]
    assert len(res.index) == 160 and res.index == list(range(160))  # the last one read by run_until's flush
    assert np.allclose(np.diff(res.times_s), 1 / 32.0, atol=1e-9)
    c = 1 / 128.0  # a delta-sigma result averages its conversion: the input half a conversion after the start
    want = [1.0 + 0.5 * math.sin(2 * math.pi * 0.3 * (t + c / 2)) for t in res.times_s]
    assert np.max(np.abs(np.array(res.volts) - want)) < 2e-4
    assert len(emu.conversions) == 160 and drv.timeouts == 0
    # every conversion was started on an idle chip: one finished per start, each before the next start
    assert np.all(np.diff([t for t, _, _ in emu.conversions]) > 1 / 32.0 - 1e-9)
    assert len(sleeps) <= 161
    _, _, _, scan2, sleeps2 = run([0, 3])
    assert not scan2.pipelined and len(sleeps2) >= 3 * 160  # per scan: the schedule + a wait per input
    assert len(scan2.results["AIN0"].index) == 160

    # a start delayed by more than a period (the thread preempted between the due time and the config write)
    clock, bus, emu, drv = adc_setup(data_rate_sps=128)
    scan = MultiplexedScanner(drv, [0], rate_hz=32.0)
    real_start = drv.start_conversion
    calls = []

    def start(channel):
        calls.append(1)
        if len(calls) == 20:
            clock.advance(1.2 / 32.0)
        return real_start(channel)

    drv.start_conversion = start
    scan.run_until(2.0)
    res = scan.results["AIN0"]
    assert scan.missed_scans >= 1 and 19 not in res.index and len(res.index) == 64 - scan.missed_scans
    want = [1.0 + 0.5 * math.sin(2 * math.pi * 0.3 * (t + c / 2)) for t in res.times_s]
    assert np.max(np.abs(np.array(res.volts) - want)) < 2e-4  # no result belongs to another conversion
    assert len(emu.conversions) == len(calls)  # no start met a busy chip (it would be ignored: OS write)

    # unplugged, and back: NaN for the outage, counted in failed, then values again on the same schedule
    clock, bus, emu, drv = adc_setup(data_rate_sps=128)
    scan = MultiplexedScanner(drv, [0], rate_hz=32.0)
    scan.run_until(1.0)
    emu.faults.unplugged = True
    scan.run_until(2.0)
    emu.faults.unplugged = False
    scan.run_until(3.0)
    res = scan.results["AIN0"]
    v, t = np.array(res.volts), np.array(res.times_s)
    assert res.index == list(range(96)) and scan.missed_scans == 0
    bad = np.isnan(v)
    assert scan.failed == bad.sum() and 28 <= bad.sum() <= 34 and not bad[t < 0.95].any() and not bad[t > 2.1].any()
    assert drv.status()["reinits"] >= 1


# --------------------------------------------------------------------------------------------- GSR
def test_gsr_front_end():
    fe = GsrFrontEnd(calibration_v=1.65, supply_v=3.3)
    for g in (0.5, 2.0, 10.0, 40.0):
        eda, bad = fe.to_microsiemens(fe.volts_for(g))
        assert not bad[0] and eda[0] == pytest.approx(g, rel=1e-9)
    eda, bad = fe.to_microsiemens([1.65, 1.7, 3.3, -0.1, float("nan"), 1.0])
    assert list(bad) == [True, True, True, True, True, False]
    assert np.all(np.isnan(eda[:5])) and eda[5] > 0
    assert not np.any(eda[np.isfinite(eda)] < 0)
    # the per-sample form (the ADS1115 source) gives the same numbers, NaN where invalid
    v = np.r_[np.linspace(-0.2, 3.5, 997), np.nan, np.inf, 1.65]
    ref, bad = fe.to_microsiemens(v)
    one = np.array([fe.microsiemens_of(float(x)) for x in v])
    assert np.array_equal(np.isnan(one), bad) and np.array_equal(one[~bad], ref[~bad])
    with pytest.raises(ConfigError, match="calibration_v"):
        GsrFrontEnd(calibration_v=0.0)
    with pytest.raises(ConfigError, match="calibration_v"):
        GsrFrontEnd(calibration_v=4.0, supply_v=3.3)


def test_emulator_datasheet_facts_ads1115_and_tca9548a():
    clock = SimClock()
    bus = FakeSMBus()
    adc = bus.attach(ADS1115Emulator({0: lambda t: 1.0}, clock=clock))
    tca = bus.attach(TCA9548AEmulator(address=0x77, clock=clock))
    assert bus.read_i2c_block_data(0x48, 0x01, 2) == [0x85, 0x83]  # power-on config
    assert bus.read_i2c_block_data(0x48, 0x02, 2) == [0x80, 0x00]
    assert bus.read_i2c_block_data(0x48, 0x03, 2) == [0x7F, 0xFF]
    # single shot AIN0, ±4.096 V, 8 SPS: OS reads 0 for 125 ms, then 1
    bus.write_i2c_block_data(0x48, 0x01, [0xC3, 0x03])
    assert bus.read_i2c_block_data(0x48, 0x01, 2)[0] & 0x80 == 0
    clock.advance(0.124)
    assert bus.read_i2c_block_data(0x48, 0x01, 2)[0] & 0x80 == 0
    clock.advance(0.002)
    assert bus.read_i2c_block_data(0x48, 0x01, 2)[0] & 0x80
    assert bus.read_i2c_block_data(0x48, 0x00, 2) == [0x1F, 0x40]  # 1.0 V / 4.096 V * 32768 = 8000
    # the SMBus word call returns the bytes swapped (low byte first on SMBus): 0x401F
    assert bus.read_word_data(0x48, 0x00) == 0x401F
    assert len(adc.conversions) == 1
    assert bus.read_byte(0x77) == 0x00  # all channels off at power-on
    bus.write_byte(0x77, 0b1010_0001)
    assert bus.read_byte(0x77) == 0xA1 and tca.control == 0xA1

