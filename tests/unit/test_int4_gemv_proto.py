"""The int4 GEMV prototype (``bench/int4_gemv_cpu``) computes what its reference says before it times anything."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _has_vnni() -> bool:
    try:
        return "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++")
@pytest.mark.skipif(not _has_vnni(), reason="the prototype kernel needs AVX-512 VNNI")
def test_int4_kernel_matches_the_double_reference(tmp_path):
    exe = tmp_path / "int4_gemv"
    subprocess.run(["g++", "-O3", "-march=native", "-fopenmp", "-o", str(exe), str(ROOT / "bench/int4_gemv_cpu/int4_gemv.cpp")],
                   check=True)
    out = subprocess.run([str(exe), "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(r for r in out.stdout.splitlines() if r.startswith("correctness"))
    assert line.endswith("(ok)") and float(line.split("= ")[1].split()[0]) < 1e-5  # every row of all 121 matrices
    assert "| 1 |" in out.stdout  # and the timing table follows
