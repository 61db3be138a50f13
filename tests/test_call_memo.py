"""The call memo: a repeated call (same exact metadata) goes straight to the runner a
previous call used, and never when that answer may have changed (the picker's data,
a quarantine, Helion's specialization state), for misses, aliasing or guards the memo
cannot decide. Real Helion kernels in the Triton interpreter, configs from a real db."""

from __future__ import annotations

from typing import Any

import pytest
from helion_fixtures import (
    DEVICE,
    assert_close,
    block_sizes_of,
    install_interpreter_shims,
    preset_store_fixture,  # noqa: F401  (provides the preset_store fixture)
    recorded_misses,
    require_interpreter,
)

require_interpreter()
install_interpreter_shims()

import torch

import presetdb.kernels  # noqa: F401  (registers the kernels)
from presetdb.helion import call, memo
from presetdb.helion._accel import dispatch
from presetdb.helion._accel.dispatch import exact_key
from presetdb.helion.registry import get_kernel
from presetdb.runtime.picker import get_picker

EPS = 1e-6


class _Subclass(torch.Tensor):
    """A tensor subclass (like FakeTensor or DTensor): never memoized."""


class Counter:
    """Counts calls of one method (monkeypatched, calls through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        self.calls = 0
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def _rms_with_two_rows(store: Any) -> Any:
    rms = get_kernel("rms_norm")
    rms.reset_runtime()
    for tokens, blocks in ((8, [2]), (64, [4])):
        key = {"dtype": "float32", "hidden": 16, "num_tokens": tokens}
        store.add("rms_norm", rms.key_spec, key, {"block_sizes": blocks})
    return rms


def _served_blocks(rms: Any, *args: Any) -> list[int]:
    """Block sizes of the runner the call memo holds for these arguments."""
    hit = rms.memo.calls[exact_key(args)]
    return block_sizes_of(hit[3].bound)


def test_repeated_calls_are_served_by_the_memo(preset_store, monkeypatch) -> None:
    rms = _rms_with_two_rows(preset_store)
    x, w = torch.randn(5, 16, device=DEVICE), torch.randn(16, device=DEVICE)
    for _ in range(2):  # Helion's path publishes the runner; the bucketed lookup memoizes it
        assert_close(rms(x, w, EPS), rms.reference(x, w, EPS), torch.float32)
    assert len(rms.memo.calls) == 1 and _served_blocks(rms, x, w, EPS) == [2]
    resolve = Counter(monkeypatch, get_picker(), "resolve")
    lookup = Counter(monkeypatch, dispatch.RunnerCache, "lookup")
    for _ in range(3):
        x = torch.randn(5, 16, device=DEVICE)  # new data, same metadata
        assert_close(rms(x, w, EPS), rms.reference(x, w, EPS), torch.float32)
    assert (resolve.calls, lookup.calls) == (0, 0)
    assert rms.last_choice is not None and rms.last_choice.preset.key["num_tokens"] == 8
    # the op through the dispatcher uses the same memo
    assert_close(torch.ops.presetdb.rms_norm(x, w, EPS), rms.reference(x, w, EPS), torch.float32)
    assert (resolve.calls, lookup.calls) == (0, 0)


def test_a_quarantine_moves_memoized_calls_to_the_next_row(preset_store, monkeypatch) -> None:
    monkeypatch.setenv("PRESETDB_ON_FAR", "nearest")  # the 64-row key is far from 5 rows: serve it anyway
    rms = _rms_with_two_rows(preset_store)
    x, w = torch.randn(5, 16, device=DEVICE), torch.randn(16, device=DEVICE)
    for _ in range(3):
        rms(x, w, EPS)
    first = rms.last_choice
    assert first is not None and _served_blocks(rms, x, w, EPS) == [2]
    get_picker().quarantine(first, "tests: stop serving this row", persist=False)
    for _ in range(3):  # the memo's epoch is stale: resolve again, then memoize the new answer
        assert_close(rms(x, w, EPS), rms.reference(x, w, EPS), torch.float32)
    assert rms.last_choice is not None and rms.last_choice.preset.key["num_tokens"] == 64
    assert _served_blocks(rms, x, w, EPS) == [4]


def test_the_picker_epoch_changes_when_its_stores_change(preset_store, monkeypatch) -> None:
    picker = get_picker()
    before = picker.epoch()
    assert picker.epoch() is before
    monkeypatch.setattr(picker, "_watch", [object()])  # a mutable layer to poll
    monkeypatch.setattr(picker, "_check_changed", picker.invalidate)  # "its data_version moved"
    picker._next_check = 0.0
    assert picker.epoch() is not before


def test_a_reset_helion_kernel_is_not_served_from_the_memo(preset_store, monkeypatch) -> None:
    rms = _rms_with_two_rows(preset_store)
    x, w = torch.randn(5, 16, device=DEVICE), torch.randn(16, device=DEVICE)
    for _ in range(3):
        rms(x, w, EPS)
    assert rms.memo.calls
    rms.bound(x, w, EPS).kernel.reset()  # Helion's generation moves; its old runners are retired
    slow = Counter(monkeypatch, call, "through_helion")
    for _ in range(2):
        assert_close(rms(x, w, EPS), rms.reference(x, w, EPS), torch.float32)
    assert slow.calls == 1  # through Helion once, then a fresh runner


def test_misses_are_counted_every_call_never_memoized(preset_store) -> None:
    rms = get_kernel("rms_norm")
    rms.reset_runtime()
    x, w = torch.randn(3, 8, device=DEVICE), torch.randn(8, device=DEVICE)
    with pytest.warns(Warning, match="no stored config"):
        out = rms(x, w, EPS)  # warned once per key
    for _ in range(3):
        out = rms(x, w, EPS)
    assert_close(out, rms.reference(x, w, EPS), torch.float32)
    assert rms.memo.calls == {}
    (miss,) = recorded_misses(preset_store.overlay, "rms_norm").values()
    assert miss.count == 4


def test_entries_with_guards_the_memo_cannot_decide_stay_on_the_bucketed_path(preset_store, monkeypatch) -> None:
    """A guard presetdb cannot read as a size/stride relation (e.g. a pointer alignment
    fact) depends on more than the exact metadata: such runners are never memoized."""
    monkeypatch.setattr(dispatch, "fast_guard", lambda extractor, nargs: None)
    rms = _rms_with_two_rows(preset_store)
    x, w = torch.randn(5, 16, device=DEVICE), torch.randn(16, device=DEVICE)
    lookup = Counter(monkeypatch, dispatch.RunnerCache, "lookup")
    for _ in range(4):
        assert_close(rms(x, w, EPS), rms.reference(x, w, EPS), torch.float32)
    entry = rms.entry_for(x, w, EPS)
    assert entry is not None and not entry.memoizable and entry.guards
    assert rms.memo.calls == {} and lookup.calls >= 3


def test_exact_key_separates_what_can_change_a_call() -> None:
    x, y = torch.randn(4, 6), torch.randn(4, 6)
    base = exact_key((x, y, 1e-6, 3))
    assert base is not None
    assert exact_key((torch.randn(4, 6), torch.randn(4, 6), 1e-6, 3)) == base  # data is not metadata
    assert exact_key((x, y, 1e-5, 3)) == base  # floats by type (a per-call scale keeps hitting)
    assert exact_key((x, y, 1e-5, 3), floats_by_value=True) != exact_key((x, y, 1e-6, 3), floats_by_value=True)
    different = [
        (torch.randn(4, 7), y, 1e-6, 3),  # a size
        (torch.randn(6, 4).t(), y, 1e-6, 3),  # strides (same shape, not contiguous)
        (x.double(), y, 1e-6, 3),  # dtype
        (x, y, 1e-6, 4),  # an int's value
        (x, y, 1e-6, True),  # bool vs int (hash alike)
        (x, y, 1e-6, 3.0),  # float vs int
    ]
    for args in different:
        assert exact_key(args) not in (None, base), args
    # aliasing (side by side or not), subclasses and unknown types: no memo
    assert exact_key((x, x)) is None
    assert exact_key((x, y, x)) is None
    assert exact_key((x, y.as_subclass(_Subclass))) is None
    assert exact_key((x, [y])) is None
    assert exact_key((x, object())) is None
    assert exact_key((torch.nn.Parameter(x), y)) is not None


def test_the_memo_is_bounded_and_starts_over(preset_store, monkeypatch) -> None:
    monkeypatch.setattr(memo, "CALL_MEMO_LIMIT", 2)
    monkeypatch.setenv("PRESETDB_MAX_DISTANCE", "num_tokens=2")  # 3 rows -> the 8-row key is near
    rms = _rms_with_two_rows(preset_store)
    w = torch.randn(16, device=DEVICE)
    for rows in (3, 4, 5, 6, 7):  # five exact shapes, one bucketed runner
        x = torch.randn(rows, 16, device=DEVICE)
        for _ in range(2):
            assert_close(rms(x, w, EPS), rms.reference(x, w, EPS), torch.float32)
        assert 1 <= len(rms.memo.calls) <= 2
    assert exact_key((x, w, EPS)) in rms.memo.calls  # the latest shape is remembered
