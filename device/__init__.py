"""The dyadsync unit daemon: config, acquisition, pipeline, durable outbox, publisher, LEDs, watchdog."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dyadsync")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+src"
