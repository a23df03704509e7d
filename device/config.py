"""The unit configuration (``/etc/dyadsync/unit.toml``), validated by a strict pydantic schema.

Every section forbids unknown keys, so a misspelt key is reported instead of silently ignored, and values
are strict: ``publish_raw = "yes"`` or ``keepalive_s = "30"`` is an error, not a guess (TOML has real
booleans and numbers; an integer is still accepted where a float is expected). A bad file
raises :class:`ConfigError` whose message names the file, the dotted key (and its line when it can be
found), what was expected and what was found. ``examples/unit.toml`` is the annotated reference.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core import configtext
from core.errors import ConfigError
from core.vocab import ID_PATTERN

DEFAULT_PATH = Path("/etc/dyadsync/unit.toml")

ROLE = Literal["therapist", "client"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, strict=True)


FilePath = Annotated[Path, Field(strict=False)]
"""A path: TOML gives a string, strict mode alone would want a ``Path`` object."""


class BrokerConfig(_Strict):
    """Where and how to reach the room's Mosquitto."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str
    password: str | None = None
    password_file: FilePath | None = None
    tls_ca: FilePath | None = None
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    reconnect_min_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    max_inflight: Annotated[int, Field(ge=1, le=1000)] = 50

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("expected 'mqtt://host:port' or 'mqtts://host:port'")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise ValueError(f"bad port in {v!r}: {exc}") from None
        return v

    @model_validator(mode="after")
    def _password(self) -> BrokerConfig:
        if (self.password is None) == (self.password_file is None):
            raise ValueError("give exactly one of 'password' or 'password_file'")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def resolve_password(self) -> str:
        if self.password is not None:
            return self.password
        assert self.password_file is not None
        try:
            return self.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"broker.password_file {self.password_file}: cannot read: {exc}") from exc


class GsrCalibration(_Strict):
    """Grove-GSR style front end (``firmware_bridge.gsr.GsrFrontEnd``): ``calibration_v`` is the ADC
    reading in volts with the electrodes open; ``r_ref_ohm`` the divider's reference resistance."""

    calibration_v: Annotated[float, Field(gt=0, le=10)]
    supply_v: Annotated[float, Field(gt=0, le=10)] = 3.3
    r_ref_ohm: Annotated[float, Field(gt=0)] = 10_000.0

    @model_validator(mode="after")
    def _range(self) -> GsrCalibration:
        if self.calibration_v > self.supply_v:
            raise ValueError("calibration_v must not exceed supply_v")
        return self


class SensorConfig(_Strict):
    """One sensor: what it is, where it is, whose signal it measures."""

    name: Annotated[str, Field(pattern=ID_PATTERN)]
    kind: Literal["ads1115", "max30102", "serial", "synthetic"]
    role: ROLE | None = None  # None only for 'serial' (the firmware names its channels' roles)
    signal: Literal["eda", "ppg"] | None = None
    rate_hz: Annotated[float, Field(gt=0, le=1000)] | None = None
    # I2C (ads1115, max30102)
    i2c_bus: Annotated[int, Field(ge=0, le=255)] = 1
    address: Annotated[int, Field(ge=0x03, le=0x77)] | None = None
    mux_address: Annotated[int, Field(ge=0x70, le=0x77)] | None = None
    mux_channel: Annotated[int, Field(ge=0, le=7)] | None = None
    ads_channel: Annotated[int, Field(ge=0, le=3)] = 0
    gsr: GsrCalibration | None = None  # required for ads1115
    fsr_v: Literal[6.144, 4.096, 2.048, 1.024, 0.512, 0.256] = 4.096  # ADS1115 PGA full-scale range
    led_current_ma: Annotated[float, Field(ge=0, le=51)] = 7.0
    # serial firmware
    url: str | None = None
    baudrate: Annotated[int, Field(ge=1200, le=4_000_000)] = 115200
    # synthetic (built-in signal generator, for demos and benches without hardware)
    seed: int = 0
    block_s: Annotated[float, Field(gt=0, le=10)] = 0.1

    @model_validator(mode="after")
    def _kind_fields(self) -> SensorConfig:
        if self.kind == "serial":
            if not self.url:
                raise ValueError("a 'serial' sensor needs 'url' (e.g. '/dev/ttyACM0' or 'loop://')")
        else:
            if self.role is None:
                raise ValueError(f"a '{self.kind}' sensor needs 'role' ('therapist' or 'client')")
            expected = {"ads1115": "eda", "max30102": "ppg"}.get(self.kind)
            sig = self.signal or expected
            if sig is None:
                raise ValueError("a 'synthetic' sensor needs 'signal' ('eda' or 'ppg')")
            if expected and self.signal and self.signal != expected:
                raise ValueError(f"a '{self.kind}' sensor measures '{expected}', not '{self.signal}'")
            object.__setattr__(self, "signal", sig)
        if self.kind == "ads1115" and self.gsr is None:
            raise ValueError("an 'ads1115' sensor needs its GSR calibration: gsr = { calibration_v = ... }")
        if (self.mux_address is None) != (self.mux_channel is None):
            raise ValueError("'mux_address' and 'mux_channel' go together")
        if self.rate_hz is None:
            object.__setattr__(self, "rate_hz", {"eda": 32.0, "ppg": 100.0}.get(self.signal or "", 100.0))
        return self

    @property
    def stream(self) -> str | None:
        return f"{self.role}/{self.signal}" if self.role and self.signal else None


class DspConfig(_Strict):
    """Feature extraction and windowed synchrony (ARCHITECTURE §4 defaults)."""

    win_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    inc_s: Annotated[float, Field(gt=0, le=600)] = 1.0
    lag_s: Annotated[float, Field(ge=0, le=120)] = 10.0
    peak_window: Annotated[int, Field(ge=3, le=41)] = 5
    channels: list[Literal["eda", "hr"]] = ["eda", "hr"]
    regulation_epoch_s: Annotated[float, Field(ge=5, le=600)] = 30.0
    # the heart-rate feature stream of dsp_ext: 'live' (causal, no look-ahead, a constant 1 s delay: metrics
    # within ~100 ms of their window) or 'corrected' (Lipponen-Tarvainen corrected beats, final ~3 s late)
    hr_grid: Literal["live", "corrected"] = "live"
    publish_raw: bool = True
    raw_block_s: Annotated[float, Field(gt=0, le=10)] = 1.0
    feature_block_s: Annotated[float, Field(gt=0, le=10)] = 1.0


class DyadConfig(_Strict):
    """Two-unit rooms: the unit that computes synchrony subscribes to its partner's feature stream."""

    partner: Annotated[str, Field(pattern=ID_PATTERN)] | None = None
    compute: bool = True  # compute synchrony here (set false on the partner that only measures)


class LedConfig(_Strict):
    backend: Literal["sysfs", "gpiod", "none"] = "none"
    sysfs_root: FilePath = Path("/sys/class/leds")
    name: str = "dyadsync:status"
    gpio_chip: str = "/dev/gpiochip0"
    gpio_line: Annotated[int, Field(ge=0, le=1023)] = 17
    active_low: bool = False


class OutboxConfig(_Strict):
    quota_mb: Annotated[float, Field(gt=0, le=1_000_000)] = 512.0
    synchronous: Literal["full", "normal"] = "full"
    #: seconds an acknowledged data message stays as the resend tail (sent again after each reconnect);
    #: keep it above the hub's Mosquitto ``autosave_interval`` (5 s by default); 0 turns the tail off
    keep_acked_s: Annotated[float, Field(ge=0, le=3600)] = 30.0


class ClockConfig(_Strict):
    """Host clock discipline check (chrony); ``command`` is run and its output parsed."""

    check: Literal["chronyc", "assume_synced", "assume_unsynced"] = "chronyc"
    command: list[str] = ["chronyc", "-n", "tracking"]
    interval_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    max_offset_ms: Annotated[float, Field(gt=0)] = 10.0
    flag_unknown: bool = False  # mark blocks CLOCK_UNSYNCED also when the state is unknown


class HardwareConfig(_Strict):
    """Hardware seams. ``mode='real'`` uses smbus2 buses and serial ports; ``mode='emulated'`` asks
    ``factory`` (``"module:function"``, e.g. from ``hil``) for bus objects and serial URLs."""

    mode: Literal["real", "emulated"] = "real"
    factory: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")] | None = None
    speed: Annotated[float, Field(gt=0, le=10_000)] = 1.0  # simulated-time factor (1 = real time)
    sim_epoch_ns: Annotated[int, Field(ge=0)] | None = None  # shared anchor of simulated time (HIL, two units)

    @model_validator(mode="after")
    def _factory(self) -> HardwareConfig:
        if self.mode == "emulated" and not self.factory:
            raise ValueError("mode 'emulated' needs 'factory' = 'module:function'")
        return self


class WatchdogConfig(_Strict):
    status_interval_s: Annotated[float, Field(gt=0, le=3600)] = 30.0
    stall_s: Annotated[float, Field(gt=0, le=3600)] = 20.0  # a worker silent this long stops the watchdog pings


class UnitConfig(_Strict):
    room: Annotated[str, Field(pattern=ID_PATTERN)]
    unit: Annotated[str, Field(pattern=ID_PATTERN)]
    data_dir: FilePath = Path("/var/lib/dyadsync")
    broker: BrokerConfig
    sensors: list[SensorConfig] = []
    dsp: DspConfig = DspConfig()
    dyad: DyadConfig = DyadConfig()
    leds: LedConfig = LedConfig()
    outbox: OutboxConfig = OutboxConfig()
    clock: ClockConfig = ClockConfig()
    hardware: HardwareConfig = HardwareConfig()
    watchdog: WatchdogConfig = WatchdogConfig()

    @model_validator(mode="after")
    def _consistent(self) -> UnitConfig:
        if self.unit == "cmd":
            raise ValueError("unit id 'cmd' is reserved")
        names = [s.name for s in self.sensors]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"sensor names must be unique, repeated: {dup}")
        streams = [s.stream for s in self.sensors if s.stream]
        dup = sorted({n for n in streams if streams.count(n) > 1})
        if dup:
            raise ValueError(f"two sensors measure the same stream {dup}")
        if self.dyad.partner == self.unit:
            raise ValueError("dyad.partner is this unit itself")
        return self

    @property
    def db_path(self) -> Path:
        return self.data_dir / f"unit-{self.unit}.sqlite"


# ------------------------------------------------------------------------------------------- loading
def format_errors(path: str, text: str, exc: ValidationError) -> str:
    """The validation errors of ``text`` (read from ``path``), one line each with file, line and key."""
    return configtext.format_errors(path, text, exc.errors(), "unit config")


def parse_config(text: str, path: str = "<string>") -> UnitConfig:
    """Parse and validate TOML ``text``; ``path`` names the file in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return UnitConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(path, text, exc)) from None


def load_config(path: Path | str = DEFAULT_PATH) -> UnitConfig:
    """Read and validate a unit config file; raise :class:`ConfigError` naming the file and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read unit config: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    return parse_config(text, str(path))
