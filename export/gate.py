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


class _AutoGate(torch.autograd.Function):
    """Per-image K from the score mass (:mod:`atp.calibration.auto_keep`), then the top-K indices ascending,
    padded to the largest K of the batch with -1."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, keep: torch.Tensor, fraction: float, k_min: int, k_max: int):  # noqa: D401
        from atp.calibration.auto_keep import clamp_counts, mass_counts

        n = scores.shape[-1]
        counts = clamp_counts(mass_counts(scores, fraction), k_min, k_max, keep, n)
        kb = int(counts.max())
        order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :kb]
        valid = torch.arange(kb).unsqueeze(0) < counts.unsqueeze(1)
        idx = torch.where(valid, order, torch.full_like(order, n)).sort(dim=-1).values
        return torch.where(idx < n, idx, torch.full_like(idx, -1)), counts

    @staticmethod
    def symbolic(g, scores, keep, fraction, k_min, k_max):
        def const(v, dtype):
            return g.op("Constant", value_t=torch.tensor(v, dtype=dtype))

        i64 = torch.int64
        n1 = g.op("Shape", scores, start_i=1, end_i=2)  # [1]
        vals, order = g.op("TopK", scores, n1, axis_i=-1, largest_i=1, sorted_i=1, outputs=2)
        lo = g.op("ReduceMin", scores, const([-1], i64), keepdims_i=1)
        shifted = g.op("Cast", g.op("Sub", vals, lo), to_i=11)  # DOUBLE
        cum = g.op("CumSum", shifted, const(1, i64))
        last = g.op("Slice", cum, const([-1], i64), const([2**62], i64), const([1], i64))  # [B, 1]
        below = g.op("Less", cum, g.op("Mul", last, const(float(fraction), torch.float64)))
        k = g.op("Add", g.op("ReduceSum", g.op("Cast", below, to_i=7), const([1], i64), keepdims_i=0), const(1, i64))
        flat = g.op("Greater", g.op("Squeeze", last, const([1], i64)), const(0.0, torch.float64))
        k = g.op("Where", flat, k, n1)
        k = g.op("Min", g.op("Max", k, const(int(k_min), i64)), const(int(k_max), i64))
        k = g.op("Min", g.op("Min", k, g.op("Reshape", keep, const([1], i64))), n1)
        k = g.op("Max", k, const(1, i64))  # [B]
        kb = g.op("ReduceMax", k, const([0], i64), keepdims_i=1)  # [1]
        top = g.op("Slice", order, const([0], i64), kb, const([1], i64))  # [B, Kb]
        pos = g.op("Range", const(0, i64), g.op("Squeeze", kb, const([0], i64)), const(1, i64))
        valid = g.op("Less", g.op("Unsqueeze", pos, const([0], i64)), g.op("Unsqueeze", k, const([1], i64)))
        idx_f = g.op("Where", valid, g.op("Cast", top, to_i=1), g.op("Cast", n1, to_i=1))
        asc, _ = g.op("TopK", idx_f, kb, axis_i=-1, largest_i=0, sorted_i=1, outputs=2)
        asc = g.op("Cast", asc, to_i=7)
        return g.op("Where", g.op("Less", asc, n1), asc, const(-1, i64)), k


def auto_topk_ascending(scores: torch.Tensor, keep: torch.Tensor, auto) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic-K gate: ``scores [B, N]``, int64 scalar ``keep`` (per-request upper bound),
    :class:`~atp.calibration.auto_keep.AutoKeep` ``auto`` -> (``[B, Kb]`` int64 kept indices ascending,
    padded with -1 after each row's K; ``[B]`` int64 K per image), Kb = the batch's largest K.

    ONNX form: ``TopK(scores, N)`` (descending order) -> ``CumSum`` (float64) of the min-shifted sorted
    scores -> ``Less`` + ``ReduceSum`` = K per row -> ``Min``/``Max`` clamps -> ``Slice`` to Kb ->
    ``Where`` (positions past a row's K get the sentinel N) -> ``TopK(largest=0)`` ascending ->
    ``Where`` (sentinel -> -1).
    """
    return _AutoGate.apply(scores, keep, auto.fraction, auto.k_min, auto.k_max)


def gather_padded(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Like :func:`gather_tokens` for an index padded with -1: padded rows come back as zeros."""
    safe = torch.clamp(index, min=0)
    out = gather_tokens(tokens, safe)
    return out * (index >= 0).unsqueeze(-1).to(out.dtype)


class _SliceRows(torch.autograd.Function):
    """``x[:, :count]`` with a run-time ``count`` (an ONNX ``Slice`` whose end is a graph value)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, count: torch.Tensor) -> torch.Tensor:  # noqa: D401
        return x[:, : int(count)]

    @staticmethod
    def symbolic(g, x, count):
        one = g.op("Constant", value_t=torch.tensor([1], dtype=torch.int64))
        end = g.op("Reshape", count, one)
        return g.op("Slice", x, g.op("Constant", value_t=torch.tensor([0], dtype=torch.int64)), end, one)


def slice_rows(x: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``[B, S, D]`` -> ``[B, count, D]`` for an int64 scalar ``count`` that stays dynamic in the exported graph."""
    return _SliceRows.apply(x, count)
