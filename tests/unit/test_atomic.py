"""atp.atomic.staged_directory: the one staged write behind bundles, calibration artifacts and quantization plans."""

from __future__ import annotations

import numpy as np
import pytest

from atp.atomic import staged_directory
from atp.errors import BundleError, CalibrationError


def test_writes_then_renames(tmp_path):
    out = tmp_path / "sub" / "art"
    with staged_directory(out) as staging:
        assert staging.parent == out.parent and staging != out and not out.exists()
        (staging / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a"
    assert [p.name for p in out.parent.iterdir()] == ["art"]


@pytest.mark.parametrize("exc", [RuntimeError("failed"), KeyboardInterrupt()])
def test_failure_keeps_the_old_directory_and_leaves_no_staging(tmp_path, exc):
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(type(exc)):
        with staged_directory(out, overwrite=True) as staging:
            (staging / "new.txt").write_text("new")
            raise exc
    assert [p.name for p in tmp_path.iterdir()] == ["art"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_overwrite_replaces_and_cleans_up(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_directory(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        assert (out / "old.txt").exists()  # the old one stays until the rename
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


@pytest.mark.parametrize("error", [BundleError, CalibrationError])
def test_existing_needs_overwrite_with_the_callers_error(tmp_path, error):
    (tmp_path / "art").mkdir()
    with pytest.raises(error, match="already exists; pass --overwrite"):
        with staged_directory(tmp_path / "art", error=error):
            pass


def test_quantization_plan_fallback_writer_is_atomic(tmp_path):
    """quant_calibrate's safetensors-only writer (used when the artifact class cannot be imported) goes through it too."""
    pytest.importorskip("safetensors")
    from atp.calibration.quant_calibrate import _save_minimal

    out = tmp_path / "plan"
    _save_minimal(out, {"bits": 4.4}, {"w": np.arange(4, dtype=np.float32)}, "f" * 64, "tiny", overwrite=False)
    assert sorted(p.name for p in out.iterdir()) == ["calibration.json", "quantization.safetensors"]
    with pytest.raises(CalibrationError, match="already exists"):
        _save_minimal(out, {}, {"w": np.zeros(1, np.float32)}, "f" * 64, "tiny", overwrite=False)
    assert [p.name for p in tmp_path.iterdir()] == ["plan"]


def test_overwrite_replaces_only_what_the_writer_made(tmp_path):
    """--overwrite must not delete a user's directory or file (issue 20): only an empty directory or one holding the
    writer's marker file is replaced; everything else is refused and left as it was."""
    from atp.errors import BundleError

    users = tmp_path / "photos"
    users.mkdir()
    (users / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(BundleError, match="without manifest.json"):
        with staged_directory(users, overwrite=True, error=BundleError, marker="manifest.json"):
            pass
    assert (users / "holiday.jpg").read_bytes() == b"precious"
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    with pytest.raises(BundleError, match="not a directory"):
        with staged_directory(afile, overwrite=True, error=BundleError, marker="manifest.json"):
            pass
    assert afile.read_text() == "keep me"
    with pytest.raises(BundleError, match="is not a directory"):
        with staged_directory(afile / "sub", error=BundleError):
            pass
    ours = tmp_path / "bundle"
    ours.mkdir()
    (ours / "manifest.json").write_text("{}")
    with staged_directory(ours, overwrite=True, error=BundleError, marker="manifest.json") as staging:
        (staging / "manifest.json").write_text('{"new": 1}')
    assert (ours / "manifest.json").read_text() == '{"new": 1}'
    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_directory(empty, overwrite=True, error=BundleError, marker="manifest.json") as staging:
        (staging / "x").write_text("1")
    assert (empty / "x").is_file()
