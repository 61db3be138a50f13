"""vLLM config trees in and out (issue 19): real vLLM files, all three of vLLM's layouts,
unregistered kernels imported unverified, `presetdb verify`, byte-faithful export,
provenance and per kernel x platform diffs. Real SQLite files, real Helion kernels
compiled by the Triton interpreter (TRITON_INTERPRET=1)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from import_fixtures import registry, rows
from typer.testing import CliRunner

from presetdb.cli import app
from presetdb.errors import ImportValidationError
from presetdb.offline.importers import import_files

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path | None:
    """../shared beside the repository (CI's layout), $PRESETDB_SHARED, or /work/shared."""
    env = os.environ.get("PRESETDB_SHARED", "").strip()
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "shared", REPO.parent / "shared", Path("/work/shared")]
    return next((c for c in candidates if (c / "fixtures" / "vllm_real").is_dir()), None)


SHARED = shared_dir()
REAL = SHARED / "fixtures" / "vllm_real" / "configs" if SHARED else None
needs_real = pytest.mark.skipif(REAL is None, reason="shared/fixtures/vllm_real not found (set PRESETDB_SHARED)")
REAL_FILES = (
    "per_token_group_fp8_quant_packed/nvidia_h100.json",
    "per_token_group_fp8_quant_packed/nvidia_b200.json",
    "fused_qk_norm_rope/nvidia_h100.json",
)


@pytest.fixture
def resolver() -> Any:
    return registry()


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, [*args])


def real_tree(tmp_path: Path) -> Path:
    """A scratch copy of the real tree (tests may add files beside it)."""
    assert REAL is not None
    dest = tmp_path / "vllm" / "configs"
    shutil.copytree(REAL, dest)
    return dest


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


# ---------------------------------------------------------------- byte-faithful round trip


@needs_real
@pytest.mark.parametrize("name", REAL_FILES)
def test_real_file_round_trips_byte_identical(fresh_db: Path, resolver: Any, tmp_path: Path, name: str) -> None:
    assert REAL is not None
    source = REAL / name
    report = import_files(fresh_db, [source], resolver=resolver)
    [part] = report.file_summaries
    assert part.verified is False and part.counts["added"] == len(json.loads(source.read_text()))
    kernel, platform = name.removesuffix(".json").split("/")
    result = cli("export", "--kernel", kernel, "--platform", platform, "--format", "vllm",
                 "--out", str(tmp_path / "out"), "--db", str(fresh_db))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / name).read_bytes() == source.read_bytes()


@needs_real
def test_whole_tree_in_and_out_and_reimport_changes_nothing(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    assert REAL is not None
    report = import_files(fresh_db, [REAL], resolver=resolver, source_rev="c524c13f27d5")
    assert sorted((s.kernel, s.platform) for s in report.file_summaries) == [
        ("fused_qk_norm_rope", "nvidia_h100"),
        ("per_token_group_fp8_quant_packed", "nvidia_b200"),
        ("per_token_group_fp8_quant_packed", "nvidia_h100"),
    ]
    assert all("file name" in s.platform_from for s in report.file_summaries)
    # provenance: the file's path in its tree, its sha256 and the source revision
    runs = rows(fresh_db, "SELECT source, source_file, source_path, source_sha256, source_rev FROM tuning_runs ORDER BY id")
    origin = (REAL.parent / "ORIGIN.txt").read_text()
    for source, file, path, sha, rev in runs:
        assert (source, rev, file) == ("import-vllm", "c524c13f27d5", Path(path).name)
        assert path.startswith("configs/") and sha in origin  # ORIGIN.txt lists each file's sha256
    snapshot = rows(fresh_db, "SELECT * FROM presets ORDER BY id") + rows(fresh_db, "SELECT * FROM tuning_runs")
    again = import_files(fresh_db, [REAL], resolver=resolver)
    assert again.counts["unchanged"] == report.counts["added"] == 87 and again.counts["added"] == 0
    assert rows(fresh_db, "SELECT * FROM presets ORDER BY id") + rows(fresh_db, "SELECT * FROM tuning_runs") == snapshot
    out = tmp_path / "out"
    result = cli("export", "--kernel", "all", "--platform", "all", "--format", "vllm", "--out", str(out), "--db", str(fresh_db))
    assert result.exit_code == 0, result.output
    for name in REAL_FILES:
        assert (out / name).read_bytes() == (REAL / name).read_bytes(), name


def test_maxnreg_null_and_field_order_round_trip(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    entries = [
        {"key": {"num_tokens": 8, "hidden_size": 1024}, "config": {"num_warps": 4, "block_sizes": [8], "maxnreg": None}},
        {"key": {}, "config": {"pid_type": "flat", "block_sizes": [16], "num_stages": 2}},
        {"key": {"num_tokens": 1, "hidden_size": 4096}, "config": {"block_sizes": [1], "num_sm_multiplier": 2}},
    ]
    source = write_json(tmp_path / "configs" / "toy_kernel" / "nvidia_h200.json", entries)
    import_files(fresh_db, [source], resolver=resolver)
    assert rows(fresh_db, "SELECT config FROM v_active_presets WHERE shape_key = '{\"hidden_size\":1024,\"num_tokens\":8}'") == [
        ('{"block_sizes":[8],"maxnreg":null,"num_warps":4}',)
    ]
    out = tmp_path / "out"
    assert cli("export", "-k", "toy_kernel", "-p", "nvidia_h200", "--format", "vllm", "--out", str(out), "--db", str(fresh_db)).exit_code == 0
    assert (out / "toy_kernel" / "nvidia_h200.json").read_bytes() == source.read_bytes()
    # a changed config supersedes; the file's new order comes back out too
    entries[2]["config"] = {"num_sm_multiplier": 4, "block_sizes": [2]}
    entries.reverse()
    write_json(source, entries)
    report = import_files(fresh_db, [source], resolver=resolver)
    assert (report.counts["superseded"], report.counts["unchanged"]) == (1, 2)
    assert cli("export", "-k", "toy_kernel", "-p", "nvidia_h200", "--format", "vllm", "--out", str(out), "--db", str(fresh_db)).exit_code == 0
    assert (out / "toy_kernel" / "nvidia_h200.json").read_bytes() == source.read_bytes()


# ---------------------------------------------------------------- trees: atomic, older layouts


@needs_real
def test_tree_import_is_all_or_nothing(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    tree = real_tree(tmp_path)
    write_json(tree / "zz_bad_kernel" / "nvidia_h100.json", [
        {"key": {"num_tokens": 1}, "config": {"block_sizes": [3], "num_warps": 4}},
        {"key": {"num_tokens": 2}, "config": {"block_sizes": [4], "no_such_field": 1}},
    ])
    with pytest.raises(ImportValidationError) as info:
        import_files(fresh_db, [tree], resolver=resolver)
    text = "\n".join(info.value.problems)
    assert "nvidia_h100.json: row 1 ([0]): config: block_sizes: [3] not power(s) of two" in text
    assert "row 2 ([1]): config: field(s) ['no_such_field'] unknown" in text
    # the three good files were not written either
    assert rows(fresh_db, "SELECT COUNT(*) FROM presets") == [(0,)]
    assert rows(fresh_db, "SELECT COUNT(*) FROM tuning_runs") == [(0,)]
    assert rows(fresh_db, "SELECT COUNT(*) FROM kernels") == [(0,)]


def test_string_keyed_and_per_kernel_layouts(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    configs = tmp_path / "configs"
    config = {"block_sizes": [16], "num_warps": 2}
    write_json(configs / "old_norm" / "nvidia_h100.json", {
        "hidden_size_2048_num_tokens_1": config,
        "hidden_size_4096_num_tokens_16": {"num_warps": 8, "block_sizes": [32]},
        "default": config,
    })
    write_json(configs / "oldest_act.json", {
        "nvidia_h100": {"d_512_m_8": config, "default": config},
        "nvidia_b200": {"d_512_m_8": {"block_sizes": [64]}},
    })
    report = import_files(fresh_db, [configs], resolver=resolver)
    layouts = {(s.kernel, s.platform): (s.layout, s.counts["added"], s.platform_from) for s in report.file_summaries}
    assert layouts == {
        ("old_norm", "nvidia_h100"): ("string-keyed", 3, "file name 'nvidia_h100'"),
        ("oldest_act", "nvidia_b200"): ("per-kernel", 1, "member 'nvidia_b200'"),
        ("oldest_act", "nvidia_h100"): ("per-kernel", 2, "member 'nvidia_h100'"),
    }
    keys = rows(fresh_db, "SELECT kernel, platform, shape_key FROM v_active_presets ORDER BY 1, 2, 3")
    assert keys == [
        ("old_norm", "nvidia_h100", '{"hidden_size":2048,"num_tokens":1}'),
        ("old_norm", "nvidia_h100", '{"hidden_size":4096,"num_tokens":16}'),
        ("old_norm", "nvidia_h100", "{}"),
        ("oldest_act", "nvidia_b200", '{"d":512,"m":8}'),
        ("oldest_act", "nvidia_h100", '{"d":512,"m":8}'),
        ("oldest_act", "nvidia_h100", "{}"),
    ]
    # inferred key schemas: the string's field order; token counts ceil, dims nearest
    schemas = dict(rows(fresh_db, "SELECT name, key_schema FROM kernels"))
    assert [(f["name"], f["policy"]) for f in json.loads(schemas["old_norm"])["fields"]] == [
        ("hidden_size", "nearest"), ("num_tokens", "ceil")
    ]
    assert [(f["name"], f["policy"]) for f in json.loads(schemas["oldest_act"])["fields"]] == [
        ("d", "nearest"), ("m", "ceil")
    ]
    # exported in vLLM's current layout, key fields in the string's order
    out = tmp_path / "out"
    assert cli("export", "-k", "old_norm", "-p", "nvidia_h100", "--format", "vllm", "--out", str(out), "--db", str(fresh_db)).exit_code == 0
    assert (out / "old_norm" / "nvidia_h100.json").read_text() == json.dumps([
        {"key": {"hidden_size": 2048, "num_tokens": 1}, "config": config},
        {"key": {"hidden_size": 4096, "num_tokens": 16}, "config": {"num_warps": 8, "block_sizes": [32]}},
        {"key": {}, "config": config},
    ], indent=2) + "\n"


@pytest.mark.parametrize(("key", "why"), [
    ("hidden_2048_4096", "two numbers in a row"),
    ("2048_num_tokens_1", "a number without a field name"),
    ("hidden_size_num_tokens", "ends with a name"),
    ("hidden_0128", "neither a name"),
])
def test_ambiguous_string_key_names_file_and_key(fresh_db: Path, resolver: Any, tmp_path: Path, key: str, why: str) -> None:
    bad = write_json(tmp_path / "configs" / "old_norm" / "nvidia_h100.json", {
        "hidden_1024_num_tokens_1": {"num_warps": 4}, key: {"num_warps": 4},
    })
    with pytest.raises(ImportValidationError, match=f"nvidia_h100.json: string key '{key}' is ambiguous: .*{why}"):
        import_files(fresh_db, [bad], resolver=resolver)
    assert rows(fresh_db, "SELECT COUNT(*) FROM presets") == [(0,)]


@needs_real
def test_key_policy_overrides(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    assert REAL is not None
    source = REAL / "fused_qk_norm_rope" / "nvidia_h100.json"
    result = cli("import", str(source), "--db", str(fresh_db), "--key-policy", "q_heads=exact", "--key-policy", "kv_heads=floor")
    assert result.exit_code == 0, result.output
    assert "UNVERIFIED" in result.output and "fused_qk_norm_rope on nvidia_h100" in result.output
    [(schema,)] = rows(fresh_db, "SELECT key_schema FROM kernels WHERE name = 'fused_qk_norm_rope'")
    assert [(f["name"], f["policy"]) for f in json.loads(schema)["fields"]] == [
        ("q_heads", "exact"), ("kv_heads", "floor"), ("num_tokens", "ceil")
    ]
    other = tmp_path / "other.db"
    assert cli("db", "upgrade", "--db", str(other)).exit_code == 0
    with pytest.raises(ImportValidationError, match="--key-policy hidden: no unregistered kernel"):
        import_files(other, [source], resolver=resolver, key_policies={"hidden": "ceil"})
    with pytest.raises(ImportValidationError, match="already stored with num_tokens=ceil"):
        import_files(fresh_db, [source], resolver=resolver, key_policies={"num_tokens": "nearest"})


# ---------------------------------------------------------------- verify and serving

KERNELS = textwrap.dedent(
    '''
    import torch, helion.language as hl
    from presetdb import register_kernel
    from presetdb.keys import KeyField, KeySpec

    def inputs(key, device="cpu", dtype=None):
        return (torch.randn(key.get("rows", 8), key.get("n", 64), device=device),)

    spec = KeySpec((KeyField("rows", "ceil", lambda x: x.shape[0]), KeyField("n", "nearest", lambda x: x.shape[1])))

    @register_kernel(name="{tag}_relu2d", key_spec=spec, reference=torch.relu, example_inputs=inputs)
    def relu2d(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        for tile in hl.tile(x.size()):
            out[tile] = torch.relu(x[tile])
        return out

    @register_kernel(name="{tag}_rowsum", key_spec=spec, reference=lambda x: x.sum(-1), example_inputs=inputs)
    def rowsum(x: torch.Tensor) -> torch.Tensor:
        out = torch.empty(x.size(0), dtype=x.dtype, device=x.device)
        for tile in hl.tile(x.size(0)):
            out[tile] = x[tile, :].sum(-1)
        return out
    '''
)
# 2-D tilings: right for relu2d (two hl.tile dims), wrong for rowsum (one).
TWO_D = [
    {"key": {"rows": 8, "n": 64}, "config": {"block_sizes": [8, 16], "num_warps": 4, "num_stages": 1}},
    {"key": {"rows": 32, "n": 64}, "config": {"block_sizes": [16, 32], "num_warps": 2, "num_stages": 1}},
]


@pytest.fixture
def kernel_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[str]:
    """A module registering <tag>_relu2d and <tag>_rowsum, not imported yet."""
    tag = f"iv{abs(hash(request.node.name)) % 10**8}"
    module = f"interop_kernels_{tag}"
    (tmp_path / f"{module}.py").write_text(KERNELS.replace("{tag}", tag))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield module
    from presetdb.helion.registry import unregister_kernel

    for name in (f"{tag}_relu2d", f"{tag}_rowsum"):
        unregister_kernel(name)
    sys.modules.pop(module, None)


def test_verify_marks_matching_configs_verified_and_quarantines_the_others(
    fresh_db: Path, resolver: Any, tmp_path: Path, kernel_module: str
) -> None:
    tag = kernel_module.removeprefix("interop_kernels_")
    tree = tmp_path / "configs"
    write_json(tree / f"{tag}_relu2d" / "cpu.json", TWO_D)
    write_json(tree / f"{tag}_rowsum" / "cpu.json", TWO_D)
    import_files(fresh_db, [tree], resolver=resolver)  # neither kernel is registered yet
    assert rows(fresh_db, "SELECT COUNT(*) FROM v_active_presets WHERE verified = 0") == [(4,)]

    result = cli("verify", "--module", kernel_module, "--db", str(fresh_db), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "2 verified, 2 quarantined, 0 left unverified" in result.output
    states = rows(fresh_db, "SELECT k.name, p.status, p.verified, p.status_reason FROM presets p "
                  "JOIN kernels k ON k.id = p.kernel_id ORDER BY k.name, p.id")
    assert [(k, s, v) for k, s, v, _ in states] == [
        (f"{tag}_relu2d", "active", 1), (f"{tag}_relu2d", "active", 1),
        (f"{tag}_rowsum", "quarantined", 0), (f"{tag}_rowsum", "quarantined", 0),
    ]
    assert all("block_sizes" in (reason or "") for k, s, _, reason in states if s == "quarantined")
    # nothing is left to verify: a second run changes nothing
    again = cli("verify", "--module", kernel_module, "--db", str(fresh_db), "--device", "cpu")
    assert again.exit_code == 0 and "0 verified, 0 quarantined" in again.output


def test_unverified_rows_are_not_served_until_verified(
    fresh_db: Path, resolver: Any, tmp_path: Path, kernel_module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from presetdb.runtime.verification import may_serve

    assert may_serve(True, False) and may_serve(False, True) and not may_serve(False, False)
    tag = kernel_module.removeprefix("interop_kernels_")
    name = f"{tag}_relu2d"
    source = write_json(tmp_path / "configs" / name / "cpu.json", TWO_D)
    import_files(fresh_db, [source], resolver=resolver)
    shape = '{"rows":30,"n":60}'
    # kernel not registered: a miss with a warning, even though a key matches
    before = cli("pick", "-k", name, "-p", "cpu", "--shape", shape, "--db", str(fresh_db))
    assert before.exit_code == 1
    assert f"is unverified and kernel '{name}' is not registered here: not served" in before.output
    shown = cli("show", str(rows(fresh_db, "SELECT MIN(preset_id) FROM v_active_presets")[0][0]), "--db", str(fresh_db))
    assert "UNVERIFIED" in shown.output
    # verified against the registered kernel: served, by the CLI and by a real call
    assert cli("verify", "--module", kernel_module, "--kernel", name, "--db", str(fresh_db), "--device", "cpu").exit_code == 0
    after = cli("pick", "-k", name, "-p", "cpu", "--shape", shape, "--db", str(fresh_db))
    assert after.exit_code == 0, after.output
    assert '{"n":64,"rows":32}' in after.output
    import torch

    module = sys.modules[kernel_module]
    monkeypatch.setenv("PRESETDB_PATH", str(fresh_db))
    monkeypatch.setenv("PRESETDB_PLATFORM", "cpu")
    x = torch.randn(30, 60)
    torch.testing.assert_close(module.relu2d(x), torch.relu(x))
    choice = module.relu2d.last_choice
    assert choice is not None and choice.preset.verified and choice.preset.shape_key == '{"n":64,"rows":32}'


def test_verify_with_unknown_module_kernel_is_a_clear_error(fresh_db: Path, resolver: Any, tmp_path: Path) -> None:
    source = write_json(tmp_path / "configs" / "never_registered" / "cpu.json", TWO_D)
    import_files(fresh_db, [source], resolver=resolver)
    result = cli("verify", "--module", "presetdb.kernels", "--kernel", "never_registered", "--db", str(fresh_db))
    assert result.exit_code != 0
    assert "not registered by the modules loaded" in str(result.exception) + result.output
    assert rows(fresh_db, "SELECT COUNT(*) FROM v_active_presets WHERE verified = 0") == [(2,)]


# ---------------------------------------------------------------- audits, manifest, diff


@needs_real
def test_audit_and_diff_between_two_tree_imports(tmp_path: Path, resolver: Any) -> None:
    old_tree = real_tree(tmp_path / "old")
    new_tree = real_tree(tmp_path / "new")
    path = new_tree / "fused_qk_norm_rope" / "nvidia_h100.json"
    entries = json.loads(path.read_text())
    entries[0]["config"]["num_warps"] = 8  # a retuned entry
    entries.append({"key": {"q_heads": 96, "kv_heads": 12, "num_tokens": 1}, "config": entries[1]["config"]})
    path.write_text(json.dumps(entries, indent=2) + "\n")
    dbs = []
    for name, tree, rev in (("old", old_tree, "aaa111"), ("new", new_tree, "bbb222")):
        db = tmp_path / f"{name}.db"
        assert cli("db", "upgrade", "--db", str(db)).exit_code == 0
        result = cli("import", str(tree), "--db", str(db), "--source-rev", rev)
        assert result.exit_code == 0, result.output
        dbs.append(db)
    audit = cli("audit", "unverified", "--db", str(dbs[0]), "--format", "json")
    assert audit.exit_code == 0, audit.output
    found = {(r["kernel"], r["platform"]): r["unverified"] for r in json.loads(audit.output)}
    assert found[("fused_qk_norm_rope", "nvidia_h100")] == 45
    diff = cli("diff", str(dbs[0]), str(dbs[1]), "--per-pair", "--format", "json")
    assert diff.exit_code == 0, diff.output
    data = json.loads(diff.output)
    assert (data["old_revs"], data["new_revs"]) == (["aaa111"], ["bbb222"])
    pairs = {(p["kernel"], p["platform"]): (p["added"], p["removed"], p["changed"], p["unchanged"]) for p in data["pairs"]}
    assert pairs[("fused_qk_norm_rope", "nvidia_h100")] == (1, 0, 1, 44)
    assert pairs[("per_token_group_fp8_quant_packed", "nvidia_b200")] == (0, 0, 0, 21)


def test_build_manifest_counts_unverified(tmp_path: Path) -> None:
    from presetdb.offline.build import unverified_counts

    db = tmp_path / "x.db"
    assert cli("db", "upgrade", "--db", str(db)).exit_code == 0
    source = write_json(tmp_path / "configs" / "toy_kernel" / "nvidia_h100.json", TWO_D)
    assert cli("import", str(source), "--db", str(db)).exit_code == 0
    assert unverified_counts(db) == {"toy_kernel/nvidia_h100": 2}
