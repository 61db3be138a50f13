"""presetdb's own results format, ``presetdb-results/1`` (docs/results-format.md).

One file holds one kernel on one platform: the run's provenance, then one entry per shape
key with its config, timings and runners-up. The JSON Schema ships in
``presetdb/schemas/presetdb-results-1.json``; the header is checked against it whole and
each entry on its own as it streams by.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from presetdb.errors import ImportValidationError
from presetdb.offline.importers.jsonstream import JsonStream
from presetdb.offline.importers.records import PROVENANCE_FIELDS, UTF8, ParsedFile, Row, file_sha256, write_atomic

FORMAT_ID = "presetdb-results/1"
FORMAT_PREFIX = "presetdb-results/"
HEADER_KEYS = ("format", "run", "kernel", "platform")


@functools.cache
def schema() -> dict[str, Any]:
    text = (importlib.resources.files("presetdb") / "schemas" / "presetdb-results-1.json").read_text()
    return dict(json.loads(text))


@functools.cache
def _header_validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


@functools.cache
def _entry_validator() -> Draft202012Validator:
    # Structure and types only: value ranges (latencies, counts) are judged in
    # `validate` with the same messages for every format.
    defs = json.loads(json.dumps(schema()["$defs"]))
    defs["latency"] = {"type": ["number", "null"]}
    entry = defs["entry"]["properties"]
    entry["configs_tried"] = {"type": ["integer", "null"]}
    entry["tuning_seconds"] = {"type": ["number", "null"]}
    return Draft202012Validator({"$defs": defs, "$ref": "#/$defs/entry"})


def _path(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def schema_problems(validator: Draft202012Validator, instance: Any, prefix: str = "") -> list[str]:
    """Schema violations as "field: reason" lines, in document order."""
    problems = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
        where = _path(list(error.absolute_path))
        field = f"{prefix}.{where}" if prefix and where != "(top level)" else (prefix or where)
        problems.append(f"{field}: {error.message}")
    return problems


def read_header(path: Path) -> dict[str, Any]:
    """Every top-level member except the entries (streamed past, not kept)."""
    header: dict[str, Any] = {}
    with path.open(encoding=UTF8) as fh:
        stream = JsonStream(fh, path.name)
        if stream.peek() != "{":
            raise ImportValidationError(
                f"{path.name}: a {FORMAT_ID} file is a JSON object", [f"{path.name}: not an object"]
            )
        for member in stream.members():
            if member == "entries" and stream.peek() == "[":
                # Counted, not kept: entries are checked one by one when rows are read.
                header["entries"] = []
                header["_entry_count"] = sum(1 for _ in stream.items())
            else:
                header[member] = stream.value()
        stream.end()
    return header


def parse(path: Path) -> ParsedFile:
    header = read_header(path)
    fmt = header.get("format")
    if isinstance(fmt, str) and fmt.startswith(FORMAT_PREFIX) and fmt != FORMAT_ID:
        raise ImportValidationError(
            f"{path.name}: format {fmt!r} is not supported by this presetdb (it reads "
            f"{FORMAT_ID}); upgrade presetdb or re-export the file as {FORMAT_ID}."
        )
    checked = {k: v for k, v in header.items() if k != "_entry_count"}
    problems = [f"{path.name}: {p}" for p in schema_problems(_header_validator(), checked)]
    if problems:
        raise ImportValidationError(f"{path.name}: not a valid {FORMAT_ID} file", problems)
    run = header["run"]
    kernel = header["kernel"]
    parsed = ParsedFile(
        path=path,
        format="presetdb",
        sha256=file_sha256(path),
        kernel=kernel["name"],
        platform=header["platform"],
        key_schema=kernel.get("key_schema"),
        kernel_source_hash=kernel.get("source_hash"),
        provenance={k: run.get(k) for k in PROVENANCE_FIELDS if run.get(k) is not None},
    )
    parsed.rows = _rows(path, kernel["name"], kernel.get("source_hash"))
    return parsed


def _rows(path: Path, kernel: str, source_hash: str | None) -> Iterator[Row]:
    with path.open(encoding=UTF8) as fh:
        stream = JsonStream(fh, path.name)
        for member in stream.members():
            if member != "entries":
                stream.value()
                continue
            for index, entry in enumerate(stream.items()):
                yield entry_row(index, f"entries[{index}]", kernel, entry, source_hash)


def entry_row(index: int, where: str, kernel: str, entry: Any, source_hash: str | None) -> Row:
    problems = tuple(schema_problems(_entry_validator(), entry))
    if not isinstance(entry, Mapping):
        return Row(index, where, kernel, None, None, problems=problems or ("entry: not an object",))
    runners = entry.get("runners_up") or []
    return Row(
        index=index,
        where=where,
        kernel=kernel,
        key=entry.get("key") if isinstance(entry.get("key"), Mapping) else None,
        config=entry.get("config"),
        latency_ms=entry.get("latency_ms"),
        default_ms=entry.get("default_ms"),
        reference_ms=entry.get("reference_ms"),
        configs_tried=entry.get("configs_tried"),
        tuning_seconds=entry.get("tuning_seconds"),
        runners_up=tuple((r.get("config"), r.get("latency_ms")) for r in runners if isinstance(r, Mapping)),
        kernel_source_hash=source_hash,
        problems=problems,
        provenance=_row_provenance(entry.get("run")),
    )


def _row_provenance(run: Any) -> dict[str, Any] | None:
    if not isinstance(run, Mapping):
        return None
    return {k: run[k] for k in PROVENANCE_FIELDS if run.get(k) is not None} or None


# ---------------------------------------------------------------- writing


def document(
    *,
    run: Mapping[str, Any],
    kernel: Mapping[str, Any],
    platform: str,
    entries: Sequence[Mapping[str, Any]],
    failures: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A results document in the canonical member order (header first, entries last)."""
    doc: dict[str, Any] = {
        "format": FORMAT_ID,
        "run": dict(run),
        "kernel": dict(kernel),
        "platform": platform,
    }
    if failures:
        doc["failures"] = list(failures)
    doc["entries"] = list(entries)
    return doc


def dumps(doc: Mapping[str, Any]) -> str:
    """Readable and diff-friendly: one entry member per line, keys in stable order."""
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def write(path: Path, doc: Mapping[str, Any]) -> None:
    problems = schema_problems(_header_validator(), doc)
    if problems:
        raise ImportValidationError(f"{path.name}: refusing to write an invalid {FORMAT_ID} file", problems)
    write_atomic(path, dumps(doc))


def load(path: Path) -> dict[str, Any]:
    """The whole document (small files: resume in `presetdb tune`, tests)."""
    parse(path)  # header checks
    doc = json.loads(path.read_text(encoding=UTF8))
    problems = schema_problems(_header_validator(), doc)
    if problems:
        raise ImportValidationError(f"{path.name}: not a valid {FORMAT_ID} file", problems)
    return dict(doc)
