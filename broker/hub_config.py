"""The hub configuration (TOML, validated with pydantic). See ``docs/hub.md`` for an annotated example.

Every error names the file, the line and the key, like the unit's config
(``hub.toml:14: key 'bridge.port': Input should be less than or equal to 65535 (found 70000)``). Unknown
keys are errors and values are strict: ``require_certificate = "yes"`` is refused, not read as true.
"""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core import configtext
from core.errors import ConfigError

from . import wire


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


FilePath = Annotated[Path, Field(strict=False)]
"""A path: TOML gives a string, strict mode alone would want a ``Path`` object."""


class ListenerConfig(_Strict):
    host: str = "127.0.0.1"
    """Address to bind: ``127.0.0.1`` (loopback only), a LAN address, or ``0.0.0.0`` (all interfaces)."""
    port: int = Field(1883, ge=1, le=65535)
    advertise_host: str | None = None
    """The name or address units use to reach the hub (written into the unit credential files)."""


class TLSConfig(_Strict):
    host: str = "0.0.0.0"
    port: int = Field(8883, ge=1, le=65535)
    hostnames: list[str] = Field(default_factory=lambda: ["localhost"])
    ip_addresses: list[str] = Field(default_factory=lambda: ["127.0.0.1"])
    require_certificate: bool = False
    """When true, a client must also present a certificate signed by the room CA (units get one each)."""
    days: int = Field(825, ge=1, le=3650)

    @field_validator("ip_addresses")
    @classmethod
    def _ips(cls, v: list[str]) -> list[str]:
        for ip in v:
            ipaddress.ip_address(ip)
        return v


class BridgeConfig(_Strict):
    """An outgoing bridge from this room broker to a lab broker (QoS 1, persistent on both sides)."""

    name: str = "lab"
    address: str
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password_file: FilePath | None = None
    """File holding the lab broker password for ``username`` (kept out of the hub TOML)."""
    cafile: FilePath | None = None
    """CA file to verify the lab broker (turns TLS on for the bridge)."""
    direction: Literal["out", "both"] = "out"
    restart_timeout_s: int = Field(5, ge=1, le=3600)
    keepalive_s: int = Field(30, ge=5, le=3600)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not wire.ID_RE.fullmatch(v):
            raise ValueError(f"must match {wire.ID_RE.pattern}")
        return v


class ChronyConfig(_Strict):
    allow: list[str] = Field(default_factory=lambda: ["192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12"])
    """Networks whose units may take time from the hub."""
    local_stratum: int = Field(8, ge=1, le=15)
    """Serve time at this stratum even without an upstream (a room without internet still agrees)."""
    upstream: list[str] = Field(default_factory=lambda: ["pool 2.debian.pool.ntp.org iburst"])

    @field_validator("allow")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        for net in v:
            ipaddress.ip_network(net, strict=False)
        return v


class RecorderConfig(_Strict):
    db: FilePath = Path("hub.sqlite")
    batch_size: int = Field(1000, ge=1, le=100000)
    batch_interval_s: float = Field(0.02, gt=0, le=5)


class APIConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    token_file: FilePath = Path("api/token")


class HubConfig(_Strict):
    room: str
    units: list[str] = Field(min_length=1)
    partners: dict[str, str] = Field(default_factory=dict)
    out_dir: FilePath = Path(".")
    """Where init writes everything; relative paths below are taken relative to it."""
    autosave_interval_s: int = Field(5, ge=1, le=3600)
    mosquitto_user: str = "mosquitto"
    """The user Mosquitto drops to when started as root; generated directories are chowned to it."""
    listener: ListenerConfig = ListenerConfig()
    tls: TLSConfig | None = None
    bridge: BridgeConfig | None = None
    chrony: ChronyConfig = ChronyConfig()
    recorder: RecorderConfig = RecorderConfig()
    api: APIConfig = APIConfig()

    @field_validator("room")
    @classmethod
    def _room(cls, v: str) -> str:
        if not wire.ID_RE.fullmatch(v):
            raise ValueError(f"must match {wire.ID_RE.pattern}")
        return v

    @field_validator("units")
    @classmethod
    def _units(cls, v: list[str]) -> list[str]:
        for u in v:
            if not wire.ID_RE.fullmatch(u) or u == "cmd" or u.startswith("svc-"):
                raise ValueError(f"unit id {u!r} must match {wire.ID_RE.pattern}, not be 'cmd' nor start with 'svc-'")
        dup = sorted({u for u in v if v.count(u) > 1})
        if dup:
            raise ValueError(f"unit ids must be unique; listed more than once: {', '.join(dup)}")
        return v

    @model_validator(mode="after")
    def _partners(self) -> HubConfig:
        for unit, partner in self.partners.items():
            if unit not in self.units or partner not in self.units:
                raise ValueError(f"partners: {unit!r} -> {partner!r} names a unit not listed in 'units'")
        return self

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else (self.out_dir / p)


def parse_hub_config(data: dict, source: str = "hub config", base_dir: Path | None = None,
                     text: str = "") -> HubConfig:
    """Validate a dict (e.g. parsed TOML); relative ``out_dir`` is resolved against ``base_dir``. ``text``,
    the TOML the dict came from, lets errors carry line numbers (``source:line: key '...': ...``)."""
    try:
        cfg = HubConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(configtext.format_errors(source, text, exc.errors(), "hub config")) from None
    if base_dir is not None and not cfg.out_dir.is_absolute():
        cfg = cfg.model_copy(update={"out_dir": (base_dir / cfg.out_dir).resolve()})
    return cfg


def load_hub_config(path: Path | str) -> HubConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read hub config {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_hub_config(data, str(path), base_dir=path.parent.resolve(), text=text)
