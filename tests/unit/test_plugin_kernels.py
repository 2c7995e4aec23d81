"""Triton plugin kernels in the interpreter (CPU) against the numpy references.

Tolerances: TopKGate is exact (same indices, ties included; gathered rows bit-identical).
MixedGemm is compared with the reference's emulation of the kernel's own arithmetic
(fp16 activations or per-token int8, integer weights, per-group fp32 scaling); the only
difference left is the fp16 output rounding, so ``max|y - ref| <= 2e-3 * max|ref|``.
Against the unquantized-activation product (``x @ dequantize(W)^T``) the int8 path must stay
within 5e-2 of max|y| (per-token int8 activation error with a 20x outlier channel).
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from atp.plugins.mixed_gemm import reference as gemm_ref  # noqa: E402
from atp.plugins.topk_gate import reference as gate_ref  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    """The kernel modules, in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before triton loads)."""
    from triton import knobs

    if not knobs.runtime.interpret:
        pytest.skip("TRITON_INTERPRET=1 was not set before triton was imported; run through tests/conftest.py")
    return (importlib.import_module("atp.plugins.topk_gate.kernel"), importlib.import_module("atp.plugins.mixed_gemm.kernel"))


def _scores(rng, b, n, kind):
    if kind == "normal":
        return rng.standard_normal((b, n)).astype(np.float32)
    if kind == "ties":  # few distinct values: the K-th score is shared by many tokens
        return rng.integers(0, 4, (b, n)).astype(np.float32)
    if kind == "constant":
        return np.full((b, n), 0.5, np.float32)
    if kind == "signed":  # negative, -0.0 and +0.0 together
        s = rng.standard_normal((b, n)).astype(np.float32) - 2.0
        s[:, ::5] = -0.0
        s[:, 1::5] = 0.0
        return s
    raise ValueError(kind)


def _check_gate(gate, rng, b, n, d, keep, kind, dtype=np.float32):
    s = _scores(rng, b, n, kind).astype(dtype)
    t = rng.standard_normal((b, n, d)).astype(dtype)
    out, idx = gate.topk_gate(torch.from_numpy(s), torch.from_numpy(t), keep)
    ref_out, ref_idx = gate_ref.topk_gate(s.astype(np.float32), t, keep)
    np.testing.assert_array_equal(idx.numpy(), ref_idx)
    np.testing.assert_array_equal(out.numpy(), ref_out)
    assert np.all(np.diff(idx.numpy(), axis=1) > 0), "kept_index must be strictly ascending"


GATE_CASES = [  # (B, N, D, K, scores)
    (1, 1, 1, 1, "normal"), (2, 16, 4, 5, "normal"), (3, 64, 33, 64, "normal"), (2, 100, 8, 1, "ties"),
    (2, 257, 7, 128, "ties"), (1, 576, 16, 144, "normal"), (2, 577, 2, 300, "signed"), (1, 1000, 3, 999, "constant"),
    (1, 4096, 5, 1024, "normal"), (1, 4096, 2, 4096, "ties"), (2, 4096, 1, 7, "signed"),
]


@pytest.mark.parametrize("b,n,d,keep,kind", GATE_CASES)
def test_topk_gate_matches_reference(kernels, b, n, d, keep, kind):
    _check_gate(kernels[0], np.random.default_rng(n * 31 + keep), b, n, d, keep, kind)


def test_topk_gate_fp16(kernels):
    _check_gate(kernels[0], np.random.default_rng(5), 2, 300, 10, 77, "ties", dtype=np.float16)
    _check_gate(kernels[0], np.random.default_rng(6), 1, 129, 9, 64, "normal", dtype=np.float16)


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 17, 255, 256, 1023, 1024, 2049, 4095, 4096])
def test_topk_gate_sweep(kernels, n):
    rng = np.random.default_rng(n)
    for keep in sorted({1, 2, n // 3 + 1, n // 2 + 1, n - 1 or 1, n}):
        for kind in ("normal", "ties", "signed"):
            _check_gate(kernels[0], rng, 2, n, 1 + n % 4, keep, kind)


def test_topk_gate_rejects_bad_keep(kernels):
    s = torch.zeros(1, 8)
    with pytest.raises(ValueError, match="keep"):
        kernels[0].topk_gate(s, torch.zeros(1, 8, 2), 9)
    with pytest.raises(ValueError, match="N <= 4096"):
        kernels[0].topk_gate(torch.zeros(1, 5000), torch.zeros(1, 5000, 1), 3)


def _check_gemm(gemm, m, kin, nout, frac8, group, zp, mode, seed=0):
    rng = np.random.default_rng(seed)
    n8 = int(round(nout * frac8))
    w = rng.standard_normal((nout, kin)).astype(np.float32)
    layout = gemm_ref.quantize_mixed(w, n8, group, zero_points=zp)
    x = rng.standard_normal((m, kin)).astype(np.float32)
    x[:, 0] *= 20.0  # an outlier channel, as LLM activations have
    y = gemm.mixed_gemm(torch.from_numpy(x), layout, mode).float().numpy()
    ref = gemm_ref.mixed_gemm(x, layout, mode)
    assert y.shape == (m, nout)
    scale = np.abs(ref).max()
    assert np.abs(y - ref).max() <= 2e-3 * scale, f"kernel vs emulated reference: {np.abs(y - ref).max() / scale:.2e}"
    full = x.astype(np.float16).astype(np.float32) @ gemm_ref.dequantize(layout).T
    assert np.abs(y - full).max() <= 5e-2 * np.abs(full).max()


GEMM_CASES = [  # (M, Kin, Nout, int8 fraction, group, zero points, mode)
    (1, 64, 64, 0.125, 32, False, "fp16"), (1, 256, 96, 0.5, 64, True, "fp16"), (3, 128, 80, 0.0, 128, False, "fp16"),
    (8, 96, 72, 1.0, 32, False, "fp16"), (8, 128, 130, 0.25, 32, True, "int8"), (9, 64, 64, 0.125, 32, False, "int8"),
    (65, 128, 96, 0.5, 64, True, "int8"), (130, 64, 40, 0.0, 32, False, "int8"), (512, 64, 32, 0.25, 64, False, "int8"),
]


@pytest.mark.parametrize("m,kin,nout,frac8,group,zp,mode", GEMM_CASES)
def test_mixed_gemm_matches_reference(kernels, m, kin, nout, frac8, group, zp, mode):
    _check_gemm(kernels[1], m, kin, nout, frac8, group, zp, mode, seed=m + kin + nout)


@pytest.mark.slow
@pytest.mark.parametrize("m", [1, 2, 5, 8, 16, 63, 200, 512])
@pytest.mark.parametrize("frac8", [0.0, 0.125, 0.5, 1.0])
def test_mixed_gemm_sweep(kernels, m, frac8):
    for kin, nout, group, zp in ((128, 96, 32, False), (256, 64, 128, True)):
        for mode in ("fp16", "int8"):
            _check_gemm(kernels[1], m, kin, nout, frac8, group, zp, mode, seed=m)


def test_mixed_gemm_default_path_by_m(kernels):
    """M <= 8 takes the fp16 GEMV path, larger M the int8 path: the results equal those modes' references."""
    rng = np.random.default_rng(1)
    layout = gemm_ref.quantize_mixed(rng.standard_normal((64, 64)).astype(np.float32), 8, 32)
    for m, mode in ((8, "fp16"), (9, "int8")):
        x = rng.standard_normal((m, 64)).astype(np.float32)
        y = kernels[1].mixed_gemm(torch.from_numpy(x), layout).float().numpy()
        ref = gemm_ref.mixed_gemm(x, layout, mode)
        assert np.abs(y - ref).max() <= 2e-3 * np.abs(ref).max()


def test_int4_packing_low_nibble_is_even_k():
    q = np.array([[1, 2, 3, 4, 15, 0]], np.uint8)
    packed = gemm_ref.pack_int4(q)
    np.testing.assert_array_equal(packed, [[0x21, 0x43, 0x0F]])
    np.testing.assert_array_equal(gemm_ref.unpack_int4(packed), q)


def test_quantize_mixed_roundtrip_error_bounds():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((48, 128)).astype(np.float32)
    for zp in (False, True):
        lay = gemm_ref.quantize_mixed(w, 16, 32, zero_points=zp)
        err = np.abs(gemm_ref.dequantize(lay) - w)
        assert err[:16].max() <= 0.5 * lay["s8"].max() + 1e-6           # int8: half a step
        step4 = np.repeat(lay["s4"], 32, axis=1)
        assert np.all(err[16:] <= 0.5 * step4 + 1e-6)                    # int4: half a step of its group
    with pytest.raises(ValueError, match="group"):
        gemm_ref.quantize_mixed(w, 0, 48)
