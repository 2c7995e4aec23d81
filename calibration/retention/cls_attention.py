"""``cls``: keep the tokens the CLS token attends to most at the feature layer (CLS-free towers: the tokens
that receive the most attention, the tower's saliency; the manifest names which)."""

from __future__ import annotations

import torch

from atp.calibration.retention.base import Scorer, VisionContext
from atp.registry import SCORERS


@SCORERS.register("cls")
class ClsAttentionScorer(Scorer):
    """CLS-to-patch attention (mean over heads) of the layer the projector reads from."""

    summary = "CLS attention of the feature (penultimate) layer, mean over heads"
    uses_saliency = True

    def forward(self, ctx: VisionContext) -> torch.Tensor:
        return ctx.saliency()
