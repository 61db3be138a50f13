"""HostTriton: Triton's host-side helpers at plain-function cost, with Triton's results."""

from __future__ import annotations

import types
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

triton = pytest.importorskip("triton")
from triton.runtime.jit import ConstexprFunction

from presetdb.helion._accel.host_triton import HostTriton, host_triton

INTS = st.integers(min_value=-(2**40), max_value=2**62)


def test_every_constexpr_helper_is_unwrapped_and_the_rest_is_tritons_own() -> None:
    view = host_triton()
    helpers = {name for name, value in vars(triton).items() if isinstance(value, ConstexprFunction)}
    assert {"next_power_of_2", "cdiv"} <= helpers  # what Helion's host code calls
    for name in helpers:
        assert getattr(view, name) is not getattr(triton, name)
        assert getattr(view, name).__wrapped__ is getattr(triton, name)
    assert view.jit is triton.jit and view.Config is triton.Config and view.language is triton.language


@given(n=INTS)
def test_next_power_of_2_gives_tritons_answer(n: int) -> None:
    assert host_triton().next_power_of_2(n) == triton.next_power_of_2(n)


@given(x=INTS, y=INTS.filter(lambda v: v != 0))
def test_cdiv_gives_tritons_answer(x: int, y: int) -> None:
    assert host_triton().cdiv(x, y) == triton.cdiv(x, y)


def test_anything_but_plain_ints_goes_through_tritons_wrapper() -> None:
    """constexprs are unwrapped by Triton's wrapper; bools and keywords reach it too."""
    from triton.language import constexpr

    calls: list[tuple[Any, ...]] = []

    class Recording(ConstexprFunction):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return super().__call__(*args, **kwargs)

    def double(n: int) -> int:
        return 2 * n

    module = type("module", (), {"double": Recording(double)})
    view = HostTriton(module, ConstexprFunction)
    assert view.double(21) == 42 and calls == []  # plain int: the function itself
    assert view.double(constexpr(21)) == 42 and len(calls) == 1
    assert view.double(True) == 2 and len(calls) == 2
    assert view.double(n=4) == 8 and len(calls) == 3


def test_a_triton_without_constexpr_functions_is_forwarded_as_is() -> None:
    view = HostTriton(triton, None)
    assert view.next_power_of_2 is triton.next_power_of_2 and view.cdiv is triton.cdiv


def _host(n: int, *, _launcher: Any = None) -> tuple[int, Any]:
    return triton.next_power_of_2(n), _launcher


def _host_function(module_triton: Any) -> Any:
    """A stand-in for Helion's generated host function, in a module whose `triton` is given."""
    host = types.FunctionType(_host.__code__, {**globals(), "triton": module_triton}, "host")
    host.__kwdefaults__ = {"_launcher": None}
    return host


def test_published_runners_see_host_triton_only_in_place_of_triton_itself() -> None:
    from presetdb.helion._accel.dispatch import published_runner

    host = _host_function(triton)
    launcher = object()
    run = published_runner(host, launcher)
    assert run.__globals__["triton"] is host_triton() and host_triton().__wrapped__ is triton
    assert run(1000) == (1024, launcher)
    assert host.__globals__["triton"] is triton and host(1000) == (1024, None)  # Helion's own: untouched

    other = type("other", (), {"next_power_of_2": staticmethod(lambda n: -n)})
    foreign = published_runner(_host_function(other), None)
    assert foreign.__globals__["triton"] is other and foreign(5) == (-5, None)
