"""Quantization numerics: numpy reference round trips, packing, mixed layout, KV int8, bit allocation, errors."""

from __future__ import annotations

import numpy as np
import pytest

from atp.calibration import kv
from atp.calibration.mixed_precision import QuantPlan, allocate, check_bits, uniform_plan
from atp.calibration.quant_reference import (dequantize_int4, dequantize_int8, fake_quant, int8_as_blocks, pack_int4,
                                             quantize_int4, quantize_int8, quantize_mixed, to_matmulnbits, unpack_int4)
from atp.errors import ConfigError


def _w(seed=0, n=48, k=128):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, k)).astype(np.float32)
    w[3, 5] = 9.0  # an outlier
    return w


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", [16, 32, 64, 128])
def test_int4_round_trip_is_exact(symmetric, group):
    for seed in range(3):
        w = _w(seed)
        q = quantize_int4(w, group, symmetric)
        lo, hi = (-8, 7) if symmetric else (0, 15)
        assert q.q.min() >= lo and q.q.max() <= hi
        d = dequantize_int4(q)
        q2 = quantize_int4(d, group, symmetric)
        np.testing.assert_array_equal(q2.q, q.q)  # quantize(dequantize(q)) == q
        np.testing.assert_array_equal(q2.zero_points(), q.zero_points())
        np.testing.assert_allclose(q2.scale, q.scale, rtol=3e-7)  # asymmetric scales recomputed within 1-2 ulp
        # error bounded by half a step per group
        step = np.repeat(q.scale, group, axis=1)
        assert np.all(np.abs(d - w) <= step * 0.5 + 1e-6)


def test_int4_matches_explicit_formula():
    w = _w(1, 4, 32)
    q = quantize_int4(w, 32, symmetric=True)
    s = np.abs(w).max(axis=1) / 7
    np.testing.assert_allclose(q.scale[:, 0], s, rtol=1e-7)
    np.testing.assert_array_equal(q.q, np.clip(np.round(w / s[:, None]), -8, 7))


def test_int8_round_trip_is_exact():
    w = _w(2)
    q, s = quantize_int8(w)
    np.testing.assert_allclose(s, np.abs(w).max(axis=1) / 127, rtol=1e-7)
    d = dequantize_int8(q, s)
    q2, s2 = quantize_int8(d)
    np.testing.assert_array_equal(q2, q)
    assert np.abs(q).max() == 127


def test_pack_low_nibble_is_even_k():
    u = np.array([[1, 2, 15, 0]], np.uint8)
    p = pack_int4(u)
    np.testing.assert_array_equal(p, [[0x21, 0x0F]])
    np.testing.assert_array_equal(unpack_int4(p), u)
    rng = np.random.default_rng(0)
    u = rng.integers(0, 16, (7, 64)).astype(np.uint8)
    np.testing.assert_array_equal(unpack_int4(pack_int4(u)), u)


def test_mixed_layout_permuted_and_unpermuted_agree():
    w = _w(3, 40, 64)
    int8 = [31, 2, 7]
    m = quantize_mixed(w, int8, 32, symmetric=False)
    assert m.n8 == 3 and list(m.perm[:3]) == [2, 7, 31]
    assert sorted(m.perm.tolist()) == list(range(40))
    full = m.dequantize()
    np.testing.assert_array_equal(full[[2, 7, 31]], dequantize_int8(*quantize_int8(w[[2, 7, 31]])))
    rest = [j for j in range(40) if j not in int8]
    np.testing.assert_array_equal(full[rest], fake_quant(w[rest], 4, 32, False))
    # the two-GEMM form (permuted output, then un-permuted) equals the unpermuted reference GEMM
    x = np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32)
    y_perm = np.concatenate([x @ dequantize_int8(m.q8, m.s8).T, x @ dequantize_int4(m.int4()).T], axis=1)
    np.testing.assert_allclose(y_perm[:, np.argsort(m.perm)], x @ full.T, rtol=1e-5, atol=1e-5)


def test_matmulnbits_tensors():
    w = _w(4, 8, 64)
    q = quantize_int4(w, 32, symmetric=False)
    t = to_matmulnbits(q.unsigned(), q.scale, q.zero, 4, 32)
    assert t["B"].shape == (8, 2, 16) and t["scales"].shape == (16,)
    np.testing.assert_array_equal(unpack_int4(t["B"].reshape(8, 32)), q.unsigned())
    np.testing.assert_array_equal(unpack_int4(t["zero_points"].reshape(8, 1)).reshape(8, 2), q.zero)
    q8, s8 = quantize_int8(w)
    u, s = int8_as_blocks(q8, s8, 32)
    np.testing.assert_array_equal(u.astype(np.int16) - 128, q8)
    assert s.shape == (8, 2) and np.all(s[:, 0] == s8)


def test_kv_int8_reference():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 16)).astype(np.float32)
    q, s = kv.quantize_kv(x)
    assert q.dtype == np.int8 and s.shape == (2, 3, 5, 1)
    d = kv.dequantize_kv(q, s)
    assert np.all(np.abs(d - x) <= s * 0.5 + 1e-7)
    q2, _ = kv.quantize_kv(d)
    np.testing.assert_array_equal(q2, q)
    import torch

    qt, st = kv.quantize_kv_torch(torch.from_numpy(x))
    np.testing.assert_array_equal(qt.numpy(), q)
    np.testing.assert_allclose(st.numpy(), s, rtol=1e-7)
    assert kv.kv_bytes_per_token(30, 3, 64, "int8") * 4 < kv.kv_bytes_per_token(30, 3, 64, "float32") * 1.1


SHAPES = {"layers.0.self_attn.q_proj": (64, 64), "layers.0.mlp.gate_proj": (128, 64), "layers.0.mlp.up_proj": (128, 64),
          "layers.0.mlp.down_proj": (64, 128), "lm_head": (300, 64)}


def _salience(seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.gamma(1.0, size=s[0]).astype(np.float32) for n, s in SHAPES.items()}


@pytest.mark.parametrize("bits", [4.0, 4.2, 4.4, 4.8, 6.0, 8.0])
def test_allocation_hits_budget(bits):
    plan = allocate(_salience(), SHAPES, bits, 32)
    assert plan.average_bits() <= bits + 1e-9
    assert bits - plan.average_bits() < 0.01
    # gate and up share their int8 features
    np.testing.assert_array_equal(plan.layers["layers.0.mlp.gate_proj"].int8, plan.layers["layers.0.mlp.up_proj"].int8)


def test_allocation_prefers_salient_features_globally():
    sal = {n: np.full(s[0], 1e-3, np.float32) for n, s in SHAPES.items()}
    sal["lm_head"][[5, 9]] = 100.0
    sal["layers.0.self_attn.q_proj"][7] = 50.0
    plan = allocate(sal, SHAPES, 4.05, 32)
    assert {5, 9} <= set(plan.layers["lm_head"].int8.tolist())
    assert 7 in plan.layers["layers.0.self_attn.q_proj"].int8


def test_plan_section_round_trip():
    plan = allocate(_salience(1), SHAPES, 4.4, 32, symmetric=False)
    data, tensors = plan.to_section()
    import json

    back = QuantPlan.from_section(json.loads(json.dumps(data)), tensors)
    assert back.average_bits() == plan.average_bits() and back.symmetric is False and back.group_size == 32
    for n in SHAPES:
        np.testing.assert_array_equal(back.layers[n].int8, plan.layers[n].int8)
        np.testing.assert_array_equal(back.salience[n], plan.salience[n])


def test_clear_errors():
    with pytest.raises(ConfigError, match="out of range"):
        check_bits(3.5)
    with pytest.raises(ConfigError, match="out of range"):
        allocate(_salience(), SHAPES, 8.5, 32)
    with pytest.raises(ConfigError, match="does not divide the 64 input features"):
        quantize_int4(np.zeros((4, 64), np.float32), 128)
    with pytest.raises(ConfigError, match="does not divide"):
        uniform_plan({"lm_head": (10, 576)}, "int4", 128)
    with pytest.raises(ConfigError, match="group size must be one of"):
        quantize_int4(np.zeros((4, 64), np.float32), 24)
    from atp.config import QuantConfig

    with pytest.raises(ConfigError, match="calibration artifact"):
        QuantConfig(weights="mixed")
    with pytest.raises(ConfigError, match="weights must be one of"):
        QuantConfig(weights="int3")
    with pytest.raises(ConfigError, match="kv cache precision"):
        QuantConfig(kv="int4")
