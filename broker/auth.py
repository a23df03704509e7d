"""Room accounts and topic permissions (ARCHITECTURE §7), shared by the Mosquitto and embedded brokers.

Usernames: a unit logs in with its unit id; hub services log in as ``svc-<name>`` (``svc-recorder``
reads the whole room, ``svc-console`` sends commands and reads acks, statuses, metrics and features). A unit may write only under its own
``dyadsync/v1/<room>/<unit>/``, and read only the room's ``cmd`` and, when configured, its partner's
``feat`` stream.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass, field

from core.errors import ConfigError

from . import wire

SERVICES = ("recorder", "console", "bridge")


@dataclass(frozen=True)
class Grant:
    """One permission: ``access`` is ``read``, ``write`` or ``readwrite`` on an MQTT topic filter."""

    access: str
    topic: str


@dataclass
class RoomAuth:
    """The accounts of one room: unit passwords, partner links and hub service passwords."""

    room: str
    units: dict[str, str] = field(default_factory=dict)  # unit id -> password
    partners: dict[str, str] = field(default_factory=dict)  # unit id -> partner unit id
    services: dict[str, str] = field(default_factory=dict)  # service name -> password

    @classmethod
    def generate(cls, room: str, units: list[str], partners: dict[str, str] | None = None) -> RoomAuth:
        """Fresh random passwords for every unit and hub service of ``room``."""
        wire.room_prefix(room)
        auth = cls(room=room, partners=dict(partners or {}))
        for unit in units:
            wire.unit_prefix(room, unit)
            if unit.startswith("svc-"):
                raise ConfigError(f"unit id {unit!r} may not start with 'svc-' (reserved for hub services)")
            auth.units[unit] = secrets.token_urlsafe(18)
        for unit, partner in auth.partners.items():
            if unit not in auth.units or partner not in auth.units:
                raise ConfigError(f"partner link {unit!r} -> {partner!r} names a unit that is not in the room")
        for svc in SERVICES:
            auth.services[svc] = secrets.token_urlsafe(18)
        return auth

    def service_user(self, name: str) -> tuple[str, str]:
        return f"svc-{name}", self.services[name]

    def users(self) -> dict[str, str]:
        """username -> password for every account."""
        out = dict(self.units)
        out.update({f"svc-{k}": v for k, v in self.services.items()})
        return out

    def grants(self) -> dict[str, list[Grant]]:
        """username -> permissions."""
        room = wire.room_prefix(self.room)
        out: dict[str, list[Grant]] = {}
        for unit in self.units:
            g = [Grant("write", f"{room}/{unit}/#"), Grant("read", f"{room}/cmd")]
            partner = self.partners.get(unit)
            if partner:
                g.append(Grant("read", f"{room}/{partner}/feat/#"))
            out[unit] = g
        if "recorder" in self.services:
            out["svc-recorder"] = [Grant("read", f"{room}/#")]
        if "console" in self.services:
            # The room console (CLI and live page): sends commands, reads the units' answers, statuses,
            # metrics and 4 Hz features of its own room. No raw signals, no other room, no unit topic writes.
            out["svc-console"] = [
                Grant("write", f"{room}/cmd"),
                Grant("read", f"{room}/+/ack"),
                Grant("read", f"{room}/+/status"),
                Grant("read", f"{room}/+/metric/#"),
                Grant("read", f"{room}/+/feat/#"),
            ]
        if "bridge" in self.services:
            # The local side of a Mosquitto bridge to a lab broker: it forwards the whole room out and may
            # bring room commands in.
            out["svc-bridge"] = [Grant("read", f"{room}/#"), Grant("write", f"{room}/cmd")]
        return out

    def to_json(self) -> dict:
        return {"room": self.room, "units": dict(self.units), "partners": dict(self.partners),
                "services": dict(self.services)}

    @classmethod
    def from_json(cls, obj: dict) -> RoomAuth:
        try:
            return cls(room=obj["room"], units=dict(obj["units"]), partners=dict(obj.get("partners", {})),
                       services=dict(obj["services"]))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"room credentials file is damaged: missing or wrong {exc}") from None

    def updated(self, units: list[str], partners: dict[str, str]) -> RoomAuth:
        """The same room with ``units``/``partners``: existing passwords are kept, new units get fresh ones."""
        fresh = RoomAuth.generate(self.room, units, partners)
        for unit in units:
            if unit in self.units:
                fresh.units[unit] = self.units[unit]
        for svc in fresh.services:
            if svc in self.services:
                fresh.services[svc] = self.services[svc]
        return fresh


@dataclass
class LabAuth:
    """Accounts of a lab broker that room hubs bridge into: one bridge account per room, one recorder."""

    rooms: dict[str, str] = field(default_factory=dict)  # room -> password of user bridge-<room>
    recorder_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))

    @classmethod
    def generate(cls, rooms: list[str]) -> LabAuth:
        for room in rooms:
            wire.room_prefix(room)
        return cls(rooms={room: secrets.token_urlsafe(18) for room in rooms})

    def bridge_user(self, room: str) -> tuple[str, str]:
        return f"bridge-{room}", self.rooms[room]

    def users(self) -> dict[str, str]:
        out = {f"bridge-{r}": pw for r, pw in self.rooms.items()}
        out["svc-recorder"] = self.recorder_password
        return out

    def grants(self) -> dict[str, list[Grant]]:
        out = {f"bridge-{r}": [Grant("readwrite", f"{wire.room_prefix(r)}/#")] for r in self.rooms}
        out["svc-recorder"] = [Grant("read", f"{wire.PREFIX}/{wire.VERSION}/#")]
        return out


def mosquitto_hash(password: str, *, iterations: int = 101, salt: bytes | None = None) -> str:
    """A Mosquitto 2.0 password-file hash (``$7$``: PBKDF2-HMAC-SHA512, as ``mosquitto_passwd`` writes)."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mosquitto_password_file(users: dict[str, str]) -> str:
    return "".join(f"{user}:{mosquitto_hash(pw)}\n" for user, pw in sorted(users.items()))


def mosquitto_acl(grants: dict[str, list[Grant]]) -> str:
    lines = ["# dyadsync ACL: generated, do not edit by hand (dyadsync hub init regenerates it)"]
    for user, gs in sorted(grants.items()):
        lines.append(f"\nuser {user}")
        lines.extend(f"topic {g.access} {g.topic}" for g in gs)
    return "\n".join(lines) + "\n"
