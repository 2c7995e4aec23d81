"""LLaVA-NeXT (llava-hf ``LlavaNextForConditionalGeneration``): anyres images (base view + grid tiles from the
grid pinpoints, unpadded), ``image_newline`` after each grid row, CLIP or SigLIP tower, Llama / Mistral / Qwen2 LM.

The vision graph takes one image's views ``pixel_values [V, 3, S, S]`` and ``token_index [M]`` (which tower tokens
the language model reads, in its order: base view, then the unpadded grid rows; computed by the runtime from the
image size, ``atp.runtime.anyres``), gates over the M tokens with one global top-K (each view's saliency is its own:
CLS attention sums to 1 per view) and projects the K kept tokens. The runtime puts the newline embedding after the
last kept token of every grid row that keeps one, so keeping all M reproduces transformers' sequence exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from atp.errors import CheckpointError
from atp.export.adapters.base import VisionInputs
from atp.export.adapters.llava import LlavaAdapter
from atp.export.vision import TokenIndexGate
from atp.manifest import TokenLayout
from atp.registry import ARCHITECTURES

NEWLINE_NAME = "image_newline"


@ARCHITECTURES.register("llava_next")
class LlavaNextAdapter(LlavaAdapter):
    """Adapter for ``model_type == "llava_next"`` checkpoints (LLaVA-1.6)."""

    name = "llava_next"
    model_types = ("llava_next",)
    hf_class = "LlavaNextForConditionalGeneration"
    title = "LLaVA-NeXT"
    layout_kind = "anyres"
    gate_class = TokenIndexGate  # the vision graph's module (atp.export.vision)
    summary = "LLaVA-NeXT: anyres base view + grid tiles, unpadded, image_newline per grid row; one global top-K per image"

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        pins = getattr(config, "image_grid_pinpoints", None)
        if not pins or not all(len(p) == 2 and p[0] % config.vision_config.image_size == 0 and
                               p[1] % config.vision_config.image_size == 0 for p in pins):
            raise CheckpointError("LLaVA-NeXT needs image_grid_pinpoints that are multiples of the tower's image size")
        cls.check_aspect_ratio(config)

    @classmethod
    def check_aspect_ratio(cls, config) -> None:
        if getattr(config, "vision_aspect_ratio", None) not in (None, "anyres"):
            raise CheckpointError(f"vision_aspect_ratio {config.vision_aspect_ratio!r} is not supported for LLaVA-NeXT "
                                  "(anyres; LLaVA-OneVision checkpoints, model_type llava_onevision, take anyres_max_N)")

    # ------------------------------------------------------------------ facts
    @property
    def _per_view(self) -> int:
        """Tokens of one view: what LLaVA-1.5 has per image."""
        return LlavaAdapter.num_visual_tokens.fget(self)

    @property
    def _max_views(self) -> int:
        s = self.vision_config.image_size
        return 1 + max((h // s) * (w // s) for h, w in self.config.image_grid_pinpoints)

    @property
    def num_visual_tokens(self) -> int:
        """The largest N (every view's tokens, no unpadding): the upper bound of K; each image has its own N."""
        return self._per_view * self._max_views

    def anyres_spec(self):
        """The views and token-order rule (:class:`atp.runtime.anyres.AnyresSpec`) of this checkpoint."""
        from atp.runtime.anyres import AnyresSpec

        return AnyresSpec(tuple(tuple(p) for p in self.config.image_grid_pinpoints), self.image_size,
                          int(self.vision_config.patch_size))

    def preprocessing(self) -> dict:
        pre = super().preprocessing()
        if self.config.vision_feature_select_strategy != "default":
            raise CheckpointError("LLaVA-NeXT export needs vision_feature_select_strategy 'default' (patch tokens only)")
        pre["anyres"] = self.anyres_spec().to_dict()
        return pre

    def token_layout(self) -> TokenLayout:
        return TokenLayout(self.image_token, self.image_token_id, tiles=self._max_views, tokens_per_tile=self._per_view,
                           kind=self.layout_kind, newline=f"{NEWLINE_NAME}.npy")

    def extra_arrays(self) -> dict[str, np.ndarray]:
        return {NEWLINE_NAME: self.model.model.image_newline.detach().float().numpy().reshape(1, -1)}  # [1, D]

    # ------------------------------------------------------------------ graphs
    def vision_inputs(self, batch: int = 2) -> VisionInputs:
        """``pixel_values [V, 3, S, S]`` (one image's views) and the layout inputs (``token_index``, ...) of
        :func:`atp.runtime.anyres.graph_layout`; the example is a tall image (tiles and unpadding both exercised)."""
        from atp.runtime.anyres import graph_layout

        g = torch.Generator().manual_seed(0)
        s = self.image_size
        layout, row = graph_layout((2 * s - 3, s), self.anyres_spec())
        views = int(layout["token_index"].max()) // self._per_view + 1
        px = torch.randn(views, 3, s, s, generator=g)
        return VisionInputs(("pixel_values", *layout), {"pixel_values": {0: "views"}, **{k: {0: "tokens"} for k in layout}},
                            (px, *(torch.from_numpy(v) for v in layout.values())), images=1, tokens=len(row))

    def vision_module(self, scorer: torch.nn.Module, clip=None, auto_keep=None):
        return self.multi_view_module(scorer, auto_keep)

