"""numpy reference of TopKGate: the K highest scores per row, kept in ascending index order.

Ties are broken toward the lower index (a stable sort of the negated scores), which is
what the Triton kernel does, so kernel and reference agree exactly, ties included.
"""

from __future__ import annotations

import numpy as np


def topk_gate_index(scores: np.ndarray, keep: int) -> np.ndarray:
    """``scores [B, N]`` -> ``kept_index [B, K]`` int64, ascending per row."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or not 1 <= keep <= scores.shape[1]:
        raise ValueError(f"scores must be [B, N] and 1 <= keep <= N (got {scores.shape}, keep={keep})")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :keep]
    return np.sort(order, axis=1).astype(np.int64)


def topk_gate(scores: np.ndarray, tokens: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """``scores [B, N]``, ``tokens [B, N, D]``, ``keep`` -> (``kept [B, K, D]``, ``kept_index [B, K]``)."""
    index = topk_gate_index(scores, keep)
    return np.take_along_axis(tokens, index[:, :, None], axis=1), index
