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
