"""`triton` as the host code of a published runner sees it.

Helion's generated host function computes launch sizes with Triton's helpers, e.g.
``_RDIM_SIZE_1 = max(triton.next_power_of_2(_), 1)`` and ``triton.cdiv(n, block)``.
In Triton these are `ConstexprFunction`s, written for use inside kernels: each host call
imports a module, rebuilds its arguments into a list and a dict to unwrap constexprs,
then calls the plain function. That costs about 2 µs per call, as much as allocating
the output tensor, on every launch of a small kernel.

`HostTriton` forwards every attribute to Triton, except that each `ConstexprFunction`
becomes a function that calls Triton's plain function directly when every argument is
a plain int (which is what the wrapper would do for them: unwrap nothing, call the
function, return its result), and calls the wrapper itself for anything else. Results
are therefore the same; only the wrapper's cost goes. presetdb gives published runners
(copies of Helion's host function, see `presetdb.helion._accel.dispatch.published_runner`)
this object as their global ``triton``; Helion's own function is left as it is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class HostTriton:
    """`triton`, with its constexpr helpers callable at plain-function cost on ints."""

    def __init__(self, triton: Any, constexpr_function_type: type | None) -> None:
        self.__wrapped__ = triton  # the module this view forwards to (functools' convention)
        self._unwrapped: list[str] = []
        if constexpr_function_type is None:
            return  # a Triton whose helpers are plain functions already
        for name, helper in vars(triton).items():
            raw = getattr(helper, "fn", None)
            if isinstance(helper, constexpr_function_type) and callable(helper) and callable(raw):
                setattr(self, name, _on_ints(helper, raw))
                self._unwrapped.append(name)

    def __getattr__(self, name: str) -> Any:  # everything else is Triton's own
        return getattr(self.__wrapped__, name)

    def __repr__(self) -> str:
        return f"<triton for host code; plain on ints: {', '.join(self._unwrapped) or 'none'}>"


def _on_ints(helper: Callable[..., Any], raw: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(raw)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not kwargs:
            for a in args:
                if type(a) is not int:
                    break
            else:
                return raw(*args)
        return helper(*args, **kwargs)  # constexprs, bools, keywords: Triton's own wrapper

    call.__wrapped__ = helper  # type: ignore[attr-defined]
    return call


@functools.cache
def host_triton() -> HostTriton:
    """The shared `HostTriton` for the installed Triton."""
    import triton

    from presetdb.helion._accel import internals

    return HostTriton(triton, internals.constexpr_function_type())
