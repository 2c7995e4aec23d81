"""numpy reference of ``atp.cpu::MatMulInt4`` / ``MatMulInt8`` (= ``com.microsoft.MatMulNBits`` bits 4 / 8, symmetric,
accuracy_level 4).

A is quantized to int8 per row and block of ``block_size`` (symmetric: scale = max|a| / 127, codes rounded half to
even, A zero-padded to the blocks); the int4 codes are unpacked from MatMulNBits' B (two per byte, low nibble
first, code - 8 = q; int8: one per byte, code - 128 = q); y = sum over blocks of scale_w * scale_a * dot(q_w, q_a), accumulated in float64.
"""

from __future__ import annotations

import numpy as np


def quantize_activations(a: np.ndarray, block_size: int, nblk: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 codes [M, nblk * block_size], float32 scales [M, nblk]) of ``a`` [M, K]."""
    m, k = a.shape
    padded = np.zeros((m, nblk * block_size), np.float32)
    padded[:, :k] = a
    blocks = padded.reshape(m, nblk, block_size)
    scale = (np.abs(blocks).max(axis=2) / np.float32(127)).astype(np.float32)
    inv = np.where(scale > 0, np.float32(1) / np.where(scale > 0, scale, 1), 0).astype(np.float32)
    q = np.clip(np.rint(blocks * inv[:, :, None]), -127, 127).astype(np.int8)
    return q.reshape(m, -1), scale


def unpack_codes(b: np.ndarray, n: int, nblk: int, block_size: int, bits: int = 4) -> np.ndarray:
    """Signed values [N, nblk * block_size] from MatMulNBits' B: bits 4 packed two per byte ([N, nblk,
    block_size / 2], code - 8), bits 8 one per byte ([N, nblk, block_size], code - 128)."""
    if bits == 8:
        return np.asarray(b, np.uint8).reshape(n, nblk * block_size).astype(np.int16) - 128
    p = np.asarray(b, np.uint8).reshape(n, nblk * block_size // 2)
    u = np.empty((n, nblk * block_size), np.int16)
    u[:, 0::2] = p & 15
    u[:, 1::2] = p >> 4
    return u - 8


def matmul_int4(a: np.ndarray, b: np.ndarray, scales: np.ndarray, k: int, n: int, block_size: int, bits: int = 4) -> np.ndarray:
    """y [..., N] for A [..., K] and MatMulNBits' B / scales (float32 result of a float64 accumulation); ``bits``
    8 for MatMulInt8."""
    lead = a.shape[:-1]
    if a.shape[-1] != k:
        raise ValueError(f"A's last dimension must be K = {k}, got {a.shape[-1]}")
    nblk = -(-k // block_size)
    qa, sa = quantize_activations(np.asarray(a, np.float32).reshape(-1, k), block_size, nblk)
    qw = unpack_codes(b, n, nblk, block_size, bits)
    sw = np.asarray(scales, np.float32).reshape(n, nblk)
    dots = np.einsum("mbi,nbi->mnb", qa.reshape(-1, nblk, block_size).astype(np.int64),
                     qw.reshape(n, nblk, block_size).astype(np.int64))
    y = (dots * sa[:, None, :].astype(np.float64) * sw[None, :, :].astype(np.float64)).sum(axis=2)
    return y.astype(np.float32).reshape(*lead, n)
