"""Test helpers: connected paho clients and a realistic recorded session."""

from __future__ import annotations

import threading
import time

import numpy as np
import paho.mqtt.client as mqtt

from broker import wire
from broker.mqtt import client_id, make_client
from firmware_bridge.block import SampleBlock

T0_NS = 1_790_000_000_000_000_000


def client(host: str, port: int, user: str, pw: str, protocol=mqtt.MQTTv311) -> mqtt.Client:
    done = threading.Event()
    c = make_client(client_id("t"), username=user, password=pw, protocol=protocol, on_connect=lambda *a: done.set())
    c.connect(host, port)
    c.loop_start()
    assert done.wait(10), "no CONNACK"
    return c


def close(*clients: mqtt.Client) -> None:
    for c in clients:
        c.disconnect()
        c.loop_stop()


def wait(pred, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def publish_all(c: mqtt.Client, msgs: list[tuple[str, bytes]]) -> None:
    infos = [c.publish(t, p, qos=1) for t, p in msgs]
    for i in infos:
        i.wait_for_publish(10)


def make_blocks(stream: str, rate_hz: float, n_blocks: int, per_block: int, seed: int = 0,
                t0_ns: int = T0_NS) -> list[SampleBlock]:
    rng = np.random.default_rng(seed)
    out = []
    for seq in range(n_blocks):
        values = (rng.standard_normal(per_block) * 3 + 5).astype(np.float32)
        out.append(SampleBlock(stream, seq, t0_ns + int(round(seq * per_block * 1e9 / rate_hz)), rate_hz, values,
                               flags=1 if seq == 2 else 0))
    return out


def start_cmd(session: str, therapist: str = "T01", client_code: str = "C07", t_ns: int = T0_NS) -> wire.Command:
    return wire.Command(id=f"{session}-start", cmd="start", session=session, time_ns=t_ns,
                        participants={"therapist": therapist, "client": client_code})


def ack(unit: str, cid: str, ok: bool = True, error: str | None = None, time_ns: int | None = None,
        room: str = "room-a") -> tuple[str, bytes]:
    """A unit's answer to command ``cid`` as (topic, payload): the hub records a command only once a unit
    accepted it."""
    a = wire.Ack(id=cid, unit=unit, ok=ok, time_ns=time.time_ns() if time_ns is None else time_ns, error=error)
    return wire.ack_topic(room, unit), a.encode()
