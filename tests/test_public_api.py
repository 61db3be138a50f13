"""The public API: `presetdb.__all__` names resolve, and importing presetdb (or its store,
runtime and audits) never imports torch, helion or triton."""

from __future__ import annotations

import subprocess
import sys

import presetdb


def test_every_public_name_resolves() -> None:
    for name in presetdb.__all__:
        assert getattr(presetdb, name) is not None, name
    assert presetdb.register_kernel.__module__ == "presetdb.helion.registry"
    assert presetdb.KeySpec.__module__ == "presetdb.keys"


def test_the_store_runtime_and_cli_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import presetdb, presetdb.store.repository, presetdb.runtime.picker, presetdb.audit, presetdb.cli\n"
        "heavy = sorted(m for m in ('torch', 'helion', 'triton') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
