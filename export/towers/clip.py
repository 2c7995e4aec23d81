"""CLIP ViT (``clip_vision_model``): CLS token first, ``pre_layrnorm``; saliency = CLS attention."""

from __future__ import annotations

import torch

from atp.export.towers.base import Tower, TowerOutput, attention_probs, feature_layer_index, mean_keys, run_layers
from atp.registry import TOWERS


def clip_cls_attention(layer, hidden: torch.Tensor, drop_cls: bool) -> torch.Tensor:
    """``[B, N]`` (``[B, 1 + N]`` without ``drop_cls``) CLS-query attention row of a CLIP layer, mean over heads
    (the CLS query row only: O(N) memory)."""
    row = attention_probs(layer, hidden, slice(0, 1)).mean(dim=1)[:, 0]
    return row[:, 1:] if drop_cls else row


@TOWERS.register("clip")
class ClipTower(Tower):
    """CLIP vision transformer up to the feature layer.

    Args:
        vision_model: ``CLIPVisionTransformer`` (``embeddings``, ``pre_layrnorm``, ``encoder.layers``).
        vision_config: Its ``CLIPVisionConfig``.
        feature_layer: Index into hidden_states (-2 = penultimate, LLaVA's default).
        drop_cls: Drop the CLS token from the features (LLaVA's ``"default"`` select strategy).
    """

    model_types = ("clip_vision_model",)
    has_cls = True
    saliency_kind = "cls_attention"

    def __init__(self, vision_model, vision_config, feature_layer: int, drop_cls: bool):
        super().__init__()
        layers = vision_model.encoder.layers
        self.embeddings = vision_model.embeddings
        self.pre_layrnorm = vision_model.pre_layrnorm
        self.layers = torch.nn.ModuleList(list(layers)[:feature_layer_index(feature_layer, len(layers))])
        self.drop_cls = drop_cls
        side = vision_config.image_size // vision_config.patch_size
        self.grid = (side, side)

    def forward(self, pixel_values: torch.Tensor) -> TowerOutput:
        h, h_in = run_layers(self.layers, self.pre_layrnorm(self.embeddings(pixel_values)))
        last = self.layers[-1]
        keys = (lambda: mean_keys(last, h_in)[:, 1:]) if self.drop_cls else (lambda: mean_keys(last, h_in))
        return TowerOutput(features=h[:, 1:] if self.drop_cls else h, grid=self.grid,
                           saliency=lambda: clip_cls_attention(last, h_in, self.drop_cls),
                           saliency_kind=self.saliency_kind, key_metric=keys)
