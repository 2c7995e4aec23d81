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


pytestmark = [pytest.mark.skipif(shutil.which("g++") is None, reason="no g++"),
              pytest.mark.skipif(not _has_vnni(), reason="the prototype kernel needs AVX-512 VNNI")]


@pytest.fixture(scope="module")
def exe(tmp_path_factory):
    exe = tmp_path_factory.mktemp("int4_gemv") / "int4_gemv"
    subprocess.run(["g++", "-O3", "-march=native", "-fopenmp", "-o", str(exe), str(ROOT / "bench/int4_gemv_cpu/int4_gemv.cpp")],
                   check=True)
    return exe


@pytest.mark.parametrize("n,k", [(96, 576), (7, 1536)])  # 7: rows outside the 4-row groups
def test_int4_kernel_matches_onnxruntime_matmulnbits(exe, tmp_path, n, k):
    """MatMulNBits' own initializers (bits 4, block 64, symmetric): within 1e-5 x max|y| of ORT's accuracy_level 4."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from atp.calibration.quant_reference import quantize_int4, to_matmulnbits

    rng = np.random.default_rng(n)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
    x = rng.standard_normal(k).astype(np.float32)
    w4 = quantize_int4(w, 64, True)
    t = to_matmulnbits(w4.unsigned(), w4.scale, None, 4, 64)
    t["B"].tofile(tmp_path / "B.bin")
    t["scales"].tofile(tmp_path / "scales.bin")
    x.tofile(tmp_path / "x.bin")
    out = subprocess.run([str(exe), "--check", str(tmp_path), str(n), str(k)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ours = np.fromfile(tmp_path / "y.bin", np.float32)
    node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=64,
                            accuracy_level=4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(t["B"], "B"), numpy_helper.from_array(t["scales"], "S")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x[None]})[0][0]
    np.testing.assert_allclose(ours, ref, atol=1e-5 * float(np.abs(ref).max()), rtol=0)


def test_int4_kernel_matches_the_double_reference(exe):
    out = subprocess.run([str(exe), "1"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(r for r in out.stdout.splitlines() if r.startswith("correctness"))
    assert line.endswith("(ok)") and float(line.split("= ")[1].split()[0]) < 1e-5  # every row of all 121 matrices
    assert "| 1 |" in out.stdout  # and the timing table follows
