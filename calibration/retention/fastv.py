"""``fastv``: FastV-style (peer method): text-to-image attention at an early language-model layer.

FastV ranks image tokens by the attention they receive inside the language model at layer
``layer`` (2 in the paper) and drops the rest for the later layers. Here the ranking is computed
inside the vision graph, before the real prefill: the first ``layer`` decoder layers run on
``[prompt prefix, all N projected visual tokens, prompt suffix]`` (the full, unpruned sequence,
positions 0..P+N+S-1 as the dense prefill would use), and the score of visual token i is the
attention that the text tokens after the image (the question and the assistant prompt) pay to
it at layer ``layer``, mean over heads and over those queries.

Cost (recorded in the manifest): one extra partial LM prefill over all N visual tokens, ``layer``
full decoder layers plus the query/key projections of layer ``layer``; for a 24-layer LM with
layer 2 that is ~10% of a dense prefill, paid on top of the pruned prefill. The vision graph
takes the prompt's token embeddings as two inputs, ``prompt_prefix [B, P, D]`` and
``prompt_suffix [B, S, D]`` (tokens before and after the image placeholder).
"""

from __future__ import annotations

import torch

from atp.calibration.retention.base import Scorer, VisionContext
from atp.registry import SCORERS


@SCORERS.register("fastv")
class FastVScorer(Scorer):
    """Attention received from the text tokens at an early LM layer (needs the prompt sequence)."""

    summary = "FastV (peer): text-to-image attention at LM layer 2 (extra partial LM pass over all N tokens)"
    needs_prompt = True

    def __init__(self, layer: int = 2):
        super().__init__()
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"layer must be a non-negative integer, got {layer!r}")
        self.layer = layer

    def cost(self, num_lm_layers: int) -> dict:
        """What the scorer adds per request (for the manifest)."""
        used = min(self.layer, num_lm_layers - 1)
        return {"lm_layer": used, "extra": f"partial LM prefill over prompt + all N visual tokens: {used} decoder layer(s) "
                f"+ q/k projections of layer {used} (of {num_lm_layers})"}

    def forward(self, ctx: VisionContext) -> torch.Tensor:
        if ctx.lm_attention is None or ctx.prompt_prefix is None or ctx.prompt_suffix is None:
            raise ValueError("fastv needs the language model and the prompt sequence in the vision context")
        p, n, s = ctx.prompt_prefix.shape[1], ctx.features.shape[1], ctx.prompt_suffix.shape[1]
        seq = torch.cat([ctx.prompt_prefix, ctx.projected(), ctx.prompt_suffix], dim=1)
        probs = ctx.lm_attention(seq, self.layer, s)  # [B, S, P + N + S]
        return probs[:, :, p:p + n].mean(dim=1)
