"""The project's exception root.

Every error dyadsync raises on purpose derives from :class:`DyadsyncError` and, where one fits, from a
builtin too, so callers may catch either (``except ValueError`` still catches a malformed payload). Each
package derives its own errors from these (``dsp_ext.errors``, ``firmware_bridge.errors``,
``broker.errors``); only the root and the configuration error, which every layer raises, live here.
"""

from __future__ import annotations


class DyadsyncError(Exception):
    """Root of every error raised by dyadsync on purpose."""


class ConfigError(DyadsyncError, ValueError):
    """A configuration file or value is wrong; the message names the file, the key and what was found."""


__all__ = ["ConfigError", "DyadsyncError"]
