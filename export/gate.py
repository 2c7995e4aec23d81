"""The in-graph top-K token gate.

``keep`` is a graph input (int64 scalar), so one graph serves every K in 1..N. The
gate picks the K highest-scoring tokens and returns their indices in ascending order
(spatial order is kept for the language model), then gathers those tokens.

ONNX form: ``TopK(scores, K)`` -> ``Cast`` to float -> ``TopK(largest=0)`` (ascending
sort of the indices; exact below 2**24 tokens, and float TopK is what TensorRT
supports) -> ``Cast`` back to int64.
"""

from __future__ import annotations

import torch


class _TopKAscending(torch.autograd.Function):
    """Indices of the K largest scores per row, sorted ascending."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:  # noqa: D401
        k = int(keep)
        idx = torch.topk(scores, k, dim=-1, largest=True, sorted=True).indices
        return torch.sort(idx, dim=-1).values

    @staticmethod
    def symbolic(g, scores, keep):
        k = g.op("Reshape", keep, g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64)))
        _, idx = g.op("TopK", scores, k, axis_i=-1, largest_i=1, sorted_i=1, outputs=2)
        idx_f = g.op("Cast", idx, to_i=1)  # FLOAT
        asc, _ = g.op("TopK", idx_f, k, axis_i=-1, largest_i=0, sorted_i=1, outputs=2)
        return g.op("Cast", asc, to_i=7)  # INT64


def topk_ascending(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` scores, int64 scalar ``keep`` -> ``[B, K]`` int64 indices, ascending."""
    return _TopKAscending.apply(scores, keep)


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens [B, N, D]``, ``index [B, K]`` -> ``[B, K, D]``."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def reference_gate(scores: torch.Tensor, tokens: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager PyTorch reference of the gate: (kept tokens, ascending kept indices)."""
    idx = torch.topk(scores, keep, dim=-1).indices.sort(dim=-1).values
    return gather_tokens(tokens, idx), idx
