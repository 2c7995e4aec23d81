"""``ruff check`` (configured in pyproject.toml) is clean over the tree."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_is_clean():
    exe = shutil.which("ruff") or (Path(sys.executable).parent / "ruff")
    if not Path(exe).exists():
        pytest.skip("ruff is not installed (pip install 'atp-edge[test]')")
    r = subprocess.run([str(exe), "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
