"""Which stored rows may serve a call: the rule for rows imported *unverified*.

A row imported for a kernel no registered module provided (``presets.verified = 0``) was
only syntax-checked. MIOpen's rule for its find-db applies: such a row is served only
when its kernel is registered in this process, and then only after it passes the same
validation every stored config passes at first use (Helion's ConfigSpec and compilation;
a failure quarantines it). Anything else is a miss, with a warning.

Torch-free, so the picker and the CLI can use it.
"""

from __future__ import annotations

# The hot path (helion/registry.py) resolves registered kernels only, and it already
# validates and compiles a stored config before its first launch, quarantining it on
# failure: there an unverified row is servable. Callers that resolve for a kernel that
# may not be registered (the CLI's `pick`, tools) must ask `may_serve` first.


class UnverifiedRowWarning(UserWarning):
    """An unverified row was not served because its kernel is not registered."""


def may_serve(verified: bool, kernel_registered: bool) -> bool:
    """Whether a stored row may be offered to a call at all (validation at first use
    still follows for every row)."""
    return bool(verified) or kernel_registered


def refusal(kernel: str, shape_key: str, platform: str, preset_id: int) -> str:
    """The warning text for an unverified row that is not served."""
    return (
        f"presetdb: preset {preset_id} ({kernel} {shape_key} on {platform}) is unverified and "
        f"kernel {kernel!r} is not registered here: not served (a miss). Register the kernel "
        f"(PRESETDB_KERNEL_MODULES) and run `presetdb verify --module MODULE --kernel {kernel}`."
    )


__all__ = ["UnverifiedRowWarning", "may_serve", "refusal"]
