"""The bottom layer: the project's exception root and shared vocabulary. Standard library only.

:mod:`core.errors` (every error dyadsync raises on purpose) and :mod:`core.vocab` (roles, the 4 Hz
feature grid, identifier rules, LED states, sample flags). Every other package may import it; it imports
none of them (see docs/architecture.md).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dyadsync")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+src"
