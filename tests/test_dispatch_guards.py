"""Which of Helion's recorded guards the fast path re-checks per call."""

from __future__ import annotations

import helion

from presetdb.integrations.dispatch import _is_td_layout_guard, _uses_tensor_descriptors


def test_tensor_descriptor_use_is_read_from_the_compiled_config() -> None:
    assert _uses_tensor_descriptors(helion.Config(block_sizes=[1], indexing=["pointer", "tensor_descriptor"]))
    assert _uses_tensor_descriptors(helion.Config(block_sizes=[1], indexing="tensor_descriptor"))
    assert _uses_tensor_descriptors(helion.Config(block_sizes=[1], atomic_indexing=["tensor_descriptor"]))
    assert _uses_tensor_descriptors(helion.Config(block_sizes=[1], host_tensor_descriptors=True))
    assert _uses_tensor_descriptors(None)  # unknown: keep every guard
    assert not _uses_tensor_descriptors(helion.Config(block_sizes=[1], indexing=["pointer", "block_ptr"]))
    assert not _uses_tensor_descriptors(helion.Config(block_sizes=[1]))


def test_only_helions_layout_extractor_counts_as_a_layout_guard() -> None:
    def td_layout_extractor(args: object) -> object:
        return args

    def size_guard(args: object) -> object:
        return args

    class Wrapped:  # Helion wraps metadata extractors in a small callable object
        extractor = staticmethod(td_layout_extractor)

    assert _is_td_layout_guard(td_layout_extractor) and _is_td_layout_guard(Wrapped())
    assert not _is_td_layout_guard(size_guard)
