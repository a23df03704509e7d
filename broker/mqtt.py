"""The one place where dyadsync makes a paho-mqtt client.

:func:`make_client` sets the options every dyadsync client shares (paho 2.x ``CallbackAPIVersion.VERSION2``,
MQTT 3.1.1, a client id, credentials, TLS with certificate checking, an optional retained last will,
reconnect backoff) and wraps each callback it is given so that an exception in our code is logged and
counted, never raised inside paho's network thread (which would stop the loop). The unit link, the
recorder, the room console, the demo, the HIL runner, tests and benchmarks all call it.
"""

from __future__ import annotations

import functools
import logging
import ssl
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

logger = logging.getLogger(__name__)

CALLBACKS = ("on_connect", "on_connect_fail", "on_disconnect", "on_message", "on_publish", "on_subscribe")


def client_id(prefix: str) -> str:
    """A fresh client id ``<prefix>-<8 hex>`` for a client without a persistent session."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _guard(name: str, fn: Callable[..., Any], errors: Counter[str]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception:  # never let our code kill paho's network thread
            errors["callback_errors"] += 1
            logger.exception("MQTT %s callback failed", name)
            return None

    return wrapper


def make_client(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    clean_session: bool = True,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    will: tuple[str, bytes] | None = None,
    reconnect_min_s: float = 0.2,
    reconnect_max_s: float = 5.0,
    max_inflight: int | None = None,
    max_queued: int | None = None,
    manual_ack: bool = False,
    protocol: int = mqtt.MQTTv311,
    errors: Counter[str] | None = None,
    **callbacks: Callable[..., Any],
) -> mqtt.Client:
    """A configured, not yet connected paho client.

    ``callbacks`` are paho's callback names (``on_connect=...``); each is wrapped so that an exception is
    logged and counted in ``errors["callback_errors"]`` (``client.dyadsync_errors`` when no counter is
    given). ``will`` is (topic, payload), sent retained with QoS 1. With ``tls_ca`` the broker's certificate
    is checked against that CA; ``tls_cert``/``tls_key`` add a client certificate.
    """
    unknown = set(callbacks) - set(CALLBACKS)
    if unknown:
        raise TypeError(f"make_client: unknown callbacks {sorted(unknown)}; known: {CALLBACKS}")
    kw: dict[str, Any] = {"client_id": client_id, "protocol": protocol}
    if protocol != mqtt.MQTTv5:
        kw["clean_session"] = clean_session
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kw)
    if username is not None:
        c.username_pw_set(username, password)
    if tls_ca:
        c.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key, cert_reqs=ssl.CERT_REQUIRED)
    if will is not None:
        c.will_set(will[0], will[1], qos=1, retain=True)
    c.reconnect_delay_set(reconnect_min_s, reconnect_max_s)
    if max_inflight is not None:
        c.max_inflight_messages_set(max_inflight)
    if max_queued is not None:
        c.max_queued_messages_set(max_queued)
    if manual_ack:
        c.manual_ack_set(True)
    counter = errors if errors is not None else Counter()
    c.dyadsync_errors = counter  # type: ignore[attr-defined]
    for name, fn in callbacks.items():
        setattr(c, name, _guard(name, fn, counter))
    return c


__all__ = ["CALLBACKS", "client_id", "make_client"]
