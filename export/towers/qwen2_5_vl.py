"""The Qwen2.5-VL vision transformer (``qwen2_5_vl_vision``) at any resolution in one graph.

transformers runs it on ``pixel_values [P, 3 * T * p * p]`` + ``image_grid_thw``: a Conv3d patch embedding, 2-D
rotary positions per patch, RMSNorm blocks that attend within windows of merged tokens except in
``fullatt_block_indexes``, then the 2 x 2 patch merger. It reorders the patches window by window so each window is
contiguous for its variable-length kernels, and orders the merged tokens back afterwards.

Here the patches stay in the processor's block-major order; a windowed block gathers each window's patches
(``window_index [W, L]``, padded), attends within it and puts the rows back (``window_inverse [P]``): the same
attention over the same keys, at P * L cost instead of P^2. The rotary positions (``patch_pos``) and the windows come
from the grid alone (``atp.runtime.dynamic.vision_layout``), so one graph serves every image size. No CLS token: the
saliency is the attention each patch receives at the last block (a full-attention block in every Qwen2.5-VL: mean
over queries and heads), as for SigLIP.
"""

from __future__ import annotations

import torch

from atp.export.towers.base import Tower, TowerOutput
from atp.registry import TOWERS


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@TOWERS.register("qwen2_5_vl")
class Qwen25VisionTower(Tower):
    """``(pixel_values [P, C*T*p*p], patch_pos [P, 2], window_index [W, L], window_inverse [P]) -> TowerOutput``
    over the P patches (batch 1): last-block features before the merger, attention received, keys."""

    model_types = ("qwen2_5_vl_vision",)
    has_cls = False
    saliency_kind = "attention_received"
    layout_inputs = ("patch_pos", "window_index", "window_inverse")  # after pixel_values (atp.runtime.dynamic)

    def __init__(self, visual, vision_config, feature_layer: int = -1, drop_cls: bool = False):
        super().__init__()
        if drop_cls or feature_layer != -1:
            raise ValueError("the Qwen2.5-VL tower reads its last block (the merger's input) and has no CLS token")
        self.patch_embed = visual.patch_embed
        self.rotary = visual.rotary_pos_emb
        self.blocks = visual.blocks
        full = getattr(vision_config, "fullatt_block_indexes", None)  # None: every block attends over the image (Qwen3-VL)
        self.full = frozenset(range(len(self.blocks)) if full is None else (int(i) for i in full))
        if len(self.blocks) - 1 not in self.full:  # the saliency is the last block's attention over the whole image
            raise ValueError("the Qwen2.5-VL tower reads its saliency at a full-attention last block "
                             "(fullatt_block_indexes must hold the last block)")
        self.heads = int(vision_config.num_heads)

    def _qkv(self, blk, h, cos, sin):
        p = h.shape[0]
        q, k, v = blk.attn.qkv(blk.norm1(h)).reshape(p, 3, self.heads, -1).permute(1, 2, 0, 3).unbind(0)  # [H, P, hd]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        return q, k, v

    def _probs(self, blk, h, cos, sin):
        q, k, v = self._qkv(blk, h, cos, sin)
        return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * blk.attn.scaling, dim=-1), k, v

    def _attend(self, blk, h, cos, sin, windows):
        """Block attention over all patches, or (``windows``: ``(window_index [W, L], window_inverse [P])``) within
        each window: gather ``[W, L]`` rows (index P: a zero row, masked as a key), attend, put the rows back."""
        if windows is None:
            probs, _, v = self._probs(blk, h, cos, sin)
            return torch.matmul(probs, v).transpose(0, 1).reshape(h.shape[0], -1)
        index, inverse = windows
        p, (w, length) = h.shape[0], index.shape
        q, k, v = self._qkv(blk, h, cos, sin)  # [H, P, hd]

        def gather(x):  # [H, P, hd] -> [W, H, L, hd]
            x = torch.cat([x, x.new_zeros(x.shape[0], 1, x.shape[2])], dim=1)
            return torch.index_select(x, 1, index.reshape(-1)).reshape(x.shape[0], w, length, -1).transpose(0, 1)

        pad = torch.where(index < p, torch.zeros((), dtype=h.dtype), torch.full((), torch.finfo(h.dtype).min, dtype=h.dtype))
        scores = torch.matmul(gather(q), gather(k).transpose(-1, -2)) * blk.attn.scaling + pad[:, None, None, :]
        out = torch.matmul(torch.softmax(scores, dim=-1), gather(v))  # [W, H, L, hd]
        out = out.transpose(1, 2).reshape(w * length, -1)
        return torch.index_select(out, 0, inverse)

    def _block(self, blk, h, cos, sin, windows):
        h = h + blk.attn.proj(self._attend(blk, h, cos, sin, windows))
        return h + blk.mlp(blk.norm2(h))

    def forward(self, pixel_values: torch.Tensor, patch_pos: torch.Tensor, window_index: torch.Tensor | None = None,
                window_inverse: torch.Tensor | None = None) -> TowerOutput:
        h = self.patch_embed(pixel_values)
        cos, sin = self.rotary(h, patch_pos)  # [P, head_dim]
        cos, sin = cos[None].float(), sin[None].float()
        windows = [None if i in self.full else (window_index, window_inverse) for i in range(len(self.blocks))]
        for blk, win in zip(list(self.blocks)[:-1], windows[:-1]):
            h = self._block(blk, h, cos, sin, win)
        h_in, last = h, self.blocks[-1]
        h = self._block(last, h_in, cos, sin, windows[-1])

        def saliency():
            return self._probs(last, h_in, cos, sin)[0].mean(dim=(0, 1))[None]  # [1, P]

        def keys():
            return self._qkv(last, h_in, cos, sin)[1].mean(dim=0)[None]  # [1, P, head_dim]

        return TowerOutput(features=h[None], grid=(0, 0), saliency=saliency, saliency_kind=self.saliency_kind,
                           key_metric=keys)


@TOWERS.register("qwen2_vl")
class Qwen2VisionTower(Qwen25VisionTower):
    """Qwen2-VL's tower (``qwen2_vl_vision``): LayerNorm blocks, every one attending over the whole image, so the same
    computation without the window inputs: ``(pixel_values [P, C*T*p*p], patch_pos [P, 2]) -> TowerOutput``."""

    model_types = ("qwen2_vl_vision",)
    layout_inputs = ("patch_pos",)
