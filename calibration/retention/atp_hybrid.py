"""``atp``: Adaptive Token Pruning: CLS attention blended with text-image relevance.

score_i = a * minmax(cls_i) + (1 - a) * minmax(cos(P(v_i), t)), with P the projector and t
the prompt embedding. This is the LM-space form (no CLIP text tower: cosine between the
projected visual tokens and the mean of the prompt's token embeddings); the bundle records
``text_space: "lm"``. ``a`` comes from calibration (default 0.5).
"""

from __future__ import annotations

import torch

from atp.calibration.retention.base import Scorer, VisionContext, minmax, text_similarity, unit_interval
from atp.registry import SCORERS


@SCORERS.register("atp")
class AtpHybridScorer(Scorer):
    """a * CLS attention + (1 - a) * text relevance, each min-max normalised per image."""

    summary = "ATP: a*CLS attention + (1-a)*text relevance (LM embedding space)"
    needs_text = True
    text_space = "lm"

    def __init__(self, alpha: float = 0.5):
        super().__init__()
        self.alpha = unit_interval("alpha", alpha)

    def forward(self, ctx: VisionContext) -> torch.Tensor:
        return self.alpha * minmax(ctx.cls_attention()) + (1.0 - self.alpha) * minmax(text_similarity(ctx))
