"""An embedded MQTT broker (amqtt, in a background thread) for machines without Mosquitto.

It serves the demo on a machine where Debian's ``mosquitto`` is not installed and nobody is root. It
applies the same accounts and the same topic permissions as the Mosquitto configuration: anonymous
clients are refused, each unit is confined to its own topics. Production hubs run Mosquitto.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import warnings
from concurrent.futures import Future
from pathlib import Path

from broker.errors import BrokerError

from .auth import RoomAuth
from .mosquitto import free_port

logger = logging.getLogger(__name__)


class EmbeddedBroker:
    """amqtt broker on ``host:port`` with file authentication and topic ACLs from a :class:`RoomAuth`."""

    kind = "embedded"

    def __init__(self, directory: Path, auth: RoomAuth, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.directory = Path(directory)
        self.auth = auth
        self.host = host
        self.port = port or free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker = None

    def _config(self) -> dict:
        from pwdlib import PasswordHash
        from pwdlib.hashers.argon2 import Argon2Hasher

        self.directory.mkdir(parents=True, exist_ok=True)
        # The room's passwords are random (RoomAuth.generate, ~140 bits): a cheap argon2 setting protects them as
        # well as the default one, which costs ~0.5 s of CPU per connection on a small machine.
        hasher = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8 * 1024, parallelism=1),))
        pw = self.directory / "passwd.argon2"
        pw.write_text("".join(f"{u}:{hasher.hash(p)}\n" for u, p in sorted(self.auth.users().items())))
        pw.chmod(0o600)
        publish: dict[str, list[str]] = {}
        subscribe: dict[str, list[str]] = {}
        for user, grants in self.auth.grants().items():
            for g in grants:
                if "write" in g.access:
                    publish.setdefault(user, []).append(g.topic)
                if "read" in g.access:
                    subscribe.setdefault(user, []).append(g.topic)
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 100}},
            "plugins": {
                "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(pw)},
                "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
                    "publish_acl": publish, "acl": subscribe,
                },
            },
        }

    def start(self, timeout_s: float = 15.0) -> EmbeddedBroker:
        from amqtt.broker import Broker

        config = self._config()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="embedded-broker", daemon=True)
        self._thread.start()

        async def _start():
            with warnings.catch_warnings():
                # amqtt 0.12 names the subscribe ACL 'acl' in its config dataclass but warns that it is deprecated.
                warnings.filterwarnings("ignore", message=".*'acl' option is deprecated", category=DeprecationWarning)
                self._broker = Broker(config, loop=self._loop)
                await self._broker.start()

        fut: Future = asyncio.run_coroutine_threadsafe(_start(), self._loop)
        try:
            fut.result(timeout_s)
        except Exception as exc:
            self.stop()
            raise BrokerError(f"embedded broker failed to start on {self.host}:{self.port}: {exc}") from exc
        logger.info("embedded amqtt broker running on %s:%d", self.host, self.port)
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def log_tail(self, n: int = 20) -> str:
        """The embedded broker logs through Python's logging, into its host process's log."""
        return "(the embedded broker logs into the log of the process that runs it)"

    def kill(self) -> None:
        """Stop at once (the embedded broker keeps nothing on disk, so this is :meth:`stop`)."""
        self.stop(timeout_s=1.0)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._loop is None:
            return
        if self._broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout_s)
            except Exception as exc:  # shutting down anyway
                logger.warning("embedded broker shutdown: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._loop.close()
        self._loop = None
        self._thread = None
        self._broker = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_room_broker(directory: Path, auth: RoomAuth, prefer: str = "auto", host: str = "127.0.0.1",
                      port: int | None = None):
    """Start a broker for ``auth``'s room: ``mosquitto`` (a child process, see :mod:`broker.mosquitto`),
    ``embedded`` or ``auto`` (Mosquitto when its binary is installed, else embedded) on ``port`` (default: a
    free one). Returns an object with host, port, kind, running, log_tail(), start(), kill() and stop();
    raises :class:`BrokerError` with the broker's own words when it cannot start."""
    from .mosquitto import MosquittoProcess, find_mosquitto, write_broker_files

    if prefer not in ("auto", "mosquitto", "embedded"):
        raise BrokerError(f"broker must be auto, mosquitto or embedded, not {prefer!r}")
    if prefer == "mosquitto" or (prefer == "auto" and find_mosquitto()):
        files = write_broker_files(Path(directory), auth, host=host, port=port)
        return MosquittoProcess(files).start()
    return EmbeddedBroker(Path(directory), auth, host=host, port=port).start()
