"""``divprune``: DivPrune (peer method): max-min diversity selection.

Greedy: start from the most distinctive token (lowest mean cosine similarity to the others),
then repeatedly add the token whose highest similarity to the kept set is lowest. Needs no
attention and ignores the prompt.
"""

from __future__ import annotations

import torch

from atp.calibration.retention.base import Scorer, VisionContext
from atp.calibration.retention.selection import cosine_similarity, greedy_select
from atp.registry import SCORERS


@SCORERS.register("divprune")
class DivPruneScorer(Scorer):
    """Max-min diversity (MMR with no importance term)."""

    summary = "DivPrune (peer): greedy max-min feature diversity"
    auto_keep_supported = False  # pick order, not a score distribution

    def forward(self, ctx: VisionContext) -> torch.Tensor:
        sim = cosine_similarity(ctx.features)
        first = -sim.mean(dim=-1)
        return greedy_select(first, torch.zeros_like(first), sim, ctx.keep, 0.0)
