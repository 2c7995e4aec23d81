"""Ahead-of-time cubins: every arch in ATP_CUDA_ARCHS' default compiles, and the SASS is what we claim.

Runs Triton's compiler (no GPU needed) in a subprocess without TRITON_INTERPRET, and reads the
cubins back with the cuobjdump that ships with Triton.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from atp.plugins import aot  # noqa: E402

# a representative variant per kernel family (the library build compiles all of them for sm_87; the
# four-arch library build is the slow test in test_plugin_contracts.py)
KEYS = ["mixed_gemm/int4/zp/prefill", "mixed_gemm/int4/gemv", "topk_index/fp16/4096"]


@pytest.fixture(scope="module")
def inspected():
    if aot.cuobjdump() is None:
        pytest.skip("cuobjdump not found (Triton's NVIDIA backend ships it)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "atp.plugins.aot", "--arch", *map(str, aot.DEFAULT_ARCHS), "--inspect", *KEYS],
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("arch", aot.DEFAULT_ARCHS)
def test_cubins_per_arch(inspected, arch):
    info = inspected[str(arch)]
    for key in KEYS:
        assert info[key]["arch"] == f"sm_{arch}", (key, info[key])
        assert info[key]["bytes"] > 1000
    # prefill: int4 -> int8 unpack in registers feeds int8 tensor-core MMA (IMMA; IGMMA on sm_90); decode: fp16 MMA
    assert info["mixed_gemm/int4/zp/prefill"]["imma"] > 0
    assert info["mixed_gemm/int4/gemv"]["hmma"] > 0 and info["mixed_gemm/int4/gemv"]["imma"] == 0
    if arch == 87:  # Jetson Orin: the prefill GEMM is int8 mma.sync (IMMA.16832.S8.S8), not a fallback
        assert info["mixed_gemm/int4/zp/prefill"]["imma"] >= 4


def test_variant_keys_are_unique_and_cover_the_plugins():
    keys = [v.key for v in aot.variants()]
    assert len(keys) == len(set(keys))
    for bn in aot.TOPK_BLOCKS:
        assert f"topk_index/fp32/{bn}" in keys and f"topk_index/fp16/{bn}" in keys
    assert {"mixed_gemm/int8/gemv", "mixed_gemm/int8/prefill", "mixed_gemm/int4/gemv", "mixed_gemm/int4/prefill",
            "mixed_gemm/int4/zp/gemv", "mixed_gemm/int4/zp/prefill"} <= set(keys)
