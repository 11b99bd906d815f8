"""The profile file format: round trip, hash, and clear rejections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.core.errors import ConfigError
from moesim.hardware.profile import ProfileError, content_hash, load_profile, write_profile

from calib_synthetic import provenance, row


def _data() -> dict:
    return {"provenance": provenance(command="test"), "settings": {"quick": True},
            "samples": {"gemm": [row(1e-5, dtype="bf16", m=1, k=64, n=64)]},
            "fit": {"tables": {"eager": {}}, "roofline": {"flops_per_s": {"bf16": 1e12}, "bytes_per_s": 1e11,
                                                           "launch_s": 1e-6}, "spread": {"gemm": 0.02}}}


def test_round_trip_keeps_content_and_hash(tmp_path: Path) -> None:
    p = write_profile(_data(), tmp_path / "p.json")
    back = load_profile(tmp_path / "p.json")
    assert back.content_hash == p.content_hash == content_hash(back.data)
    assert back.content_hash.startswith("sha256:") and back.data["schema_version"] == 1
    assert back.provenance["command"] == "test"


def test_hash_changes_with_content(tmp_path: Path) -> None:
    a = write_profile(_data(), tmp_path / "a.json")
    d = _data()
    d["samples"]["gemm"][0]["median_s"] = 2e-5
    assert write_profile(d, tmp_path / "b.json").content_hash != a.content_hash


def test_truncated_file_is_rejected_as_corrupted(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    write_profile(_data(), path)
    path.write_text(path.read_text()[:-40])
    with pytest.raises(ProfileError, match="corrupted profile: invalid JSON at line"):
        load_profile(path)


def test_edited_file_fails_the_hash_check(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    write_profile(_data(), path)
    d = json.loads(path.read_text())
    d["samples"]["gemm"][0]["median_s"] = 3e-5
    path.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match="content hash mismatch"):
        load_profile(path)


def test_foreign_version_is_rejected_with_the_versions(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    write_profile(_data(), path)
    d = json.loads(path.read_text())
    d["schema_version"] = 99
    path.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match=r"schema_version 99 is not supported \(this moesim reads version 1\)"):
        load_profile(path)


def test_not_a_profile(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(ProfileError, match="not a moesim calibration profile"):
        load_profile(tmp_path / "x.json")


@pytest.mark.parametrize(("path", "message"), [
    (("provenance", "gpu_name"), "provenance lacks gpu_name"),
    (("samples", "gemm", 0, "m"), r"samples.gemm\[0\] lacks m"),
    (("fit", "roofline"), "fit.roofline"),
    (("fit", "tables", "eager"), "fit.tables.eager"),
])
def test_missing_fields_are_named(tmp_path: Path, path: tuple, message: str) -> None:
    d = _data()
    target = d
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    with pytest.raises(ProfileError, match=message):
        write_profile(d, tmp_path / "p.json")


def test_errors_are_config_errors_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_profile(tmp_path / "missing.json")
    assert e.value.field == "hardware.calibration" and "cannot read profile" in str(e.value)
    assert e.value.exit_code == 2
