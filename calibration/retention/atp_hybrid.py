"""``atp``: Adaptive Token Pruning: CLS attention blended with text-image relevance.

score_i = a * minmax(cls_i) + (1 - a) * minmax(cos(v_i, t)).

Two text spaces, recorded in the manifest (``text_embeds.space``):

- ``"clip"`` (with a user-supplied open_clip model, see :mod:`atp.export.clip`): v_i = patch i's
  CLIP-space embedding from the open_clip image tower, t = the prompt's CLIP text embedding
  (``text_embeds [B, E]``, from the bundle's ``text.onnx``).
- ``"lm"`` (the fallback without CLIP weights): v_i = P(x_i) the projected visual token, t = the mean
  of the prompt's token embeddings in the language model's embedding space.

``a`` comes from calibration (default 0.5).
"""

from __future__ import annotations

import torch

from atp.calibration.retention.base import Scorer, VisionContext, check_text_space, hybrid_relevance, unit_interval
from atp.registry import SCORERS


@SCORERS.register("atp")
class AtpHybridScorer(Scorer):
    """a * CLS attention + (1 - a) * text relevance, each min-max normalised per image."""

    summary = "ATP: a*CLS attention + (1-a)*text relevance (CLIP space with open_clip, else LM embedding space)"
    uses_saliency = True
    needs_text = True
    supports_clip = True

    def __init__(self, alpha: float = 0.5, text_space: str = "lm"):
        super().__init__()
        self.alpha = unit_interval("alpha", alpha)
        self.text_space = check_text_space(text_space)

    def forward(self, ctx: VisionContext) -> torch.Tensor:
        return hybrid_relevance(ctx, self.alpha, self.text_space)
