"""A small incremental JSON reader: big arrays are read one item at a time.

Result files can hold tens of thousands of entries; `json.load` would hold the whole
document (and its Python objects) in memory before the first row is checked. This reader
keeps only a window of text and decodes one array item or object value at a time with
the standard library's `raw_decode`, so memory stays proportional to one item.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from presetdb.errors import ImportValidationError

_WHITESPACE = " \t\n\r"
_CHUNK = 1 << 16


class JsonStream:
    """Reads one JSON document from a text stream, a value or an item at a time."""

    def __init__(self, fh: IO[str], name: str, chunk: int = _CHUNK) -> None:
        self._fh = fh
        self._name = name
        self._chunk = chunk
        self._buf = ""
        self._pos = 0
        self._consumed = 0  # characters dropped from the front of the buffer
        self._eof = False
        self._decoder = json.JSONDecoder(object_pairs_hook=_unique_members)

    # -- low level ------------------------------------------------------------
    def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            data = self._fh.read(self._chunk)
        except UnicodeDecodeError as exc:
            raise self._error(f"the file is not UTF-8 text ({exc.reason} at byte {exc.start} of a chunk)") from None
        if not data:
            self._eof = True
            return False
        if self._pos > len(self._buf) // 2:
            # Drop what was consumed so the window stays one item wide.
            self._consumed += self._pos
            self._buf = self._buf[self._pos :]
            self._pos = 0
        self._buf += data
        return True

    def _error(self, what: str) -> ImportValidationError:
        offset = self._consumed + self._pos
        return ImportValidationError(
            f"{self._name}: not valid JSON at character {offset}: {what}",
            [f"{self._name}: character {offset}: {what}"],
        )

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file)."""
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in _WHITESPACE:
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return ""

    def expect(self, char: str) -> None:
        found = self.peek()
        if found != char:
            raise self._error(f"expected {char!r}, found {found or 'end of file'!r}")
        self._pos += 1

    def value(self) -> Any:
        """Decode the next complete JSON value."""
        self.peek()
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if self._fill():
                    continue
                raise self._error(exc.msg) from None
            except _DuplicateMember as dup:
                raise self._error(f"member {dup.name!r} is given twice in one object") from None
            except RecursionError:
                raise self._error("values are nested too deeply") from None
            except ValueError as exc:  # e.g. an integer of thousands of digits
                raise self._error(str(exc)) from None
            # A number or literal that ends exactly at the window's edge may continue.
            if end >= len(self._buf) and not self._eof and self._fill():
                continue
            self._pos = end
            return value

    # -- structure -------------------------------------------------------------
    def items(self) -> Iterator[Any]:
        """Iterate the items of the array that starts here."""
        self.expect("[")
        if self.peek() == "]":
            self._pos += 1
            return
        while True:
            yield self.value()
            sep = self.peek()
            self._pos += 1
            if sep == "]":
                return
            if sep != ",":
                self._pos -= 1
                raise self._error(f"expected ',' or ']' in an array, found {sep or 'end of file'!r}")

    def members(self) -> Iterator[str]:
        """Iterate the keys of the object that starts here; the caller must consume each
        member's value (with `value()` or `items()`) before asking for the next key."""
        self.expect("{")
        if self.peek() == "}":
            self._pos += 1
            return
        seen: set[str] = set()
        while True:
            if self.peek() != '"':
                raise self._error("expected a member name in double quotes")
            key = self.value()
            if key in seen:
                raise self._error(f"member {key!r} is given twice in one object")
            seen.add(key)
            self.expect(":")
            yield key
            sep = self.peek()
            self._pos += 1
            if sep == "}":
                return
            if sep != ",":
                self._pos -= 1
                raise self._error(f"expected ',' or '}}' in an object, found {sep or 'end of file'!r}")

    def end(self) -> None:
        """Check nothing but whitespace follows the document."""
        extra = self.peek()
        if extra:
            raise self._error(f"unexpected {extra!r} after the end of the document")


class _DuplicateMember(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's default keeps the last of repeated names, which lets a file hide a value."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise _DuplicateMember(name)
        out[name] = value
    return out
