"""From a model to the shape keys its kernels see (``presetdb shapes``).

Each registered kernel that has a ``shapes_for(model, tokens)`` hook maps a
`presetdb.offline.models.ModelDims` and a list of token counts (rows in flight: a decode
batch, a prefill chunk) to its shape keys. `shapes_for_models` collects them over several
models, checks every key against the kernel's key spec, drops duplicates and sorts them
by the key spec's fields, so the output is stable and diffs stay small.

The output of `dump` is what ``presetdb tune --shapes`` and ``presetdb refine --shapes``
read (`presetdb.offline.tune.load_shapes`): for one kernel a JSON array of keys, or one
canonical key per line; for several kernels a JSON object ``{kernel: [keys]}`` (the
layout of ``benchmarks/shapes/heldout*.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from presetdb.errors import PresetDBError
from presetdb.keys import canonical_key
from presetdb.offline.models import ModelDims, load_model

# Powers of two from 1 to 8192 (decode batches, prefill chunks) and a few odd counts that
# no power-of-two grid hits (a 3-sequence batch, a short prompt, ragged prefills).
DEFAULT_TOKENS: tuple[int, ...] = tuple(sorted({2**i for i in range(14)} | {3, 37, 300, 1000}))
FORMATS = ("json", "lines")


class ShapesError(PresetDBError):
    """Bad token list, an unknown kernel, or a kernel hook that returned bad keys."""


def parse_tokens(text: str) -> list[int]:
    """``'1,16,37'``; ``'1..8192'`` is the powers of two from 1 to 8192; both mix."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, dots, high = part.partition("..")
        try:
            if dots:
                a, b = int(low), int(high)
                if a < 1 or b < a:
                    raise ValueError
                p = 1
                while p <= b:
                    if p >= a:
                        out.add(p)
                    p *= 2
            else:
                value = int(part)
                if value < 1:
                    raise ValueError
                out.add(value)
        except ValueError:
            raise ShapesError(
                f"--tokens: {part!r} is not a positive count or a range A..B (powers of two); "
                "e.g. '1..8192,37,300'"
            ) from None
    if not out:
        raise ShapesError("--tokens is empty; e.g. '1..8192,37,300'")
    return sorted(out)


def _sort_key(spec: Any, key: Mapping[str, Any]) -> tuple[Any, ...]:
    # Field order of the key spec; strings sort before numbers of the same field.
    return tuple((isinstance(key.get(n), (int, float)), key.get(n)) for n in spec.names)


def kernels_with_shapes(names: Sequence[str] | None = None) -> dict[str, Any]:
    """Registered kernels (by name) whose registration gave a ``shapes_for`` hook."""
    from presetdb.helion.registry import get_kernel, load_kernel_modules, registered_kernels

    load_kernel_modules()
    if names:
        chosen = {n: get_kernel(n) for n in names}  # UnknownKernelError lists the known ones
        lacking = [n for n, rk in chosen.items() if getattr(rk, "shapes_for", None) is None]
        if lacking:
            raise ShapesError(
                f"kernel(s) {', '.join(lacking)} have no shapes_for hook; give "
                "register_kernel(shapes_for=...) a function (model, tokens) -> shape keys"
            )
        return chosen
    return {n: rk for n, rk in sorted(registered_kernels().items()) if getattr(rk, "shapes_for", None)}


def shapes_for_models(
    models: Iterable[ModelDims],
    tokens: Sequence[int] = DEFAULT_TOKENS,
    kernels: Mapping[str, Any] | None = None,
    exclude: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """{kernel: sorted unique shape keys} over `models`, minus the keys in `exclude`."""
    kernels = kernels if kernels is not None else kernels_with_shapes()
    models = list(models)
    out: dict[str, list[dict[str, Any]]] = {}
    for name, rk in kernels.items():
        dropped = {canonical_key(k) for k in (exclude or {}).get(name, ())}
        seen: dict[str, dict[str, Any]] = {}
        for model in models:
            for key in rk.shapes_for(model, list(tokens)):
                problems = rk.key_spec.check_key(key) if key else ["the empty key {} is the default entry"]
                if problems:
                    raise ShapesError(
                        f"{name}.shapes_for({model.name}) returned {key!r}: " + "; ".join(problems)
                    )
                text = canonical_key(key)
                if text not in dropped:
                    seen.setdefault(text, dict(key))
        spec = rk.key_spec
        out[name] = sorted(seen.values(), key=lambda k: _sort_key(spec, k))
    return out


def model_shapes(
    specs: Sequence[str],
    tokens: str | None = None,
    kernel_names: Sequence[str] | None = None,
    *,
    dtype: str | None = None,
    exclude: Sequence[str] = (),
) -> tuple[list[ModelDims], dict[str, list[dict[str, Any]]]]:
    """What ``--model``, ``--tokens``, ``--kernel`` (and ``--dtype``, ``--exclude``) ask of
    `presetdb shapes` and `presetdb coverage` alike: the models read (catalog name, Hugging
    Face id or config.json), and their kernels' keys at those token counts (default
    `DEFAULT_TOKENS`), minus the keys in the `exclude` shapes files (`load_exclusions`)."""
    dims = [load_model(spec) for spec in specs]
    if dtype:
        dims = [d.with_dtype(dtype) for d in dims]
    counts = parse_tokens(tokens) if tokens is not None else list(DEFAULT_TOKENS)
    kernels = kernels_with_shapes(kernel_names)
    excluded: dict[str, list[dict[str, Any]]] = {}
    for pattern in exclude:
        for name, keys in load_exclusions(pattern, kernels).items():
            excluded.setdefault(name, []).extend(keys)
    return dims, shapes_for_models(dims, counts, kernels, excluded)


def load_exclusions(pattern: str, kernels: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Keys to leave out, per kernel, from a shapes file: ``{kernel}`` in `pattern` names
    one file per kernel (a tune grid); otherwise one file for all kernels (a JSON object
    ``{kernel: [keys]}``, or an array/lines applying to every kernel)."""
    from presetdb.offline.tune import load_shapes

    out: dict[str, list[dict[str, Any]]] = {}
    for name in kernels:
        path = Path(pattern.replace("{kernel}", name))
        if "{kernel}" in pattern and not path.exists():
            continue  # no grid for this kernel: nothing to leave out
        text = path.read_text(encoding="utf-8") if path.exists() else None
        if text is None:
            raise ShapesError(f"--exclude {pattern}: no such file")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "shapes" not in data:
            out[name] = list(data.get(name, ()))
        else:
            out[name] = load_shapes(path)
    return out


def dump(shapes: Mapping[str, list[dict[str, Any]]], fmt: str = "json") -> str:
    """One kernel: a JSON array (json) or one canonical key per line (lines), both read by
    ``tune --shapes``. Several: a JSON object {kernel: [keys]} (json) or 'KERNEL KEY' lines."""
    if fmt not in FORMATS:
        raise ShapesError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "json":
        data: Any = next(iter(shapes.values())) if len(shapes) == 1 else dict(shapes)
        return json.dumps(data, indent=1) + "\n"
    if len(shapes) == 1:
        return "".join(canonical_key(k) + "\n" for k in next(iter(shapes.values())))
    return "".join(f"{name} {canonical_key(k)}\n" for name, keys in shapes.items() for k in keys)
