"""A hardware provider built from the ``hil`` register-level emulators: one FakeSMBus with a TCA9548A,
an ADS1115 (GSR front end) and a MAX30102 per participant, and optionally the firmware emulator on a pty.
Emulated chips run on the unit's (possibly simulated) clock, measured from the provider's creation."""

from __future__ import annotations

import math
import tempfile

from firmware_bridge.gsr import GsrFrontEnd
from hil.emulators.ads1115 import ADS1115Emulator
from hil.emulators.i2c import FakeSMBus
from hil.emulators.max30102 import MAX30102Emulator
from hil.emulators.tca9548a import TCA9548AEmulator

GSR = GsrFrontEnd(calibration_v=2.9)
LAG_S = {"therapist": 0.0, "client": 2.0}  # the client follows 2 s later
CHANNELS = {"therapist": (0, 1), "client": (2, 3)}  # mux channels of (ADS1115, MAX30102)
PROVIDERS: list[EmuHardware] = []


def eda_us(role: str, t_s: float) -> float:
    t = t_s - LAG_S[role]
    return 5.0 + 0.4 * math.sin(2 * math.pi * t / 23.0) + 0.2 * math.sin(2 * math.pi * t / 7.3)


def ppg_counts(role: str, t_s: float) -> float:
    """A 72 bpm pulse (18-bit counts)."""
    phase = (t_s * 1.2) % 1.0
    return 100_000.0 + 8_000.0 * math.exp(-((phase - 0.3) ** 2) / 0.01)


class EmuHardware:
    def __init__(self, cfg, clock) -> None:
        self.origin_ns = clock.now_ns()
        now = self.now = lambda: (clock.now_ns() - self.origin_ns) / 1e9
        self.bus = FakeSMBus(1)
        self.mux = self.bus.attach(TCA9548AEmulator(address=0x70, clock=now))
        self.chips: dict[str, object] = {}
        for role, (ch_eda, ch_ppg) in CHANNELS.items():
            self.chips[f"{role}/eda"] = self.mux.attach(
                ch_eda, ADS1115Emulator({0: lambda t, r=role: GSR.volts_for(eda_us(r, t))}, clock=now))
            self.chips[f"{role}/ppg"] = self.mux.attach(
                ch_ppg, MAX30102Emulator(red=lambda t, r=role: 0.8 * ppg_counts(r, t),
                                         ir=lambda t, r=role: ppg_counts(r, t), clock=now))
        self.port_dir = tempfile.mkdtemp(prefix="emu-fw-")
        self.firmware = None
        PROVIDERS.append(self)

    def i2c_bus(self, number: int):
        if number != 1:
            raise OSError(f"no emulated I2C bus {number}")
        return self.bus

    def serial_url(self, sensor) -> str:
        return sensor.url

    def source(self, sensor, clock):
        return None


def make(cfg, clock) -> EmuHardware:
    return EmuHardware(cfg, clock)


SENSORS = "".join(
    f'[[sensors]]\nname = "{role[0]}-eda"\nkind = "ads1115"\nrole = "{role}"\naddress = 0x48\n'
    f'mux_address = 0x70\nmux_channel = {CHANNELS[role][0]}\ngsr = {{ calibration_v = 2.9 }}\n'
    f'[[sensors]]\nname = "{role[0]}-ppg"\nkind = "max30102"\nrole = "{role}"\naddress = 0x57\n'
    f'mux_address = 0x70\nmux_channel = {CHANNELS[role][1]}\n'
    for role in ("therapist", "client")
)


class EmuFirmwareHardware(EmuHardware):
    """Therapist on I2C emulators, client on the emulated firmware (pty) opened by its URL."""

    def serial_url(self, sensor) -> str:
        from hil.emulators.firmware import EmulatedChannel, FirmwareEmulator

        if self.firmware is None:
            chans = [
                EmulatedChannel(0, "client", "eda", 32.0, "uS", lambda t: eda_us("client", t), scale=1e-4),
                EmulatedChannel(1, "client", "ppg", 100.0, "counts", lambda t: ppg_counts("client", t)),
            ]
            self.firmware = FirmwareEmulator(chans, self.port_dir, speed=1.0).start()
        return self.firmware.path


def make_fw(cfg, clock) -> EmuFirmwareHardware:
    return EmuFirmwareHardware(cfg, clock)


SENSORS_FW = SENSORS.split("[[sensors]]\nname = \"c-eda\"")[0] + (
    '[[sensors]]\nname = "c-fw"\nkind = "serial"\nurl = "emulated"\nbaudrate = 921600\n'
)
