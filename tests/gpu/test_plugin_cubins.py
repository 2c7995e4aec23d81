"""The plugins' AOT cubins on a real GPU against reference.py, and TensorRT vs ONNX Runtime (Polygraphy).

Skipped without a CUDA GPU (and, for Polygraphy, without full TensorRT). Tolerances as in the interpreter tests:
TopKGate exact (ties included), MixedGemm within 2e-3 of max|ref| of the reference's emulation of its arithmetic.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvhost-gpu", "/dev/nvgpu")),
                                 reason="no NVIDIA GPU device node (/dev/nvidia0; /dev/nvhost-gpu or /dev/nvgpu on Jetson)")]


def _gpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")


# the tiny bundle's vision graph at a static 1x3x32x32 input, K = 1, 8, 16 through one engine
SHAPES = ["--trt-min-shapes", "pixel_values:[1,3,32,32]", "--trt-opt-shapes", "pixel_values:[1,3,32,32]",
          "--trt-max-shapes", "pixel_values:[1,3,32,32]"]


@pytest.fixture
def loader(tmp_path):
    """A Polygraphy data-loader script (seeded pixels, keep K = 1, 8, 16); skips without CUDA, TensorRT or Polygraphy."""
    _gpu()
    pytest.importorskip("tensorrt")
    pytest.importorskip("polygraphy")
    loader = tmp_path / "keep.py"
    loader.write_text(
        "import numpy as np\n"
        "def load_data():\n"
        "    for k in (1, 8, 16):\n"
        "        yield {'pixel_values': np.random.default_rng(k).standard_normal((1, 3, 32, 32)).astype(np.float32),\n"
        "               'keep': np.array(k, np.int64)}\n")
    return loader


@pytest.fixture(scope="module")
def results():
    _gpu()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("cubin_check.py")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=1200,
                         cwd=Path(__file__).parents[2])
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_topk_gate_cubins_match_reference(results):
    for r in results["gate"]:
        assert r["index_equal"] and r["tokens_equal"], r
        assert r["size"] == r["case"][3]


def test_mixed_gemm_cubins_match_reference(results):
    for r in results["gemm"]:
        assert r["rel_err"] <= 2e-3, r


def test_tensorrt_vs_ort_with_polygraphy(tiny_bundle, loader):
    """Full TensorRT on this GPU: the vision graph (K = 1, 8, 16 through one engine) against ONNX Runtime."""
    cmd = ["polygraphy", "run", str(tiny_bundle / "vision.onnx"), "--trt", "--onnxrt", "--atol", "1e-3", "--rtol", "1e-3",
           *SHAPES, "--data-loader-script", str(loader)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_tensorrt_plugin_engine_vs_ort(tiny_bundle, tmp_path, loader):
    """Full TensorRT + libatp_plugins.so: the vision graph with the gate rewritten to TopKGate, against ONNX Runtime
    on the original standard-op graph (Polygraphy: ORT outputs saved, then compared with the plugin engine's)."""
    import torch

    from atp.export.plugin_rewrite import rewrite_file
    from atp.plugins.build import build_library

    major, minor = torch.cuda.get_device_capability()
    lib, _ = build_library(tmp_path / "plugins", archs=(major * 10 + minor,))
    assert rewrite_file(tiny_bundle / "vision.onnx", tmp_path / "vision_plugin.onnx")["TopKGate"] == 1
    ort_run = ["polygraphy", "run", str(tiny_bundle / "vision.onnx"), "--onnxrt", "--data-loader-script", str(loader),
               "--save-inputs", str(tmp_path / "in.json"), "--save-outputs", str(tmp_path / "ort.json")]
    trt_run = ["polygraphy", "run", str(tmp_path / "vision_plugin.onnx"), "--trt", "--plugins", str(lib), *SHAPES,
               "--load-inputs", str(tmp_path / "in.json"), "--load-outputs", str(tmp_path / "ort.json"),
               "--atol", "1e-3", "--rtol", "1e-3"]
    for cmd in (ort_run, trt_run):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, " ".join(cmd) + "\n" + res.stdout[-3000:] + res.stderr[-2000:]
