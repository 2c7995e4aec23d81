"""``idp``: IDPruner: importance + diversity by maximal marginal relevance, no attention maps.

Importance = relevance of each projected visual token to the prompt (cosine in the language
model's embedding space), min-max normalised; diversity = cosine similarity between the vision
features. Greedy MMR with weight ``lam`` on importance; the loop runs K times inside the graph.
"""

from __future__ import annotations

import torch

from atp.calibration.retention.base import Scorer, VisionContext, minmax, text_similarity, unit_interval
from atp.calibration.retention.selection import cosine_similarity, greedy_select
from atp.registry import SCORERS


@SCORERS.register("idp")
class IdpMmrScorer(Scorer):
    """Greedy MMR over prompt relevance (importance) and feature similarity (diversity)."""

    summary = "IDPruner: MMR of prompt relevance and feature diversity (no attention maps)"
    needs_text = True
    auto_keep_supported = False  # pick order, not a score distribution

    def __init__(self, lam: float = 0.6):
        super().__init__()
        self.lam = unit_interval("lam", lam)

    def forward(self, ctx: VisionContext) -> torch.Tensor:
        importance = minmax(text_similarity(ctx))
        return greedy_select(importance, importance, cosine_similarity(ctx.features), ctx.keep, self.lam)
