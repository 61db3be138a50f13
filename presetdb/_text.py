"""Text from databases, files and users, made safe to show: control characters and
terminal escape sequences removed, length capped. Pure (no Rich): the CLI adds Rich
markup escaping on top (`presetdb.cli.common.safe`), importers use `clip` to quote
values in their errors."""

from __future__ import annotations

import re

# What may reach a terminal from data: nothing that moves the cursor, sets a title or a
# hyperlink (OSC), changes colours (CSI), rings the bell or reorders text (bidi controls).
_CONTROL = re.compile(
    r"\x1b\][^\x07\x1b]{0,4096}(?:\x07|\x1b\\)?"  # OSC ... BEL / ST (title, hyperlink)
    r"|\x1b\[[0-?]{0,64}[ -/]{0,16}[@-~]?"  # CSI (colours, cursor moves)
    r"|\x1b[@-_]?"  # other escapes, or a lone ESC
    r"|\x9b[0-?]{0,64}[ -/]{0,16}[@-~]?"  # 8-bit CSI
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)

# The most characters of one value shown anywhere (a 50 MB string must not be echoed).
MAX_SHOWN = 2_000
# The most characters of one value quoted inside an error line.
MAX_QUOTED = 120


def strip_control(text: str) -> str:
    """`text` without control characters or escape sequences (newlines and tabs kept)."""
    return _CONTROL.sub("", text)


def clip(value: object, limit: int = MAX_QUOTED) -> str:
    """`str(value)` cut to `limit` characters (saying how much was cut), controls removed.

    Cut before stripping so the work is bounded by `limit`, not by the value's size."""
    text = value if isinstance(value, str) else _bounded_repr(value, limit)
    if len(text) > limit:
        cut = len(text) - limit
        text = text[:limit] + f"... ({cut:,} more characters)"
    return strip_control(text)


def quoted(value: object, limit: int = MAX_QUOTED) -> str:
    """`repr(value)`, capped, for an error message ("got '...'")."""
    if isinstance(value, str):
        if len(value) > limit:
            return repr(value[:limit]) + f"... ({len(value) - limit:,} more characters)"
        return repr(value)
    return clip(_bounded_repr(value, limit), limit)


def _bounded_repr(value: object, limit: int) -> str:
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value):,} items>"
    try:
        text = str(value)
    except (ValueError, RecursionError):  # e.g. an int of more digits than Python prints
        return f"<{type(value).__name__}>"
    return text
