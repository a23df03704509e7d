"""The hub recorder: subscribes to a room, decodes with the wire contract, stores in SQLite.

Durability: the MQTT session is persistent (clean_session false, fixed client id) and acknowledgements
are manual: a QoS 1 message is PUBACKed only after the transaction holding it has committed, so a
recorder crash never loses a message the broker thinks was delivered. Storage is idempotent, so the
redelivery that follows a crash changes nothing. Malformed messages are logged (cut short), counted and
kept in ``rejects``; nothing a client sends can stop the recorder.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from firmware_bridge.errors import BrokerError, WireError

from . import store, wire

logger = logging.getLogger(__name__)


@dataclass
class _Item:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_ns: int


class Recorder:
    """Record one room into a SQLite file. ``start()`` connects and returns; ``stop()`` flushes and joins."""

    def __init__(
        self,
        db_path: Path | str,
        room: str,
        host: str,
        port: int,
        username: str,
        password: str,
        *,
        client_id: str | None = None,
        batch_size: int = 500,
        batch_interval_s: float = 0.05,
        tls_ca: str | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.room = room
        self.host, self.port = host, port
        self.batch_size = batch_size
        self.batch_interval_s = batch_interval_s
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._writer: threading.Thread | None = None
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"dyadsync-recorder-{room}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self._client.username_pw_set(username, password)
        if tls_ca:
            self._client.tls_set(ca_certs=tls_ca)
        self._client.manual_ack_set(True)
        self._client.reconnect_delay_set(0.2, 5)
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # ---------------------------------------------------------------------------------- network thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.error("recorder: broker refused connection: %s", reason_code)
            self._bump("connect_refused")
            return
        client.subscribe(f"{wire.room_prefix(self.room)}/#", qos=1)
        self._connected.set()
        logger.info("recorder connected to %s:%d, room %s", self.host, self.port, self.room)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            logger.warning("recorder disconnected (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        try:
            self._queue.put(_Item(msg.topic, bytes(msg.payload), msg.mid, msg.qos, time.time_ns()))
        except Exception:  # never raise in the network thread
            logger.exception("recorder: could not queue a message")

    def _bump(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    # ------------------------------------------------------------------------------------ writer thread
    def _write_loop(self) -> None:
        con = store.connect(self.db_path)
        try:
            while not (self._stop.is_set() and self._queue.empty()):
                batch = self._take_batch()
                if batch:
                    self._store_batch(con, batch)
        finally:
            con.close()

    def _take_batch(self) -> list[_Item]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.batch_interval_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _store_batch(self, con, batch: list[_Item]) -> None:
        counts: Counter[str] = Counter()
        with con:
            for item in batch:
                try:
                    kind = self._store_one(con, item)
                    counts[kind] += 1
                except WireError as exc:
                    counts["malformed"] += 1
                    logger.warning("recorder: dropped malformed message on %s: %s", item.topic[:200], str(exc)[:300])
                    store.insert_reject(con, item.topic, str(exc), item.payload, item.received_ns)
            store.add_counters(con, counts)
        # Acknowledge only what has been committed.
        for item in batch:
            if item.qos > 0:
                try:
                    self._client.ack(item.mid, item.qos)
                except Exception:  # a lost ack means a redelivery, which dedup absorbs
                    logger.debug("recorder: ack of mid %d failed", item.mid)
        with self._lock:
            self.counts.update(counts)

    def _store_one(self, con, item: _Item) -> str:
        t = wire.parse_topic(item.topic)
        if t.room != self.room:
            raise WireError(f"message for room {t.room!r} on a recorder of room {self.room!r}")
        if t.kind in ("raw", "feat"):
            block, session = wire.decode_block(item.payload)
            if block.stream != t.stream:
                raise WireError(f"block stream {block.stream!r} does not match topic stream {t.stream!r}")
            if not session:
                raise WireError("data block carries no session id")
            new = store.insert_block(con, t.unit, t.kind, block, session, item.received_ns)
            return f"stored_{t.kind}" if new else "duplicate"
        if t.kind == "metric":
            m = wire.Metric.decode(item.payload)
            if m.name != t.name:
                raise WireError(f"metric name {m.name!r} does not match topic name {t.name!r}")
            return "stored_metric" if store.insert_metric(con, t.unit, m, item.received_ns) else "duplicate"
        if t.kind == "cmd":
            c = wire.Command.decode(item.payload)
            return "stored_cmd" if store.insert_command(con, self.room, c, item.payload, item.received_ns) else "duplicate"
        if t.kind == "status":
            if not item.payload:  # a cleared retained status
                return "status_cleared"
            s = wire.Status.decode(item.payload)
            if s.unit != t.unit:
                raise WireError(f"status of unit {s.unit!r} published under unit {t.unit!r}")
            return "stored_status" if store.insert_status(con, t.unit, s, item.payload, item.received_ns) else "duplicate"
        if t.kind == "ack":
            a = wire.Ack.decode(item.payload)
            return "stored_ack" if store.insert_ack(con, a) else "duplicate"
        raise WireError(f"unhandled topic kind {t.kind!r}")

    # ------------------------------------------------------------------------------------------ control
    def start(self, timeout_s: float = 10.0) -> Recorder:
        self._stop.clear()
        store.connect(self.db_path).close()  # create the schema before anything arrives
        self._writer = threading.Thread(target=self._write_loop, name="recorder-writer", daemon=True)
        self._writer.start()
        try:
            self._client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            self.stop()
            raise BrokerError(f"recorder cannot reach broker {self.host}:{self.port}: {exc}") from exc
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            self.stop()
            raise BrokerError(f"recorder could not connect/authenticate to {self.host}:{self.port}")
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def pending(self) -> int:
        return self._queue.qsize()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store everything received, then disconnect (the persistent session keeps queueing at the broker)."""
        deadline = time.monotonic() + timeout_s
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        if self._writer is not None:
            self._writer.join(max(0.1, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
