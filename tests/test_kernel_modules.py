"""A project's own kernel reaches the offline tools through --module /
PRESETDB_KERNEL_MODULES (TRITON_INTERPRET=1, real Helion, CPU search)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from presetdb.cli import app

KERNEL_MODULE = textwrap.dedent(
    '''
    import torch, helion.language as hl
    from presetdb import register_kernel
    from presetdb.keys import KeyField, KeySpec

    spec = KeySpec((KeyField("dtype", "exact", lambda x: str(x.dtype).removeprefix("torch.")),
                    KeyField("n", "nearest", lambda x: x.shape[1]),
                    KeyField("rows", "ceil", lambda x: x.shape[0])))

    @register_kernel(name="user_relu_{tag}", key_spec=spec, reference=torch.relu,
                     example_inputs=lambda key, device="cpu", dtype=None: (torch.randn(key["rows"], key["n"], device=device),))
    def user_relu(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        for tile in hl.tile(x.size()):
            out[tile] = torch.relu(x[tile])
        return out
    '''
)


@pytest.mark.parametrize("how", ["option", "env"])
def test_tune_and_import_find_a_user_kernel_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    from presetdb.helion.registry import unregister_kernel
    from presetdb.store import migrate

    name = f"user_relu_{how}"
    (tmp_path / f"userkernels_{how}.py").write_text(KERNEL_MODULE.replace("{tag}", how))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    args = ["tune", name, "--grid", "dtype=float32;n=64;rows=8", "--device", "cpu", "--search", "sample",
            "--out", str(tmp_path / "r.json")]
    if how == "option":
        args += ["--module", f"userkernels_{how}"]
    else:
        monkeypatch.setenv("PRESETDB_KERNEL_MODULES", f"userkernels_{how}")
    try:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        doc = json.loads((tmp_path / "r.json").read_text())
        assert doc["kernel"]["name"] == name
        assert [e["key"] for e in doc["entries"]] == [{"dtype": "float32", "n": 64, "rows": 8}]

        # import validates the config against the user's kernel (found the same way)
        monkeypatch.setenv("PRESETDB_KERNEL_MODULES", f"userkernels_{how}")
        db = tmp_path / "x.db"
        migrate.upgrade(db, seed_data=False)
        result = CliRunner().invoke(app, ["import", str(tmp_path / "r.json"), "--db", str(db)])
        assert result.exit_code == 0, result.output
        store = migrate.open_store(db, "ro")
        with store.read() as session:
            from presetdb.store.repository import Repository

            assert [p.key for p in Repository(session).active_presets(name, "cpu")] == [
                {"dtype": "float32", "n": 64, "rows": 8}
            ]
        store.dispose()
    finally:
        unregister_kernel(name)
        sys.modules.pop(f"userkernels_{how}", None)
