"""Which of Helion's recorded guards the fast path re-checks per call."""

from __future__ import annotations

import helion

from presetdb.helion._accel.dispatch import _uses_tensor_descriptors
from presetdb.helion._accel.internals import TD_GUARD_NAMES
from presetdb.helion._accel.internals import is_td_guard as _is_td_guard


def test_tensor_descriptor_use_is_read_from_the_compiled_config() -> None:
    assert _uses_tensor_descriptors(helion.Config(block_sizes=[1], indexing=["pointer", "tensor_descriptor"]))
    assert _uses_tensor_descriptors(helion.Config(block_sizes=[1], indexing="tensor_descriptor"))
    assert _uses_tensor_descriptors(helion.Config(block_sizes=[1], atomic_indexing=["tensor_descriptor"]))
    assert _uses_tensor_descriptors(helion.Config(block_sizes=[1], host_tensor_descriptors=True))
    assert _uses_tensor_descriptors(None)  # unknown: keep every guard
    assert not _uses_tensor_descriptors(helion.Config(block_sizes=[1], indexing=["pointer", "block_ptr"]))
    assert not _uses_tensor_descriptors(helion.Config(block_sizes=[1]))


def test_only_helions_tensor_descriptor_extractors_count_as_td_guards() -> None:
    def td_layout_extractor(args: object) -> object:
        return args

    def td_alignment_extractor(args: object) -> object:
        return args

    def size_guard(args: object) -> object:
        return args

    class Wrapped:  # Helion wraps metadata extractors in a small callable object
        extractor = staticmethod(td_layout_extractor)

    assert _is_td_guard(td_layout_extractor) and _is_td_guard(Wrapped()) and _is_td_guard(td_alignment_extractor)
    assert not _is_td_guard(size_guard)


def test_the_guard_names_exist_in_the_pinned_helion() -> None:
    """The filter goes by Helion's function names: a Helion that renames them must fail here."""
    import importlib
    import inspect

    # `helion.runtime.kernel` the attribute is the decorator; the module is this
    source = inspect.getsource(importlib.import_module("helion.runtime.kernel"))
    for name in TD_GUARD_NAMES:
        assert f"def {name}(" in source, name
    # both are only built for guards that pass Helion's per-config activity check
    assert source.count("if not guard_is_active(guard):") >= 2
