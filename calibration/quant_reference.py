"""Numpy reference of atp's weight quantization formats (the single source of truth).

Weights ``w`` are ``[N_out, K_in]`` (rows = output features, as ``nn.Linear.weight``).

- int8: symmetric, one scale per output feature: ``q = clip(round(w / s), -127, 127)``, ``s = max|w_j| / 127``.
- int4: groups of ``g`` along the input dim. Symmetric: ``q in [-8, 7]``, ``s = max|w| / 7``;
  asymmetric: ``q in [0, 15]``, ``s = (max - min) / 15``, zero point ``z = clip(round(-min / s), 0, 15)``;
  ``w ~ (q - z) * s``.
- Packing (shared with ONNX Runtime ``MatMulNBits`` and the MixedGemm plugin): two int4 values per
  byte along K, the LOW nibble holding the even k. Symmetric int4 is stored offset by 8 (unsigned
  0..15 with implicit zero point 8, as MatMulNBits assumes when no zero points are given).

Rounding is numpy's round-half-to-even (``torch.round`` does the same), so quantizing a
dequantized tensor gives back the same integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp.errors import ConfigError

INT4_GROUP_SIZES = (16, 32, 64, 128, 256)


def check_group_size(group_size: int, k_in: int, where: str = "") -> None:
    """Raise a ConfigError unless ``group_size`` is a supported power of two dividing ``k_in``."""
    if group_size not in INT4_GROUP_SIZES:
        raise ConfigError(f"int4 group size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    if k_in % group_size:
        raise ConfigError(f"int4 group size {group_size} does not divide the {k_in} input features{where}; "
                          f"choose a group size that does (e.g. {max(g for g in INT4_GROUP_SIZES if k_in % g == 0 or g == 16)})")


def _safe(scale: np.ndarray) -> np.ndarray:
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


# ----------------------------------------------------------------------------- int8
def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-feature int8: (q int8 [N, K], scale fp32 [N])."""
    w = np.asarray(w, np.float32)
    scale = _safe(np.abs(w).max(axis=1) / 127.0)
    q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) * scale[:, None]).astype(np.float32)


# ----------------------------------------------------------------------------- int4
@dataclass
class Int4Weights:
    """Group-wise int4 weights of ``N`` output features.

    Attributes:
        q: int8 ``[N, K]`` with values in [-8, 7] (symmetric) or [0, 15] (asymmetric).
        scale: fp32 ``[N, K / g]``.
        zero: uint8 ``[N, K / g]`` zero points (asymmetric), or None (symmetric).
        group_size: g.
    """

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray | None
    group_size: int

    @property
    def symmetric(self) -> bool:
        return self.zero is None

    def unsigned(self) -> np.ndarray:
        """Values as stored (0..15): symmetric ones offset by 8."""
        return (self.q + 8 if self.symmetric else self.q).astype(np.uint8)

    def zero_points(self) -> np.ndarray:
        """uint8 ``[N, K / g]`` zero points in the stored (unsigned) domain: 8 for symmetric."""
        return np.full(self.scale.shape, 8, np.uint8) if self.symmetric else self.zero


def quantize_int4(w: np.ndarray, group_size: int, symmetric: bool = True) -> Int4Weights:
    """Group-wise int4 along the input dimension."""
    w = np.asarray(w, np.float32)
    n, k = w.shape
    check_group_size(group_size, k)
    g = w.reshape(n, k // group_size, group_size)
    if symmetric:
        scale = _safe(np.abs(g).max(axis=2) / 7.0)
        q = np.clip(np.round(g / scale[..., None]), -8, 7)
        zero = None
    else:
        lo, hi = np.minimum(g.min(axis=2), 0), np.maximum(g.max(axis=2), 0)
        scale = _safe((hi - lo) / 15.0)
        zero = np.clip(np.round(-lo / scale), 0, 15).astype(np.uint8)
        q = np.clip(np.round(g / scale[..., None]) + zero[..., None], 0, 15)
    return Int4Weights(q.reshape(n, k).astype(np.int8), scale.astype(np.float32), zero, group_size)


def dequantize_int4(w4: Int4Weights) -> np.ndarray:
    n, k = w4.q.shape
    g = w4.q.reshape(n, k // w4.group_size, w4.group_size).astype(np.float32)
    if w4.zero is not None:
        g = g - w4.zero[..., None].astype(np.float32)
    return (g * w4.scale[..., None]).reshape(n, k).astype(np.float32)


def fake_quant(w: np.ndarray, bits: int, group_size: int = 32, symmetric: bool = True) -> np.ndarray:
    """Dequantize(quantize(w)) for bits 4 or 8."""
    if bits == 8:
        return dequantize_int8(*quantize_int8(w))
    if bits == 4:
        return dequantize_int4(quantize_int4(w, group_size, symmetric))
    raise ConfigError(f"weight bits must be 4 or 8, got {bits}")


# ----------------------------------------------------------------------------- packing
def pack_int4(u: np.ndarray) -> np.ndarray:
    """uint8 values 0..15 ``[..., K]`` (K even) -> ``[..., K / 2]`` bytes, low nibble = even k."""
    u = np.asarray(u, np.uint8)
    if u.shape[-1] % 2:
        raise ConfigError(f"int4 packing needs an even length, got {u.shape[-1]}")
    return (u[..., 0::2] & 0x0F) | ((u[..., 1::2] & 0x0F) << 4)


def unpack_int4(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, np.uint8)
    out = np.empty(p.shape[:-1] + (p.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = p & 0x0F
    out[..., 1::2] = p >> 4
    return out


# ----------------------------------------------------------------------------- mixed layout
@dataclass
class MixedWeights:
    """One linear layer in the shared mixed-GEMM layout (ORT two-GEMM export and the MixedGemm plugin).

    Output features are permuted offline: row ``i`` of the permuted weight is original feature
    ``perm[i]``; the first ``n8`` are int8, the remaining ``n4`` int4. The GEMM output ``[M, n8 + n4]``
    is in permuted order.

    Attributes:
        perm: int64 ``[N]``.
        q8: int8 ``[n8, K]``; s8: fp32 ``[n8]``.
        q4_packed: uint8 ``[n4, K / 2]`` (stored 0..15, low nibble = even k); s4: fp32 ``[n4, K / g]``;
        z4: uint8 ``[n4, K / g]`` or None (symmetric: implicit 8).
    """

    perm: np.ndarray
    q8: np.ndarray
    s8: np.ndarray
    q4_packed: np.ndarray
    s4: np.ndarray
    z4: np.ndarray | None
    group_size: int

    @property
    def n8(self) -> int:
        return int(self.q8.shape[0])

    def int4(self) -> Int4Weights:
        u = unpack_int4(self.q4_packed).astype(np.int8)
        return Int4Weights(u - 8 if self.z4 is None else u, self.s4, self.z4, self.group_size)

    def dequantize_permuted(self) -> np.ndarray:
        """fp32 ``[N, K]`` in permuted order."""
        return np.concatenate([dequantize_int8(self.q8, self.s8), dequantize_int4(self.int4())])

    def dequantize(self) -> np.ndarray:
        """fp32 ``[N, K]`` in the original feature order."""
        out = np.empty((len(self.perm), self.q8.shape[1] if self.n8 else self.q4_packed.shape[1] * 2), np.float32)
        out[self.perm] = self.dequantize_permuted()
        return out


def feature_permutation(n_out: int, int8_features) -> np.ndarray:
    """int8 features first (ascending), then the int4 ones (ascending)."""
    int8 = np.unique(np.asarray(int8_features, np.int64))
    if int8.size and (int8[0] < 0 or int8[-1] >= n_out):
        raise ConfigError(f"int8 feature index out of range 0..{n_out - 1}")
    rest = np.setdiff1d(np.arange(n_out, dtype=np.int64), int8)
    return np.concatenate([int8, rest])


def quantize_mixed(w: np.ndarray, int8_features, group_size: int, symmetric: bool = True) -> MixedWeights:
    """Quantize ``w [N, K]`` with the listed output features in int8 and the rest in int4."""
    w = np.asarray(w, np.float32)
    n, k = w.shape
    check_group_size(group_size, k)
    perm = feature_permutation(n, int8_features)
    n8 = len(np.unique(np.asarray(int8_features, np.int64)))
    wp = w[perm]
    q8, s8 = quantize_int8(wp[:n8]) if n8 else (np.zeros((0, k), np.int8), np.zeros(0, np.float32))
    w4 = quantize_int4(wp[n8:], group_size, symmetric) if n8 < n else Int4Weights(
        np.zeros((0, k), np.int8), np.zeros((0, k // group_size), np.float32),
        None if symmetric else np.zeros((0, k // group_size), np.uint8), group_size)
    return MixedWeights(perm, q8, s8, pack_int4(w4.unsigned()), w4.scale, w4.zero, group_size)


def fake_quant_mixed(w: np.ndarray, int8_features, group_size: int, symmetric: bool = True) -> np.ndarray:
    """Dequantized mixed weights in the original order (the PyTorch fake-quant reference uses this)."""
    return quantize_mixed(w, int8_features, group_size, symmetric).dequantize()


# ----------------------------------------------------------------------------- ORT MatMulNBits
def to_matmulnbits(q_unsigned: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, bits: int, block_size: int) -> dict:
    """Tensors of a ``com.microsoft.MatMulNBits`` node from unsigned quantized weights.

    Args:
        q_unsigned: uint8 ``[N, K]`` values in ``0..2**bits-1``.
        scale: fp32 ``[N, K / block_size]``.
        zero: uint8 ``[N, K / block_size]`` or None (implicit ``2**(bits-1)``).

    Returns:
        ``{"B": uint8 [N, n_blocks, block_size * bits / 8], "scales": fp32 [N * n_blocks],
        "zero_points": uint8 (packed for 4 bits) or None}``.
    """
    n, k = q_unsigned.shape
    nb = k // block_size
    if bits == 4:
        b = pack_int4(q_unsigned).reshape(n, nb, block_size // 2)
    elif bits == 8:
        b = q_unsigned.astype(np.uint8).reshape(n, nb, block_size)
    else:
        raise ConfigError(f"MatMulNBits bits must be 4 or 8, got {bits}")
    zp = None
    if zero is not None:
        if bits == 4:
            z = zero if nb % 2 == 0 else np.concatenate([zero, np.full((n, 1), 8, np.uint8)], axis=1)
            zp = pack_int4(z).reshape(-1)
        else:
            zp = zero.astype(np.uint8).reshape(-1)
    return {"B": b, "scales": scale.astype(np.float32).reshape(-1), "zero_points": zp}


def int8_as_blocks(q8: np.ndarray, s8: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature symmetric int8 in MatMulNBits block form: (uint8 q + 128, scale repeated per block)."""
    nb = q8.shape[1] // block_size
    return (q8.astype(np.int16) + 128).astype(np.uint8), np.repeat(s8[:, None], nb, axis=1).astype(np.float32)
