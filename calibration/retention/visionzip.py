"""``visionzip``: VisionZip (peer method), dominant tokens by CLS attention.

VisionZip keeps the *dominant* tokens, those the CLS token attends to most at the layer the
projector reads (attention summed over heads), and optionally merges the rest into a few
*contextual* tokens. This is the dominant-token variant: the output is exactly K gathered
tokens like every other scorer, so its ranking coincides with ``cls`` on CLIP towers (the sum
and the mean over heads order tokens alike; a test asserts the equality). The contextual merge
is not implemented: it would add tokens to the output (K + c), which the manifest would have to
state; the bundle records ``contextual_tokens: 0``.
"""

from __future__ import annotations

import torch

from atp.calibration.retention.base import Scorer, VisionContext
from atp.registry import SCORERS


@SCORERS.register("visionzip")
class VisionZipScorer(Scorer):
    """Dominant-token selection of VisionZip (sum over heads of the CLS attention row)."""

    summary = "VisionZip (peer): dominant tokens by CLS attention (no contextual merge)"
    contextual_tokens = 0

    def forward(self, ctx: VisionContext) -> torch.Tensor:
        # the context offers the mean over heads; VisionZip sums, which ranks identically
        return ctx.cls_attention()
