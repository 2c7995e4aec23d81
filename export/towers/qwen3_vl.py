"""The Qwen3-VL vision transformer (``qwen3_vl_vision``) at any resolution in one graph, with DeepStack.

What changes from Qwen2.5-VL (:mod:`atp.export.towers.qwen2_5_vl`): 16-px patches (a Conv3d with bias), a learned
``48 x 48`` position table resampled bilinearly to each image's patch grid (``pos_index`` / ``pos_weight [P, 4]``
taps from the grid alone, ``atp.runtime.dynamic.position_taps``) on top of the 2-D rotary positions, LayerNorm
blocks with a GELU MLP, full attention in every block (no windows), and DeepStack: the outputs of the blocks in
``deepstack_visual_indexes`` go through their own mergers (norm after the 2 x 2 shuffle) and reach the language
model beside the merged tokens (``TowerOutput.deepstack [L, 1, N, D]``), added to its hidden states after its first
L layers. The saliency is the attention each patch receives at the last block, as for Qwen2.5-VL.
"""

from __future__ import annotations

import torch

from atp.export.towers.base import TowerOutput
from atp.export.towers.qwen2_5_vl import Qwen25VisionTower
from atp.registry import TOWERS


@TOWERS.register("qwen3_vl")
class Qwen3VisionTower(Qwen25VisionTower):
    """``(pixel_values [P, C*T*p*p], patch_pos [P, 2], pos_index [P, 4], pos_weight [P, 4]) -> TowerOutput`` over the
    P patches (batch 1), with the DeepStack levels already merged (``deepstack [L, 1, P / m^2, D]``)."""

    model_types = ("qwen3_vl_vision",)
    layout_inputs = ("patch_pos", "pos_index", "pos_weight")

    def __init__(self, visual, vision_config, feature_layer: int = -1, drop_cls: bool = False):
        super().__init__(visual, vision_config, feature_layer, drop_cls)
        self.pos_embed = visual.pos_embed
        self.deepstack_index = [int(i) for i in vision_config.deepstack_visual_indexes]
        self.deepstack_mergers = visual.deepstack_merger_list

    @property
    def deepstack_levels(self) -> int:
        return len(self.deepstack_index)

    def forward(self, pixel_values: torch.Tensor, patch_pos: torch.Tensor, pos_index: torch.Tensor,
                pos_weight: torch.Tensor) -> TowerOutput:
        h = self.patch_embed(pixel_values)
        h = h + (self.pos_embed(pos_index) * pos_weight[:, :, None].to(h.dtype)).sum(dim=1)
        cos, sin = self.rotary(h, patch_pos)
        cos, sin = cos[None].float(), sin[None].float()
        levels = []
        blocks = list(self.blocks)
        for i, blk in enumerate(blocks[:-1]):
            h = self._block(blk, h, cos, sin, None)
            if i in self.deepstack_index:
                levels.append(self.deepstack_mergers[self.deepstack_index.index(i)](h))
        h_in, last = h, blocks[-1]
        h = self._block(last, h_in, cos, sin, None)
        if len(blocks) - 1 in self.deepstack_index:
            levels.append(self.deepstack_mergers[self.deepstack_index.index(len(blocks) - 1)](h))

        def saliency():
            return self._probs(last, h_in, cos, sin)[0].mean(dim=(0, 1))[None]

        def keys():
            return self._qkv(last, h_in, cos, sin)[1].mean(dim=0)[None]

        return TowerOutput(features=h[None], grid=(0, 0), saliency=saliency, saliency_kind=self.saliency_kind,
                           key_metric=keys, deepstack=torch.stack(levels)[:, None] if levels else None)
