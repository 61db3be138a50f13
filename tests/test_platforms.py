"""Platform resolution against real migrated dbs (aliases, fallbacks from the platform
catalog), and how the picker walks the fallback chain. No GPU needed: devices are given
as `DeviceInfo`; one test asks torch what this machine really is."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from picker_fixtures import (
    A100,
    B200,
    CPU,
    H100,
    H100_DEVICE,
    H200,
    RMS_SPEC,
    P,
    make_db,
    picker_factory,
    rms_key,
)

from presetdb.runtime.picker import build_picker
from presetdb.runtime.platforms import (
    DeviceInfo,
    PlatformInfo,
    derive_platform_name,
    detect_device,
    resolve_platform,
)
from presetdb.settings import Settings
from presetdb.store import migrate
from presetdb.store.repository import Repository

make_picker_fixture = pytest.fixture(picker_factory, name="make_picker")


def platform_of(
    paths: list[Path], device: DeviceInfo, override: str | None = None
) -> PlatformInfo:
    stores = [migrate.open_store(p, "ro") for p in paths]
    try:
        with ExitStack() as stack:
            repos = [Repository(stack.enter_context(s.read())) for s in stores]
            return resolve_platform(repos, override=override, device=device)
    finally:
        for s in stores:
            s.dispose()


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    """A db with only the platform catalog (migration 0002) and one extra Hopper part."""
    return make_db(
        tmp_path / "catalog.db",
        platforms=[
            {
                "name": "nvidia_h100_lab",
                "vendor": "nvidia",
                "device_name": "Lab Hopper 7",
                "compute_capability": "9.0",
            }
        ],
    )


# ---------------------------------------------------------------------------- names


def test_sku_string_maps_to_its_family_through_the_db_alias(catalog: Path) -> None:
    info = platform_of([catalog], H100_DEVICE)
    assert (info.platform, info.how) == (H100, "alias")
    assert info.chain[:2] == (H100, H200)
    assert info.device == H100_DEVICE
    # aliases are case- and whitespace-insensitive
    assert (
        platform_of(
            [catalog], replace(H100_DEVICE, device_name=" nvidia h100 pcie ")
        ).platform
        == H100
    )
    assert (
        platform_of(
            [catalog], replace(H100_DEVICE, device_name="NVIDIA GH200 480GB")
        ).platform
        == H200
    )
    # an alias added to a db (ensure_platform stores the device string) is used too
    assert (
        platform_of(
            [catalog], DeviceInfo("Lab Hopper 7", "nvidia", "9.0", 100)
        ).platform
        == "nvidia_h100_lab"
    )


def test_unknown_sku_of_a_known_family_is_derived(catalog: Path) -> None:
    info = platform_of([catalog], DeviceInfo("NVIDIA H100 XYZ", "nvidia", "9.0", 132))
    assert (info.platform, info.how) == (H100, "derived")
    assert info.chain[:2] == (H100, H200)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("NVIDIA H100 XYZ", H100),
        ("NVIDIA H800 PCIe", H100),
        ("NVIDIA H200 NVL 2", H200),
        ("NVIDIA B200 SXM6", B200),
        ("NVIDIA A100-SXM4-80GB-XL", A100),
        ("AMD Instinct MI300X OAM", "amd_instinct_mi300x"),
        ("NVIDIA H20", "nvidia_h20"),  # not an H200
        ("Contoso Accelerator 9000 (rev 2)", "contoso_accelerator_9000_rev_2"),
        ("", "unknown"),
    ],
)
def test_derive_platform_name(device: str, expected: str) -> None:
    assert derive_platform_name(device) == expected


def test_unknown_device_gets_a_slug_and_no_fallbacks(catalog: Path) -> None:
    info = platform_of(
        [catalog], DeviceInfo("Contoso Accelerator 9000", "contoso", "c1", 8)
    )
    assert (info.platform, info.how, info.chain) == (
        "contoso_accelerator_9000",
        "derived",
        ("contoso_accelerator_9000",),
    )


def test_override_wins_over_the_device(catalog: Path) -> None:
    info = platform_of([catalog], H100_DEVICE, override=B200)
    assert (info.platform, info.how) == (B200, "PRESETDB_PLATFORM")
    assert info.chain == (B200,)  # Blackwell: no ranked fallbacks, no other 10.0 part
    assert info.device == H100_DEVICE  # what the machine is, still reported


def test_override_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = make_db(
        tmp_path / "dep.db", [P("rms_norm", H200, rms_key(), {"h200": 1})]
    )
    monkeypatch.setenv("PRESETDB_PATH", str(deployment))
    monkeypatch.setenv("PRESETDB_PLATFORM", H200)
    picker = build_picker(Settings.from_env(), device=H100_DEVICE)
    try:
        assert (picker.platform, picker.info.how) == (H200, "PRESETDB_PLATFORM")
        assert picker.chain[:2] == (H200, H100)
        choice = picker.resolve("rms_norm", RMS_SPEC, ("bfloat16", 4096, 128))
        assert (
            choice is not None and not choice.fallback and choice.config == {"h200": 1}
        )
    finally:
        picker.close()


def test_detect_device_on_this_machine(catalog: Path) -> None:
    # The one test that imports torch: whatever this machine is, it resolves to something.
    device = detect_device()
    info = platform_of([catalog], device)
    if device.vendor == "cpu":
        assert (device.device_name, info.platform, info.how) == ("cpu", "cpu", "alias")
    else:
        assert info.platform and info.chain[0] == info.platform


# ---------------------------------------------------------------------------- chains


def test_ranked_fallbacks_then_same_compute_capability(
    catalog: Path, tmp_path: Path
) -> None:
    info = platform_of([catalog], H100_DEVICE, override=H200)
    # ranked fallback first, then the other 9.0 parts (by name)
    assert info.chain == (H200, H100, "nvidia_h100_lab")
    unknown_hopper = platform_of(
        [catalog], DeviceInfo("NVIDIA H20", "nvidia", "9.0", 78)
    )
    assert unknown_hopper.chain == ("nvidia_h20", H100, "nvidia_h100_lab", H200)
    # AMD: the other parts of the same gfx arch
    amd = platform_of([catalog], DeviceInfo("AMD Instinct MI308X", "amd", "gfx942", 80))
    assert amd.chain == (
        "amd_instinct_mi308x",
        "amd_instinct_mi300x",
        "amd_instinct_mi325x",
    )


def test_fallbacks_are_merged_across_dbs_in_layer_order(
    catalog: Path, tmp_path: Path
) -> None:
    other = make_db(tmp_path / "other.db", fallbacks={H200: [A100, H100]})
    info = platform_of([other, catalog], H100_DEVICE, override=H200)
    assert info.chain == (H200, A100, H100, "nvidia_h100_lab")


def test_h200_served_by_h100_says_fallback_platform(
    make_picker: Any, tmp_path: Path
) -> None:
    path = make_db(tmp_path / "dep.db", [P("rms_norm", H100, rms_key(), {"h100": 1})])
    picker = make_picker(deployment=path, platform=H200)
    choice = picker.resolve("rms_norm", RMS_SPEC, ("bfloat16", 4096, 128))
    assert choice is not None
    assert (choice.platform, choice.requested_platform, choice.match) == (
        H100,
        H200,
        "exact",
    )
    assert choice.fallback and choice.kind == "fallback-platform"
    assert "fallback platform nvidia_h100 for nvidia_h200" in choice.describe()


def test_same_compute_capability_serves_an_unknown_part(
    make_picker: Any, tmp_path: Path
) -> None:
    path = make_db(tmp_path / "dep.db", [P("rms_norm", H200, rms_key(), {"h200": 1})])
    picker = make_picker(
        deployment=path,
        platform=None,
        device=DeviceInfo("NVIDIA H20", "nvidia", "9.0", 78),
    )
    assert picker.platform == "nvidia_h20"
    choice = picker.resolve("rms_norm", RMS_SPEC, ("bfloat16", 4096, 128))
    assert choice is not None and (choice.platform, choice.kind) == (
        H200,
        "fallback-platform",
    )
    # a part of another capability gets nothing, rather than a Hopper config
    ampere = make_picker(
        deployment=path,
        platform=None,
        device=DeviceInfo("NVIDIA A10", "nvidia", "8.6", 72),
    )
    assert ampere.resolve("rms_norm", RMS_SPEC, ("bfloat16", 4096, 128)) is None


def test_own_platform_nearest_beats_fallback_exact(
    make_picker: Any, tmp_path: Path
) -> None:
    path = make_db(
        tmp_path / "dep.db",
        [
            P("rms_norm", H200, rms_key(hidden=2048), {"own": 1}),
            P("rms_norm", H100, rms_key(hidden=4096), {"other": 1}),
            P(
                "rms_norm",
                H100,
                rms_key(dtype="float16", hidden=4096),
                {"other_fp16": 1},
            ),
        ],
    )
    picker = make_picker(deployment=path, platform=H200)
    choice = picker.resolve("rms_norm", RMS_SPEC, ("bfloat16", 4096, 128))
    assert choice is not None
    assert (
        choice.config,
        choice.platform,
        choice.kind,
        choice.distances["hidden"],
    ) == ({"own": 1}, H200, "nearest", 1.0)
    # an exact miss on the own platform's categorical field does go to the fallback
    fp16 = picker.resolve("rms_norm", RMS_SPEC, ("float16", 4096, 128))
    assert fp16 is not None and (fp16.config, fp16.kind) == (
        {"other_fp16": 1},
        "fallback-platform",
    )
    assert picker.resolve("rms_norm", RMS_SPEC, ("float32", 4096, 128)) is None
    h100 = make_picker(deployment=path, platform=H100)
    assert h100.resolve("rms_norm", RMS_SPEC, ("bfloat16", 2048, 128)).config == {
        "other": 1
    }  # type: ignore[union-attr]


def test_default_entry_only_after_every_platforms_shape_match(
    make_picker: Any, tmp_path: Path
) -> None:
    path = make_db(
        tmp_path / "dep.db",
        [
            P("rms_norm", H200, {}, {"h200_default": 1}),
            P("rms_norm", H100, rms_key(dtype="bfloat16"), {"h100_shape": 1}),
            P("rms_norm", H100, {}, {"h100_default": 1}),
        ],
    )
    picker = make_picker(deployment=path, platform=H200)
    shaped = picker.resolve("rms_norm", RMS_SPEC, ("bfloat16", 1000, 7))
    assert shaped is not None and (shaped.config, shaped.platform, shaped.match) == (
        {"h100_shape": 1},
        H100,
        "nearest",
    )
    # nothing fits any platform's keys: then the defaults, own platform's first
    default = picker.resolve("rms_norm", RMS_SPEC, ("float32", 1000, 7))
    assert default is not None
    assert (default.config, default.platform, default.match, default.kind) == (
        {"h200_default": 1},
        H200,
        "default",
        "default",
    )
    h100 = make_picker(deployment=path, platform=H100)
    assert h100.resolve("rms_norm", RMS_SPEC, ("float32", 1, 1)).config == {
        "h100_default": 1
    }  # type: ignore[union-attr]


def test_fallback_default_before_nothing(make_picker: Any, tmp_path: Path) -> None:
    path = make_db(tmp_path / "dep.db", [P("rms_norm", H100, {}, {"h100_default": 1})])
    picker = make_picker(deployment=path, platform=H200)
    choice = picker.resolve("rms_norm", RMS_SPEC, ("float32", 1, 1))
    assert choice is not None and (choice.platform, choice.match, choice.kind) == (
        H100,
        "default",
        "fallback-platform",
    )
    cpu = make_picker(deployment=path, platform=None, device=CPU)
    assert (
        cpu.platform == "cpu"
        and cpu.resolve("rms_norm", RMS_SPEC, ("float32", 1, 1)) is None
    )


def test_fallback_platforms_are_loaded_only_when_a_call_needs_them(
    make_picker: Any, tmp_path: Path
) -> None:
    from sqlalchemy import event

    path = make_db(
        tmp_path / "dep.db",
        [
            P("rms_norm", H100, rms_key(dtype="bfloat16"), {"h100": 1}),
            P("rms_norm", H200, rms_key(dtype="float16"), {"h200": 1}),
        ],
    )
    picker = make_picker(deployment=path, platform=H100)
    engine = picker.layers[0].store.engine
    statements: list[str] = []
    event.listen(
        engine, "before_cursor_execute", lambda *args: statements.append(args[2])
    )
    own = picker.resolve("rms_norm", RMS_SPEC, ("bfloat16", 4096, 128))
    assert own is not None and own.platform == H100
    own_queries = [s for s in statements if "FROM presets" in s]
    assert len(own_queries) == 2, (
        "one preset query and one runs query, for nvidia_h100 only"
    )
    statements.clear()
    other = picker.resolve("rms_norm", RMS_SPEC, ("float16", 4096, 128))
    assert other is not None and (other.platform, other.kind) == (
        H200,
        "fallback-platform",
    )
    assert statements, "the fallback platform is loaded when first needed"
    statements.clear()
    picker.resolve("rms_norm", RMS_SPEC, ("float16", 2048, 64))
    picker.resolve("rms_norm", RMS_SPEC, ("float32", 2048, 64))
    assert statements == []  # loaded once
    assert picker.loads == 1


def test_platform_command_says_whether_the_fast_path_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from presetdb.cli import app
    from presetdb.helion._accel import internals

    lines = {}
    for setting in ("0", "1", "auto"):
        monkeypatch.setenv("PRESETDB_ACCEL", setting)
        result = CliRunner().invoke(app, ["platform"])
        assert result.exit_code == 0, result.output
        (line,) = [x for x in result.output.splitlines() if x.startswith("fast path:")]
        lines[setting] = line.split(":", 1)[1].strip()
    assert lines["0"] == "off: PRESETDB_ACCEL=0"
    assert lines["1"].startswith("on: forced by PRESETDB_ACCEL=1")
    assert lines["auto"] == internals.status("auto").reason
