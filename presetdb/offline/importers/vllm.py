"""vLLM's Helion config files, all three layouts it has used, and its whole ``configs/`` tree.

- current: ``configs/<kernel>/<platform>.json``, a JSON array of
  ``{"key": {...}, "config": {...}}``; ``"key": {}`` is the default entry. Key fields are
  in generator order (not sorted) and written back in that order.
- string-keyed: ``configs/<kernel>/<platform>.json``, an object of string keys,
  ``{"hidden_size_2048_num_tokens_1": {config}, "default": {config}}``.
- per-kernel: ``configs/<kernel>.json``, ``{"<platform>": {"<string key>"|"default": config}}``:
  one file, several platforms (one `ParsedFile` each).

A string key is ``name_value`` pairs: ``hidden_size_2048_num_tokens_1`` is
``{"hidden_size": 2048, "num_tokens": 1}`` and ``default`` is ``{}``. A key that cannot be
split that way without guessing (two numbers in a row, a leading number, a trailing name,
a number with a leading zero or a sign) is refused with the file and the key named.

The kernel comes from the directory name (per-kernel files: the file name), the platform
from the file name (per-kernel files: the member name); `apply` resolves it through the
db's platform names and aliases and says how it did. The files carry no timings and no
provenance; `apply` records the file's path in its repository, sha256 and --source-rev.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from presetdb.errors import ImportValidationError
from presetdb.offline.importers.jsonstream import JsonStream
from presetdb.offline.importers.records import UTF8, ParsedFile, Row, file_sha256, write_atomic

# Where vLLM keeps the tree inside a checkout.
CHECKOUT_CONFIGS = Path("vllm") / "kernels" / "helion" / "configs"
DEFAULT_STRING_KEY = "default"
_NAME_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9]*\Z")
_INT_TOKEN = re.compile(r"(0|[1-9][0-9]*)\Z")

LAYOUT_CURRENT = "current"
LAYOUT_STRING_KEYED = "string-keyed"
LAYOUT_PER_KERNEL = "per-kernel"


# ---------------------------------------------------------------- string keys


def parse_string_key(text: str) -> dict[str, int]:
    """``"hidden_size_2048_num_tokens_1"`` -> ``{"hidden_size": 2048, "num_tokens": 1}``;
    ``"default"`` -> ``{}``. Raises ValueError saying why a key is ambiguous."""
    if text == DEFAULT_STRING_KEY:
        return {}
    key: dict[str, int] = {}
    name: list[str] = []
    for token in text.split("_"):
        if _INT_TOKEN.match(token):
            if not name:
                raise ValueError(
                    "a number without a field name before it" if not key else "two numbers in a row"
                )
            field = "_".join(name)
            if field in key:
                raise ValueError(f"field {field!r} appears twice")
            key[field] = int(token)
            name = []
        elif _NAME_TOKEN.match(token):
            name.append(token)
        else:
            raise ValueError(
                f"part {token!r} is neither a name (letters, then letters or digits) nor a "
                "plain non-negative integer"
            )
    if name:
        raise ValueError(f"it ends with a name ({'_'.join(name)!r}) that has no value")
    if not key:
        raise ValueError("no name_value pair in it")
    return key


def _string_key_error(file: str, text: str, why: str) -> ImportValidationError:
    return ImportValidationError(
        f"{file}: string key {text!r} is ambiguous: {why}. presetdb reads string keys as "
        "name_value pairs (e.g. 'hidden_size_2048_num_tokens_1') or 'default'; rename the "
        "key, or convert the file to vLLM's current layout (a JSON array of "
        '{"key": {...}, "config": {...}})',
        [f"{file}: key {text!r}: {why}"],
    )


# ---------------------------------------------------------------- files


def layout_of(path: Path) -> str:
    """Which of vLLM's layouts a file uses (reads the first value only for objects)."""
    with path.open(encoding=UTF8) as fh:
        stream = JsonStream(fh, path.name)
        first = stream.peek()
        if first == "[":
            return LAYOUT_CURRENT
        if first != "{":
            raise ImportValidationError(
                f"{path.name}: a vLLM Helion config file is a JSON array of "
                '{"key": {...}, "config": {...}} objects, or (older layouts) an object of '
                "string keys; this file is neither"
            )
        for name in stream.members():
            value = stream.value()
            if name != DEFAULT_STRING_KEY and isinstance(value, Mapping) and value and all(
                isinstance(v, Mapping) for v in value.values()
            ):
                return LAYOUT_PER_KERNEL  # {"<platform>": {"<key>": {config}}}
            return LAYOUT_STRING_KEYED
    return LAYOUT_STRING_KEYED  # an empty object: no entries either way


def parse(path: Path, *, kernel: str | None = None) -> list[ParsedFile]:
    """One `ParsedFile` per kernel x platform in `path` (several for a per-kernel file)."""
    layout = layout_of(path)
    sha = file_sha256(path)
    if layout == LAYOUT_CURRENT:
        parsed = _header(path, sha, layout, kernel or path.parent.name, path.stem)
        parsed.rows = _array_rows(path, parsed.kernel)
        return [parsed]
    doc = _whole(path)
    if layout == LAYOUT_STRING_KEYED:
        parsed = _header(path, sha, layout, kernel or path.parent.name, path.stem)
        parsed.rows = iter(_string_rows(path.name, parsed.kernel, doc))
        return [parsed]
    out = []
    for platform, entries in doc.items():
        parsed = _header(path, sha, layout, kernel or path.stem, platform)
        parsed.member = platform
        if not isinstance(entries, Mapping):
            raise ImportValidationError(
                f"{path.name}: member {platform!r} must be an object of string keys -> configs"
            )
        parsed.rows = iter(_string_rows(f"{path.name}[{platform!r}]", parsed.kernel, entries))
        out.append(parsed)
    return out


def _header(path: Path, sha: str, layout: str, kernel: str | None, platform: str) -> ParsedFile:
    return ParsedFile(
        path=path,
        format="vllm",
        sha256=sha,
        kernel=kernel or None,
        platform=platform,
        platform_hint=platform,
        layout=layout,
    )


def _whole(path: Path) -> Mapping[str, Any]:
    with path.open(encoding=UTF8) as fh:
        stream = JsonStream(fh, path.name)
        doc = stream.value()
        stream.end()
    assert isinstance(doc, Mapping)
    return doc


def _array_rows(path: Path, kernel: str | None) -> Iterator[Row]:
    with path.open(encoding=UTF8) as fh:
        stream = JsonStream(fh, path.name)
        for index, item in enumerate(stream.items()):
            where = f"[{index}]"
            if not isinstance(item, Mapping):
                yield Row(index, where, kernel, None, None, problems=("entry: not an object",))
                continue
            problems = []
            extra = sorted(set(item) - {"key", "config"})
            if extra:
                problems.append(f"entry: unexpected member(s) {extra}; expected 'key' and 'config'")
            key = item.get("key")
            if not isinstance(key, Mapping):
                problems.append("key: missing or not an object ({} is the default entry)")
                key = None
            config = item.get("config")
            if not isinstance(config, Mapping):
                problems.append("config: missing or not an object")
            yield Row(index, where, kernel, key, config, problems=tuple(problems))
        stream.end()


def _string_rows(file: str, kernel: str | None, entries: Mapping[str, Any]) -> list[Row]:
    rows = []
    for index, (text, config) in enumerate(entries.items()):
        try:
            key = parse_string_key(text)
        except ValueError as exc:
            raise _string_key_error(file, text, str(exc)) from None
        problems = () if isinstance(config, Mapping) else ("config: missing or not an object",)
        rows.append(Row(index, f"[{text!r}]", kernel, key, config, problems=problems))
    return rows


# ---------------------------------------------------------------- trees


def tree_files(root: Path) -> list[Path]:
    """The config files of a vLLM ``configs/`` tree (or of a checkout holding one):
    ``<kernel>/<platform>.json`` and ``<kernel>.json``, sorted."""
    root = Path(root)
    if (root / CHECKOUT_CONFIGS).is_dir():
        root = root / CHECKOUT_CONFIGS
    found = sorted(
        p for p in [*root.glob("*.json"), *root.glob("*/*.json")]
        if p.is_file() and not p.name.startswith(".")
    )
    if not found:
        raise ImportValidationError(
            f"{root}: no vLLM config files here (expected <kernel>/<platform>.json or "
            f"<kernel>.json, as in a checkout's {CHECKOUT_CONFIGS}/)"
        )
    return found


def repository_path(path: Path) -> str:
    """The file's path inside its repository: relative to the git checkout that holds it,
    else from the nearest ``configs`` directory (``configs/<kernel>/<platform>.json``),
    else ``<directory>/<file>``."""
    path = Path(path).resolve()
    for parent in path.parents:
        if (parent / ".git").exists():
            return path.relative_to(parent).as_posix()
    for parent in path.parents:
        if parent.name == "configs":
            return path.relative_to(parent.parent).as_posix()
    return f"{path.parent.name}/{path.name}"


# ---------------------------------------------------------------- writing


def compact(value: Mapping[str, Any]) -> str:
    """Compact JSON with the members in the order given (a row's layout)."""
    return json.dumps(dict(value), separators=(",", ":"), allow_nan=False)


def dumps(entries: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> str:
    """vLLM's current layout, as vLLM writes it (``json.dump(indent=2)`` and a newline);
    members are written in the order the mappings hold them."""
    items = [{"key": dict(key), "config": dict(config)} for key, config in entries]
    return json.dumps(items, indent=2, allow_nan=False) + "\n"


def write(
    out_dir: Path, kernel: str, platform: str, entries: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]
) -> Path:
    """Write ``out_dir/<kernel>/<platform>.json`` atomically; returns its path."""
    path = out_dir / kernel / f"{platform}.json"
    write_atomic(path, dumps(entries))
    return path
