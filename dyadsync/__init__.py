"""The top layer: the ``dyadsync`` console script, which assembles each package's subcommands.

Nothing imports this package; it imports every other one (see docs/architecture.md).
"""

from core import __version__ as __version__  # noqa: F401
