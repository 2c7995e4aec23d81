"""Greedy selection loops shared by ``idp`` (MMR) and ``divprune`` (max-min diversity).

The loop is a TorchScript function, so it exports as one ONNX ``Loop`` whose trip count is
the run-time K: no Python loop over tokens at run time, one graph for every K. It returns
scores, not indices: picked tokens score N - (pick order), the rest -1, so the gate's top-K
keeps exactly the K picks.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def _greedy_select(first: torch.Tensor, importance: torch.Tensor, similarity: torch.Tensor, keep: torch.Tensor,
                  lam: float) -> torch.Tensor:
    """Greedy MMR: pick argmax ``first`` first, then repeatedly argmax over unpicked i of
    ``lam * importance_i - (1 - lam) * max_{j picked} similarity_ij``.

    Args:
        first: ``[B, N]`` score of the first pick.
        importance: ``[B, N]``.
        similarity: ``[B, N, N]``.
        keep: int64 scalar, number of picks.
        lam: importance vs diversity weight in [0, 1].

    Returns:
        ``[B, N]`` float scores: N - order for picked tokens, -1 for the rest.
    """
    b, n = importance.shape[0], importance.shape[1]
    taken = torch.zeros_like(importance, dtype=torch.bool)
    rank = torch.full_like(importance, -1.0)
    penalty = torch.zeros_like(importance)
    neg = torch.full_like(importance, -1e30)
    for step in range(int(keep)):
        if step == 0:
            score = first
        else:
            score = lam * importance - (1.0 - lam) * penalty
        score = torch.where(taken, neg, score)
        j = torch.argmax(score, dim=1)
        pick = torch.nn.functional.one_hot(j, n).to(torch.bool)
        taken = taken | pick
        rank = torch.where(pick, torch.full_like(rank, float(n - step)), rank)
        row = torch.gather(similarity, 1, j.view(b, 1, 1).expand(b, 1, n)).squeeze(1)
        penalty = row if step == 0 else torch.maximum(penalty, row)
    return rank


with warnings.catch_warnings():  # torch >= 2.13 marks TorchScript deprecated; it is still what exports as one ONNX Loop
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=DeprecationWarning)
    greedy_select = torch.jit.script(_greedy_select)


def greedy_select_reference(first: np.ndarray, importance: np.ndarray, similarity: np.ndarray, keep: int, lam: float) -> list[set]:
    """Plain numpy greedy loop (the definition), returning the picked index set per row."""
    out = []
    for b in range(first.shape[0]):
        picked: list[int] = []
        for step in range(keep):
            if step == 0:
                score = first[b].astype(np.float64).copy()
            else:
                penalty = similarity[b][picked].max(axis=0)
                score = lam * importance[b] - (1 - lam) * penalty
            score[picked] = -np.inf
            picked.append(int(np.argmax(score)))
        out.append(set(picked))
    return out


def cosine_similarity(x: torch.Tensor) -> torch.Tensor:
    """``[B, N, D]`` -> ``[B, N, N]`` cosine similarities."""
    x = torch.nn.functional.normalize(x, dim=-1)
    return torch.matmul(x, x.transpose(1, 2))
