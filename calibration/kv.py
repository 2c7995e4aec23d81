"""KV-cache precision: dynamic int8 per token and head (precision-aligned KV quantization).

Keys and values ``[B, H, T, d]`` are quantized symmetrically per (batch, head, token) over the head
dim: ``scale = max|x| / 127`` (``[B, H, T, 1]``, fp32), ``q = clip(round(x / scale), -127, 127)``
(int8). The decoder graph stores ``q`` in ``present.{i}.key`` and the scale in
``present.{i}.key_scale`` and dequantizes the whole cache at attention. A token's key is quantized
once, when it enters the cache, so prefill and decode see the same numbers.
"""

from __future__ import annotations

import numpy as np

KV_DTYPES = ("float32", "int8")
SCALE_SUFFIX = "_scale"


def quantize_kv(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numpy reference: (int8 q, fp32 scale [..., 1])."""
    x = np.asarray(x, np.float32)
    scale = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127.0)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    return np.clip(np.round(x / scale), -127, 127).astype(np.int8), scale


def dequantize_kv(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) * scale).astype(np.float32)


def quantize_kv_torch(x):
    """Torch twin of :func:`quantize_kv` (traceable to ONNX: ReduceMax, Div, Round, Clip, Cast)."""
    import torch

    scale = x.abs().amax(dim=-1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(x / scale), -127, 127).to(torch.int8)
    return q, scale


def dequantize_kv_torch(q, scale):
    return q.to(scale.dtype) * scale


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: str) -> int:
    """Cache bytes one token adds (keys + values of every layer, scales included)."""
    per = num_kv_heads * head_dim * (1 if dtype == "int8" else 4) + (num_kv_heads * 4 if dtype == "int8" else 0)
    return 2 * num_layers * per
