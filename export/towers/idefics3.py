"""Idefics3 / SmolVLM vision transformer (``idefics3_vision``, ``smolvlm_vision``): SigLIP layers, NaViT-style
position ids, ``post_layernorm`` on the output (the connector reads ``last_hidden_state``); no CLS token, so the
saliency is the attention each token receives at the last layer (:mod:`atp.export.towers.siglip`).

atp's views are always whole tiles (the image is resized to whole tiles first), so the patch mask is full and the
position ids are one constant row, computed here once by transformers' own bucketing rule."""

from __future__ import annotations

import torch

from atp.export.towers.base import Tower, TowerOutput, mean_keys, run_layers
from atp.export.towers.siglip import attention_received
from atp.registry import TOWERS


def full_mask_position_ids(side: int) -> torch.Tensor:
    """``[side * side]`` position ids ``Idefics3VisionEmbeddings`` gives a full patch mask (its bucketize rule)."""
    boundaries = torch.arange(1 / side, 1.0, 1 / side)
    coords = torch.clamp(torch.arange(side, dtype=torch.float32) * (1.0 / torch.tensor([float(side)])), max=1.0 - 1e-6)
    bucket = torch.bucketize(coords, boundaries, right=True)
    return (bucket[:, None] * side + bucket[None, :]).reshape(-1)


@TOWERS.register("idefics3")
class Idefics3Tower(Tower):
    """The Idefics3 / SmolVLM vision transformer on whole tiles: ``[V, 3, S, S] -> [V, P, Dv]`` post-LN features."""

    model_types = ("idefics3_vision", "smolvlm_vision")
    has_cls = False
    saliency_kind = "attention_received"

    def __init__(self, vision_model, vision_config, feature_layer: int = -1, drop_cls: bool = False):
        super().__init__()
        if drop_cls or feature_layer != -1:
            raise ValueError("the Idefics3 tower reads the last layer, post-layernorm, and has no CLS token")
        emb = vision_model.embeddings
        self.patch_embedding, self.position_embedding = emb.patch_embedding, emb.position_embedding
        side = vision_config.image_size // vision_config.patch_size
        self.register_buffer("position_ids", full_mask_position_ids(side), persistent=False)
        self.layers = vision_model.encoder.layers
        self.post_layernorm = vision_model.post_layernorm
        self.grid = (side, side)

    def forward(self, pixel_values: torch.Tensor) -> TowerOutput:
        h = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2) + self.position_embedding(self.position_ids)[None]
        h, h_in = run_layers(self.layers, h)
        last = self.layers[-1]
        return TowerOutput(features=self.post_layernorm(h), grid=self.grid, saliency=lambda: attention_received(last, h_in),
                           saliency_kind=self.saliency_kind, key_metric=lambda: mean_keys(last, h_in))
