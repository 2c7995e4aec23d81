"""numpy reference of MixedGemm and its weight layout (shared with the quantizer).

Weight layout (output features permuted offline; the output stays in that order):

- the first ``n8`` output features are int8: ``w8 [n8, Kin]`` int8, symmetric, one fp32 scale
  per output feature, ``s8 [n8]``;
- the remaining ``n4`` are int4 in groups of ``g`` along Kin: ``w4 [n4, Kin/2]`` uint8 with two
  4-bit codes per byte, the LOW nibble holding the even k (as ONNX Runtime's MatMulNBits),
  codes q in 0..15, scales ``s4 [n4, Kin/g]`` fp32 and optional zero points ``z4 [n4, Kin/g]``
  uint8 (default 8, i.e. symmetric): ``w = (q - z) * s``.

Output ``y [M, n8 + n4]`` = ``x @ W^T``. Two numeric modes, both emulated here exactly as the
kernel computes them:

- ``"fp16"`` (decode/GEMV path): x rounded to fp16, integer weights, fp32 accumulation per group,
  the group's scale applied to the group's partial sum;
- ``"int8"`` (prefill path): x quantized per token (row) to int8 with scale ``max|x_row| / 127``
  (round half away from zero), int32 accumulation per group, then the group scale and the token scale.
"""

from __future__ import annotations

import numpy as np

GROUP_MULTIPLE = 32  # the kernels step through Kin 32 at a time; g must be a multiple


def pack_int4(q: np.ndarray) -> np.ndarray:
    """``q [N, Kin]`` codes in 0..15 -> ``[N, Kin/2]`` uint8, low nibble = even k."""
    q = np.asarray(q)
    if q.shape[1] % 2 or q.min(initial=0) < 0 or q.max(initial=0) > 15:
        raise ValueError("int4 codes must be in 0..15 with an even Kin")
    q = q.astype(np.uint8)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_int4`: ``[N, Kin/2]`` uint8 -> ``[N, Kin]`` codes (uint8)."""
    packed = np.asarray(packed, dtype=np.uint8)
    q = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.uint8)
    q[:, 0::2] = packed & 0x0F
    q[:, 1::2] = packed >> 4
    return q


def quantize_mixed(w: np.ndarray, n8: int, group: int, zero_points: bool = False) -> dict:
    """Quantize ``w [Nout, Kin]`` (already permuted: int8 rows first) into the MixedGemm layout.

    Args:
        w: fp32 weights, output features first.
        n8: rows kept at int8 (the first n8); the rest go to int4.
        group: int4 group size along Kin (multiple of 32, divides Kin).
        zero_points: asymmetric int4 (min/max per group) instead of symmetric (zero point 8).

    Returns:
        dict with ``w8, s8, w4, s4, z4 (or None), group``.
    """
    w = np.asarray(w, dtype=np.float32)
    nout, kin = w.shape
    if group % GROUP_MULTIPLE or kin % group or not 0 <= n8 <= nout:
        raise ValueError(f"need group % {GROUP_MULTIPLE} == 0, Kin % group == 0 and 0 <= n8 <= Nout "
                         f"(group={group}, Kin={kin}, n8={n8}, Nout={nout})")
    a8 = w[:n8]
    s8 = np.maximum(np.abs(a8).max(axis=1), 1e-12) / 127.0 if n8 else np.zeros(0, np.float32)
    w8 = np.clip(np.rint(a8 / s8[:, None]), -127, 127).astype(np.int8) if n8 else np.zeros((0, kin), np.int8)
    a4 = w[n8:].reshape(nout - n8, kin // group, group)
    if zero_points:
        lo, hi = np.minimum(a4.min(axis=2), 0), np.maximum(a4.max(axis=2), 0)
        s4 = np.maximum(hi - lo, 1e-12) / 15.0
        z4 = np.clip(np.rint(-lo / s4), 0, 15).astype(np.uint8)
    else:
        s4 = np.maximum(np.abs(a4).max(axis=2), 1e-12) / 7.0
        z4 = np.full(s4.shape, 8, np.uint8)
    q = np.clip(np.rint(a4 / s4[:, :, None]) + z4[:, :, None], 0, 15).reshape(nout - n8, kin)
    return {"w8": w8, "s8": s8.astype(np.float32), "w4": pack_int4(q), "s4": s4.astype(np.float32),
            "z4": z4 if zero_points else None, "group": group}


def dequantize(layout: dict) -> np.ndarray:
    """The fp32 weight matrix ``[n8 + n4, Kin]`` the layout encodes."""
    w8 = layout["w8"].astype(np.float32) * layout["s8"][:, None]
    q = unpack_int4(layout["w4"]).astype(np.float32)
    n4, kin = q.shape
    g = layout["group"]
    z = layout["z4"] if layout["z4"] is not None else np.full(layout["s4"].shape, 8, np.uint8)
    w4 = ((q.reshape(n4, kin // g, g) - z[:, :, None]) * layout["s4"][:, :, None]).reshape(n4, kin)
    return np.concatenate([w8, w4.astype(np.float32)], axis=0)


def quantize_tokens(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token dynamic int8: ``x [M, Kin]`` -> (``xq`` int8, ``sx [M]`` fp32), round half away from zero."""
    x = np.asarray(x, dtype=np.float32)
    sx = np.abs(x).max(axis=1) / 127.0
    sx = np.where(sx > 0, sx, 1.0).astype(np.float32)
    v = x / sx[:, None]
    return np.clip(np.trunc(v + 0.5 * np.sign(v)), -127, 127).astype(np.int8), sx


def _integer_weights(layout: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """(integer weights [Nout, Kin] as int64 (q - z for int4), scales [Nout, groups], group) with int8 as one group."""
    q = unpack_int4(layout["w4"]).astype(np.int64)
    n4, kin = q.shape
    g = layout["group"]
    z = layout["z4"] if layout["z4"] is not None else np.full(layout["s4"].shape, 8, np.uint8)
    q4 = (q.reshape(n4, kin // g, g) - z[:, :, None].astype(np.int64)).reshape(n4, kin)
    return q4, layout["s4"], g


def mixed_gemm(x: np.ndarray, layout: dict, mode: str = "fp16") -> np.ndarray:
    """``x [M, Kin]`` times the layout's weights -> ``[M, n8 + n4]`` fp32 (the kernel writes fp16).

    Args:
        x: activations.
        layout: from :func:`quantize_mixed`.
        mode: ``"fp16"`` (decode path) or ``"int8"`` (prefill path with per-token int8 activations).
    """
    x = np.asarray(x, dtype=np.float32)
    m, kin = x.shape
    w8 = layout["w8"].astype(np.int64)
    q4, s4, g = _integer_weights(layout)
    if mode == "fp16":
        xa, sx = x.astype(np.float16).astype(np.float64), np.ones(m)
    elif mode == "int8":
        xq, sx = quantize_tokens(x)
        xa = xq.astype(np.int64)
    else:
        raise ValueError(f"mode must be 'fp16' or 'int8', got {mode!r}")
    y8 = (xa @ w8.T) * layout["s8"].astype(np.float64)[None, :]
    parts = [(xa[:, k0:k0 + g] @ q4[:, k0:k0 + g].T) * s4[None, :, k0 // g].astype(np.float64) for k0 in range(0, kin, g)]
    y4 = np.sum(parts, axis=0) if parts else np.zeros((m, q4.shape[0]))
    return (np.concatenate([y8, y4], axis=1) * sx[:, None]).astype(np.float32)
