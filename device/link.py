"""The unit's MQTT link: publishes the outbox in order with QoS 1 and deletes a row only on its PUBACK.

paho-mqtt 2.x (``CallbackAPIVersion.VERSION2``), persistent session (fixed client id,
``clean_session=False``), a retained last will ``Status(state="offline")``, reconnect with exponential
backoff (``reconnect_delay_set``). At most ``max_inflight`` messages wait for a PUBACK at once; paho
retransmits those itself after a reconnect (in order, with DUP), and a restarted process starts again
from the oldest queued row, so the hub may see a message twice but never misses one; its store is
idempotent on (unit, stream, session, seq).

User callbacks (incoming messages, connect) are wrapped: an exception is logged and counted, never
raised inside paho's network thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from broker.mqtt import make_client

from .outbox import Outbox, OutboxError

logger = logging.getLogger(__name__)


class Link:
    """Publisher thread + paho client. ``start()`` returns at once (connects in the background)."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        will: tuple[str, bytes] | None = None,
        subscriptions: list[str] | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        keepalive_s: int = 30,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        max_inflight: int = 50,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        self.outbox = outbox
        self.host, self.port = host, port
        self.keepalive_s = keepalive_s
        self.max_inflight = max_inflight
        self.subscriptions = list(subscriptions or [])
        self._user_on_message = on_message
        self._user_on_connect = on_connect
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._connected = threading.Event()
        self._acked: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._inflight: dict[int, int] = {}  # mid -> outbox row id (publisher thread only)
        self._early: set[int] = set()  # mids acknowledged before publish() returned
        self._tail_inflight: dict[int, int] = {}  # mid -> row id of a resent tail row (publisher thread only)
        self._direct: tuple[str, bytes, bool] | None = None  # the latest message to publish outside the outbox
        self._direct_inflight: set[int] = set()  # mids of direct publishes (publisher thread only)
        self._unacked_rows: list[int] = []  # PUBACKed rows the outbox could not record yet (publisher thread only)
        self._outbox_failing = False
        self._resend = threading.Event()  # set by each connect: send the resend tail again
        self._cursor = 0  # highest row id handed to paho
        self._thread: threading.Thread | None = None
        self.last_publish_ns = 0
        c = make_client(client_id, username=username, password=password, clean_session=False, tls_ca=tls_ca,
                        tls_cert=tls_cert, tls_key=tls_key, will=will, reconnect_min_s=reconnect_min_s,
                        reconnect_max_s=reconnect_max_s, max_inflight=max_inflight, max_queued=0,
                        errors=self.counts, on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                        on_publish=self._on_publish, on_message=self._on_message,
                        on_connect_fail=self._on_connect_fail)
        self.client = c
        outbox.listeners.append(self._wake.set)

    # ----------------------------------------------------------------------------- network thread
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.counts["connect_refused"] += 1
            logger.error("broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        self._fail_since = None
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        self._resend.set()
        self._connected.set()
        self.counts["connects"] += 1
        logger.info("connected to %s:%d (session present: %s)", self.host, self.port, flags.session_present)
        if self._user_on_connect is not None:
            try:
                self._user_on_connect()
            except Exception:
                self.counts["callback_errors"] += 1
                logger.exception("on_connect hook failed")
        self._wake.set()

    _fail_since: float | None = None
    _fail_logged = 0.0

    def _on_connect_fail(self, client, userdata) -> None:
        """The broker cannot be reached (no TCP connection): said at WARNING when it starts, then every minute."""
        now = time.monotonic()
        self.counts["connect_failed"] += 1
        if self._fail_since is None:
            self._fail_since = self._fail_logged = now
            logger.warning("cannot reach the broker at %s:%d; data stays in the outbox, retrying with backoff",
                           self.host, self.port)
        elif now - self._fail_logged >= 60:
            self._fail_logged = now
            logger.warning("still cannot reach the broker at %s:%d (for %.0f s); retrying",
                           self.host, self.port, now - self._fail_since)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            self.counts["disconnects"] += 1
            logger.warning("disconnected from %s:%d (%s); reconnecting with backoff", self.host, self.port, reason_code)

    # PUBACKs are handed to the outbox in batches: the publisher is woken for them only when ACK_BATCH have
    # come, or when rows wait for room in the in-flight window; otherwise at its next wake (the next commit,
    # at most a second later). A wake-up costs ~160 µs of CPU on a virtual machine, and each hand-over is a
    # write transaction; a PUBACK not yet handed over only means a resend after a crash (deduplicated).
    ACK_BATCH = 16

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._acked.put(mid)
        # also when every message in flight is acknowledged: the outbox's depth then reaches 0 (caught up)
        # instead of staying at the last batch until the next commit
        n = self._acked.qsize()
        if n >= self.ACK_BATCH or n >= len(self._inflight) or self.outbox.depth > len(self._inflight):
            self._wake.set()

    def _on_message(self, client, userdata, msg) -> None:
        if self._user_on_message is None:
            return
        try:
            self._user_on_message(msg.topic, bytes(msg.payload))
        except Exception:
            self.counts["callback_errors"] += 1
            logger.exception("handler for %s failed", str(msg.topic)[:200])

    # ---------------------------------------------------------------------------- publisher thread
    def _row_of(self, mid: int) -> int | None:
        """The outbox row a PUBACK's mid belongs to (a queued row or a resent tail row), forgotten once found."""
        rid = self._inflight.pop(mid, None)
        if rid is None and mid in self._direct_inflight:
            self._direct_inflight.discard(mid)
            return -1
        return self._tail_inflight.pop(mid, None) if rid is None else rid

    def _drain_acks(self) -> None:
        done, self._unacked_rows = self._unacked_rows, []
        while True:
            try:
                mid = self._acked.get_nowait()
            except queue.Empty:
                break
            rid = self._row_of(mid)
            if rid is None:
                self._early.add(mid)
            elif rid >= 0:
                done.append(rid)
        for mid in list(self._early):
            rid = self._row_of(mid)
            if rid is not None:
                self._early.discard(mid)
                if rid >= 0:
                    done.append(rid)
        if done:
            try:
                self.counts["acked"] += self.outbox.acknowledge(done)
            except Exception:
                self._unacked_rows = done  # a full disk: record them at a later wake, never forget them
                raise

    def _publish_direct(self) -> None:
        direct = self._direct
        if direct is None or not self._connected.is_set():
            return
        self._direct = None
        info = self.client.publish(direct[0], direct[1], qos=1, retain=direct[2])
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self._direct_inflight.add(info.mid)
            self.counts["direct"] += 1
        elif self._direct is None:
            self._direct = direct

    def _resend_tail(self) -> None:
        """Publish the resend tail again (once per connect, before anything newer)."""
        if not self._resend.is_set() or not self._connected.is_set():
            return
        self._resend.clear()
        tail = self.outbox.acked_tail()
        for q in tail:
            info = self.client.publish(q.topic, q.payload, qos=q.qos, retain=q.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                logger.warning("resend of tail row %d failed: %s", q.id, mqtt.error_string(info.rc))
                self._resend.set()  # try again at the next wake
                break
            self._tail_inflight[info.mid] = q.id
            self.counts["resent"] += 1
        if tail:
            logger.info("resent %d messages the broker had acknowledged before the link went down", len(tail))

    def _fill(self) -> None:
        room = self.max_inflight - len(self._inflight)
        if room <= 0 or not self._connected.is_set():
            return
        for q in self.outbox.pending(self._cursor, room):
            info = self.client.publish(q.topic, q.payload, qos=q.qos, retain=q.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                logger.warning("publish of row %d failed: %s", q.id, mqtt.error_string(info.rc))
                break
            self._cursor = q.id
            if q.qos == 0:
                self.outbox.acknowledge([q.id])
            else:
                self._inflight[info.mid] = q.id
            self.counts["published"] += 1
            self.last_publish_ns = time.time_ns()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._publish_direct()
                self._drain_acks()
                self._resend_tail()
                self._fill()
                self._drain_acks()
            except OutboxError as exc:  # a full disk: the PUBACKs are kept and recorded at a later wake
                self.counts["publisher_errors"] += 1
                if not self._outbox_failing:
                    logger.error("publisher: %s; retrying", exc)
                self._outbox_failing = True
                self._stop.wait(0.5)
                continue
            except Exception:  # an outbox error must not kill the publisher: retry on the next wake
                self.counts["publisher_errors"] += 1
                logger.exception("publisher loop error")
                time.sleep(0.5)
                continue
            if self._outbox_failing:
                logger.warning("publisher: the outbox records acknowledgements again")
                self._outbox_failing = False

    # -------------------------------------------------------------------------------------- control
    def start(self) -> Link:
        self._stop.clear()
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="unit-publisher", daemon=True)
        self._thread.start()
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def flush(self, timeout_s: float) -> bool:
        """Wait until the outbox is empty (every message acknowledged) or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.outbox.depth == 0:
                return True
            self._wake.set()
            time.sleep(0.02)
        return self.outbox.depth == 0

    def publish_direct(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish outside the outbox, without waiting (a status while the outbox cannot be written). Only the
        latest such message is kept; it is sent at the publisher's next wake, or after the next connect."""
        self._direct = (topic, bytes(payload), retain)
        self._wake.set()

    def publish_now(self, topic: str, payload: bytes, *, retain: bool = True, timeout_s: float = 2.0) -> bool:
        """Publish outside the outbox (the final ``offline`` status) and wait for its PUBACK."""
        if not self.connected:
            return False
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop publishing and disconnect cleanly (the will is not sent on a clean disconnect)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
        if self._wake.set in self.outbox.listeners:
            self.outbox.listeners.remove(self._wake.set)

    def stats(self) -> dict[str, Any]:
        return {"connected": self.connected, "inflight": self.inflight, **self.counts}
