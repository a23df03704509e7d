"""The hub recorder: subscribes to a room, decodes with the wire contract, stores in SQLite.

Durability: the MQTT session is persistent (clean_session false, fixed client id) and acknowledgements
are manual: a QoS 1 message is PUBACKed only after the transaction holding it has committed, so a
recorder crash never loses a message the broker thinks was delivered. Storage is idempotent, so the
redelivery that follows a crash changes nothing. Malformed messages are logged (cut short), counted and
kept in ``rejects``; nothing a client sends can stop the recorder. Messages that look like one account
speaking for another (a status or ack whose unit differs from its topic, a message for another room) are
counted as ``unauthorized``.

Batching: the writer drains whatever has arrived (up to ``batch_size``) into one transaction, so under
load a commit carries many messages and when idle a single message is committed at once; the broker's
in-flight window (``max_inflight_messages`` in the generated conf) bounds how much is ever unacknowledged.

Commands and acknowledgements: a command is logged, and the session record follows the units' answers
(see :mod:`broker.store`): only a command some unit accepted changes a session; an undecodable command is
counted as ``bad_commands`` (not ``malformed``, which counts data), refused and rejected ones are logged
with their reason and counted as ``cmd_refused``/``cmd_rejected``.

A lab recorder for many rooms passes ``room="+"``: it subscribes to ``dyadsync/v1/+/#`` on the lab broker
(the room hubs bridge into it) and stores every room, keyed by room.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from broker.errors import BrokerError, WireError
from broker.mqtt import make_client

from . import store, wire

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4096)
def _parse_topic(topic: str) -> wire.Topic:
    """wire.parse_topic is pure and a room has few distinct topics: cache it (errors are not cached)."""
    return wire.parse_topic(topic)


class _Unauthorized(WireError):
    """A message that claims to come from someone other than the topic's owner."""


class _BadCommand(WireError):
    """An undecodable message on the room's command topic."""


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
        batch_size: int = 1000,
        batch_interval_s: float = 0.02,
        tls_ca: str | None = None,
        marker_tolerance_s: float = store.MARKER_TOLERANCE_NS / 1e9,
    ) -> None:
        self.db_path = Path(db_path)
        if room != "+":
            wire.room_prefix(room)
        self.room = room
        self.host, self.port = host, port
        self.batch_size = batch_size
        self.batch_interval_s = batch_interval_s
        self.marker_tolerance_ns = round(marker_tolerance_s * 1e9)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        # A deque (append/popleft are atomic) and an Event: cheaper per message than queue.Queue's
        # lock + condition, which matters at thousands of messages per second.
        self._queue: collections.deque[_Item] = collections.deque()
        self._arrived = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._writer: threading.Thread | None = None
        self._client = make_client(
            client_id or f"dyadsync-recorder-{'all' if room == '+' else room}", username=username,
            password=password, clean_session=False, tls_ca=tls_ca, manual_ack=True, reconnect_min_s=0.2,
            reconnect_max_s=5, max_inflight=100, errors=self.counts, on_connect=self._on_connect,
            on_disconnect=self._on_disconnect, on_subscribe=self._on_subscribe, on_message=self._on_message)

    # ---------------------------------------------------------------------------------- network thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            logger.error("recorder: broker refused connection: %s", reason_code)
            self._bump("connect_refused")
            return
        # Ready only once the broker has confirmed the subscription (on_subscribe): a message published
        # before the SUBACK could otherwise miss a brand-new session.
        client.subscribe(self.topic_filter, qos=1)
        logger.info("recorder connected to %s:%d, room %s", self.host, self.port, self.room)

    @property
    def topic_filter(self) -> str:
        return f"{wire.PREFIX}/{wire.VERSION}/+/#" if self.room == "+" else f"{wire.room_prefix(self.room)}/#"

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(rc.is_failure for rc in reason_codes):
            logger.error("recorder: subscription to %s refused: %s", self.topic_filter, reason_codes)
            self._bump("subscribe_refused")
            return
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            logger.warning("recorder disconnected (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        try:
            self._queue.append(_Item(msg.topic, bytes(msg.payload), msg.mid, msg.qos, time.time_ns()))
            self._arrived.set()
        except Exception:  # never raise in the network thread
            logger.exception("recorder: could not queue a message")

    def _bump(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    # ------------------------------------------------------------------------------------ writer thread
    def _write_loop(self) -> None:
        con = store.connect(self.db_path)
        try:
            while not (self._stop.is_set() and not self._queue):
                batch = self._take_batch()
                if not batch:
                    continue
                try:
                    self._store_batch(con, batch)
                except Exception:  # e.g. disk full: keep running; unacked messages are redelivered later
                    logger.exception("recorder: could not store a batch of %d messages", len(batch))
                    self._bump("store_errors")
                    time.sleep(0.5)
        finally:
            con.close()

    def _take_batch(self) -> list[_Item]:
        """Everything that has arrived (up to batch_size); waits up to 0.1 s for the first message and lingers
        at most ``batch_interval_s`` for a burst's stragglers."""
        q = self._queue
        if not q:
            self._arrived.clear()
            if not q and not self._arrived.wait(0.1):
                return []
        batch: list[_Item] = []
        deadline = time.monotonic() + self.batch_interval_s
        while len(batch) < self.batch_size:
            try:
                batch.append(q.popleft())
                continue
            except IndexError:
                pass
            if not batch or time.monotonic() >= deadline:
                break
            self._arrived.clear()
            if not q and not self._arrived.wait(0.002):
                break
        return batch

    def _store_batch(self, con, batch: list[_Item]) -> None:
        counts: Counter[str] = Counter()
        self._touched_sessions: dict[str, tuple[str, int]] = {}
        self._touched_units: dict[tuple[str, str], int] = {}
        with con:
            for item in batch:
                try:
                    kind = self._store_one(con, item)
                    counts[kind] += 1
                except _BadCommand as exc:
                    counts["bad_commands"] += 1
                    logger.warning("recorder: undecodable command on %s: %s", item.topic[:200], str(exc)[:300])
                    store.insert_reject(con, item.topic, f"bad command: {exc}", item.payload, item.received_ns)
                except _Unauthorized as exc:
                    counts["unauthorized"] += 1
                    logger.warning("recorder: dropped suspicious message on %s: %s", item.topic[:200], str(exc)[:300])
                    store.insert_reject(con, item.topic, f"unauthorized: {exc}", item.payload, item.received_ns)
                except WireError as exc:
                    counts["malformed"] += 1
                    logger.warning("recorder: dropped malformed message on %s: %s", item.topic[:200], str(exc)[:300])
                    store.insert_reject(con, item.topic, str(exc), item.payload, item.received_ns)
                except Exception as exc:  # a bug or an odd payload must not stop the recorder
                    counts["malformed"] += 1
                    logger.exception("recorder: failed on message on %s", item.topic[:200])
                    store.insert_reject(con, item.topic, f"{type(exc).__name__}: {exc}", item.payload,
                                        item.received_ns)
            for session, (room, t) in self._touched_sessions.items():
                store.touch_session(con, room, session, t)
            for (room, unit), t in self._touched_units.items():
                store.touch_unit(con, room, unit, t)
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

    def _touch(self, room: str, unit: str | None, session: str | None, now: int) -> None:
        if session:
            self._touched_sessions[session] = (room, now)
        if unit:
            self._touched_units[(room, unit)] = now

    def _decided(self, con, room: str, cmd_id: str, state: str | None) -> None:
        if state is None:
            return
        self._bump(f"cmd_{state}")
        if state in ("refused", "rejected"):
            reason = (store.command_state(con, room, cmd_id) or ("", None))[1]
            logger.warning("recorder: command %s of room %s %s, not recorded: %s", cmd_id, room, state,
                           str(reason)[:300])
        else:
            logger.info("recorder: command %s of room %s %s", cmd_id, room, state)

    def _store_one(self, con, item: _Item) -> str:
        t = _parse_topic(item.topic)
        room = t.room
        if self.room != "+" and room != self.room:
            raise _Unauthorized(f"message for room {room!r} on a recorder of room {self.room!r}")
        now = item.received_ns
        if t.kind in ("raw", "feat"):
            block, session = wire.decode_block(item.payload)
            if block.stream != t.stream:
                raise WireError(f"block stream {block.stream!r} does not match topic stream {t.stream!r}")
            if not session:
                raise WireError("data block carries no session id")
            new = store.insert_block(con, t.unit, t.kind, block, session, now, room=room)
            if new:
                self._touch(room, t.unit, session, now)
            return f"stored_{t.kind}" if new else "duplicate"
        if t.kind == "metric":
            m = wire.Metric.decode(item.payload)
            if m.name != t.name:
                raise WireError(f"metric name {m.name!r} does not match topic name {t.name!r}")
            new = store.insert_metric(con, t.unit, m, now, room=room)
            if new:
                self._touch(room, t.unit, m.session, now)
            return "stored_metric" if new else "duplicate"
        if t.kind == "cmd":
            try:
                c = wire.Command.decode(item.payload)
            except WireError as exc:
                raise _BadCommand(str(exc)) from None
            new, decided = store.log_command(con, room, c, item.payload, now,
                                             marker_tolerance_ns=self.marker_tolerance_ns)
            self._decided(con, room, c.id, decided)
            return "stored_cmd" if new else "duplicate"
        if t.kind == "status":
            if not item.payload:  # a cleared retained status
                return "status_cleared"
            s = wire.Status.decode(item.payload)
            if s.unit != t.unit:
                raise _Unauthorized(f"status of unit {s.unit!r} published under unit {t.unit!r}")
            new = store.insert_status(con, t.unit, s, item.payload, now, room=room)
            if new:
                store.touch_unit(con, room, t.unit, now, s)
                self._touch(room, None, s.session, now)
            return "stored_status" if new else "duplicate"
        if t.kind == "ack":
            a = wire.Ack.decode(item.payload)
            if a.unit != t.unit:
                raise _Unauthorized(f"ack of unit {a.unit!r} published under unit {t.unit!r}")
            new, decided = store.log_ack(con, a, room, now, marker_tolerance_ns=self.marker_tolerance_ns)
            self._decided(con, room, a.id, decided)
            return "stored_ack" if new else "duplicate"
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
        return len(self._queue)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store everything received, then disconnect (the persistent session keeps queueing at the broker)."""
        deadline = time.monotonic() + timeout_s
        while self._queue and time.monotonic() < deadline:
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
