"""Configuration error messages that point at the file, line and key (stdlib only).

Both TOML configs (the unit's ``unit.toml``, the hub's ``hub.toml``) are validated by pydantic; this
module turns a validation error's entries (``ValidationError.errors()``: dicts with ``loc``, ``type``,
``msg``, ``input``) into lines such as ``unit.toml:12: key 'dsp.lag_s': Input should be greater than or
equal to 0 (found -3)``. The line is found in the TOML text by a best-effort search that follows
``[tables]``, ``[[arrays of tables]]`` and ``{ inline = tables }``; when a key cannot be found the line
of its nearest enclosing table is given, and when nothing can be found only the file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any


def describe(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def loc_str(loc: tuple[Any, ...]) -> str:
    """A pydantic location as a dotted key: ``("sensors", 1, "role")`` -> ``sensors[1].role``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _key_re(part: str) -> re.Pattern[str]:
    """``part`` as a key (``part =`` at a line start or after ``{``/``,``) or a ``[table]`` header.
    Only spaces and tabs may stand between, never a newline (``\\s`` would run into the next line)."""
    k = re.escape(part)
    return re.compile(
        rf"(?:^|[{{,])[ \t]*(?P<at>(?:\"{k}\"|'{k}'|{k})[ \t]*=|\[[ \t]*(?:[\w.-]+\.)?{k}[ \t]*\](?!\]))",
        re.MULTILINE,
    )


def _array_header_re(part: str) -> re.Pattern[str]:
    return re.compile(rf"^[ \t]*\[\[[ \t]*{re.escape(part)}[ \t]*\]\]", re.MULTILINE)


def find_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the key at ``loc`` in the TOML ``text`` (or of its nearest enclosing table)."""
    pos = 0
    found: int | None = None
    keys = list(loc)
    for i, part in enumerate(keys):
        if not isinstance(part, str):
            continue
        nxt = keys[i + 1] if i + 1 < len(keys) else None
        if isinstance(nxt, int):  # array of tables: the (nxt+1)-th [[part]] header
            hits = list(_array_header_re(part).finditer(text, pos))
            if len(hits) > nxt:
                found, pos = hits[nxt].start(), hits[nxt].end()
                continue
            m = _key_re(part).search(text, pos)  # an inline array (units = [...]): its key
            if m is not None:
                found = m.start("at")
            break
        m = _key_re(part).search(text, pos)
        if m is None:
            break
        found, pos = m.start("at"), m.end()
    return None if found is None else text.count("\n", 0, found) + 1


_SKIP_LOC = ("function-", "literal[")


def format_errors(path: str, text: str, errors: Iterable[Mapping[str, Any]], what: str) -> str:
    """One line per validation error: ``path:line: ...`` naming the key, what was expected and found."""
    lines = []
    for err in errors:
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(_SKIP_LOC)))
        key = loc_str(loc)
        line = find_line(text, loc) if loc else None
        where = f"{path}:{line}" if line else path
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key '{key}' (found {describe(err.get('input'))}); check the spelling")
        elif err["type"] == "missing":
            lines.append(f"{where}: missing required key '{key}'")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            found = "" if not loc else f" (found {describe(err.get('input'))})"
            lines.append(f"{where}: key '{key}': {msg}{found}")
    return f"invalid {what}:\n  " + "\n  ".join(lines)


__all__ = ["describe", "find_line", "format_errors", "loc_str"]
