"""SigLIP ViT (``siglip_vision_model``): no CLS token; saliency = attention each token receives.

SigLIP towers (LLaVA-OneVision, llava-interleave, SmolVLM, PaliGemma, Gemma 3) have no CLS token, so CLS attention
does not exist. The stand-in is the attention a token *receives* at the feature layer, mean over every query and
head: tokens the rest of the image reads from score high (the same "who is attended to" signal CLS attention
carries, asked of all queries instead of one). It costs one N x N softmax per head, which the layer computes anyway.
"""

from __future__ import annotations

import torch

from atp.export.towers.base import Tower, TowerOutput, attention_probs, feature_layer_index, mean_keys, run_layers
from atp.registry import TOWERS


def attention_received(layer, hidden: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` attention each token receives at ``layer``, mean over queries and heads (sums to 1 per row)."""
    return attention_probs(layer, hidden).mean(dim=(1, 2))


@TOWERS.register("siglip")
class SiglipTower(Tower):
    """SigLIP vision transformer up to the feature layer (hidden_states[feature_layer]: before ``post_layernorm``,
    as transformers' LLaVA reads it).

    Args:
        vision_model: ``SiglipVisionModel`` / ``SiglipVisionTransformer`` (``embeddings``, ``encoder.layers``).
        vision_config: Its ``SiglipVisionConfig``.
        feature_layer: Index into hidden_states (-1 = last layer output).
        drop_cls: Must be False (SigLIP has no CLS token; LLaVA's strategy is then ``"full"``).
    """

    model_types = ("siglip_vision_model",)
    has_cls = False
    saliency_kind = "attention_received"

    def __init__(self, vision_model, vision_config, feature_layer: int, drop_cls: bool):
        super().__init__()
        if drop_cls:
            raise ValueError("a SigLIP tower has no CLS token to drop (use vision_feature_select_strategy 'full')")
        layers = vision_model.encoder.layers
        self.embeddings = vision_model.embeddings
        self.layers = torch.nn.ModuleList(list(layers)[:feature_layer_index(feature_layer, len(layers))])
        side = vision_config.image_size // vision_config.patch_size
        self.grid = (side, side)

    def forward(self, pixel_values: torch.Tensor) -> TowerOutput:
        h, h_in = run_layers(self.layers, self.embeddings(pixel_values))
        last = self.layers[-1]
        return TowerOutput(features=h, grid=self.grid, saliency=lambda: attention_received(last, h_in),
                           saliency_kind=self.saliency_kind, key_metric=lambda: mean_keys(last, h_in))
