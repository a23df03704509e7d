"""The dyadsync unit daemon: config, acquisition, pipeline, durable outbox, publisher, LEDs, watchdog."""

from core import __version__ as __version__  # noqa: F401
