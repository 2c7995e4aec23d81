"""Qwen2.5-VL (transformers ``Qwen2_5_VLForConditionalGeneration``): dynamic resolution, window attention, the 2 x 2
patch merger and M-RoPE positions.

One vision graph serves every image size in the processor's pixel range: it takes the processor's patches
``pixel_values [P, 3 * T * p * p]`` with ``patch_pos [P, 2]`` and the attention windows (from the grid alone:
``atp.runtime.dynamic``), runs the tower (``atp.export.towers.qwen2_5_vl``) and the merger on every patch, and gates
over the N = P / 4 merged tokens the language model reads (``gate_position: after_connector``), one top-K per image.
The prompt holds ``<|vision_start|><|image_pad|><|vision_end|>``; the kept tokens replace the one ``<|image_pad|>``
in raster order, and each keeps its (t, h, w) M-RoPE position in the full grid (``atp.runtime.positions``).
"""

from __future__ import annotations

import torch

from atp.errors import CheckpointError
from atp.export.adapters.base import VisionInputs
from atp.export.adapters.llava import LlavaAdapter
from atp.export.vision import MergerGate
from atp.manifest import Positions, TokenLayout
from atp.registry import ARCHITECTURES

EXAMPLE_GRID = (4, 6)  # merged tokens of the export example: two windows of 2 x 2 or more, every dim distinct


@ARCHITECTURES.register("qwen2_5_vl")
class Qwen25VLAdapter(LlavaAdapter):
    """Adapter for ``model_type == "qwen2_5_vl"`` checkpoints (still images; video input is refused)."""

    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    hf_class = "Qwen2_5_VLForConditionalGeneration"
    summary = ("Qwen2.5-VL: dynamic resolution (smart resize), window attention, 2 x 2 patch merger, M-RoPE; one "
               "top-K per image after the merger, kept tokens at their grid positions")
    gate_position = "after_connector"
    gate_class = MergerGate
    layout_kind = "dynamic"
    title = "Qwen2.5-VL"
    text_model_types = ("qwen2_5_vl_text",)

    @classmethod
    def check_config(cls, config) -> None:
        tc = config.text_config
        cls.check_lm_and_tower(config)
        if getattr(tc, "use_sliding_window", False):
            raise CheckpointError("Qwen2.5-VL with sliding-window attention in the language model is not supported yet")
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        sections = (tc.rope_parameters or {}).get("mrope_section")
        if not sections or len(sections) != 3 or sum(sections) != head_dim // 2:
            raise CheckpointError(f"rope_parameters.mrope_section {sections} must split head_dim / 2 = {head_dim // 2} "
                                  "into t, h and w sections")
        if (tc.rope_parameters or {}).get("rope_type", "default") != "default":
            raise CheckpointError(f"rope_type {tc.rope_parameters.get('rope_type')!r} is not supported for M-RoPE yet")

    def _check_processor(self) -> None:
        """Refuse an image processor that does not make Qwen2-VL patches (``pixel_values`` + ``image_grid_thw``)."""
        ip, vc = self.processor.image_processor, self.vision_config
        sizes = [getattr(ip, a, None) for a in ("patch_size", "merge_size", "temporal_patch_size")]
        if None in sizes or not isinstance(getattr(ip, "size", None), dict) and not hasattr(ip.size, "longest_edge"):
            raise CheckpointError(f"the checkpoint's image processor ({type(ip).__name__}) does not make {self.title} "
                                  "patches (pixel_values + image_grid_thw); a Qwen2-VL image processor is needed")
        theirs = tuple(int(v) for v in sizes)
        ours = (int(vc.patch_size), int(vc.spatial_merge_size), int(vc.temporal_patch_size))
        if theirs != ours:
            raise CheckpointError(f"the image processor's patch / merge / temporal sizes {theirs} differ from the vision "
                                  f"tower's {ours}")

    def _check_supported(self) -> None:
        self.check_config(self.config)
        self._check_processor()
        vc = self.vision_config
        if vc.window_size % self.dynamic_spec().factor:
            raise CheckpointError(f"window_size {vc.window_size} is not a whole number of merged tokens")
        if len(vc.fullatt_block_indexes) == 0 or vc.depth - 1 not in vc.fullatt_block_indexes:
            raise CheckpointError("atp reads the gate's saliency at the tower's last block, which must be a full-attention "
                                  f"block (fullatt_block_indexes {list(vc.fullatt_block_indexes)}, depth {vc.depth})")

    # ------------------------------------------------------------------ facts
    def dynamic_spec(self):
        from atp.runtime.dynamic import DynamicSpec

        ip, vc = self.processor.image_processor, self.vision_config
        size = ip.size if isinstance(ip.size, dict) else {k: getattr(ip.size, k, None) for k in ("shortest_edge", "longest_edge")}
        resample = getattr(ip, "resample", 3)
        return DynamicSpec(int(vc.patch_size), int(vc.spatial_merge_size), int(vc.temporal_patch_size),
                           int(size["shortest_edge"]), int(size["longest_edge"]), self._window(),
                           int(getattr(resample, "value", resample)), self._position_grid())

    def _window(self) -> int:
        """Windowed-attention block side in merged tokens (0: no windows)."""
        vc = self.vision_config
        return int(vc.window_size) // int(vc.spatial_merge_size) // int(vc.patch_size)

    def _position_grid(self) -> int:
        """Side of the tower's learned position table (0: none)."""
        return 0

    @property
    def num_visual_tokens(self) -> int:
        """The largest N (an image at the processor's max_pixels); each image has its own."""
        return self.dynamic_spec().max_tokens

    @property
    def image_size(self) -> int:
        """The side of the largest square view (informational: every image takes its own size)."""
        spec = self.dynamic_spec()
        return int(spec.max_pixels ** 0.5) // spec.factor * spec.factor

    @property
    def image_token(self) -> str:
        return getattr(self.processor, "image_token", None) or "<|image_pad|>"

    def _vision_cost(self) -> tuple[int, int]:
        vc = self.vision_config  # every block, on the patches of an image at max_pixels
        return int(vc.depth), self.num_visual_tokens * int(vc.spatial_merge_size) ** 2

    def preprocessing(self) -> dict:
        pre = super().preprocessing()
        spec = self.dynamic_spec()
        pre.update(resize=None, center_crop=None, resample=spec.resample, dynamic=spec.to_dict(),
                   image_size=[self.image_size, self.image_size], layout="patches [P, 3 * temporal * patch * patch]")
        return pre

    def token_layout(self) -> TokenLayout:
        return TokenLayout(self.image_token, self.image_token_id, tokens_per_tile=self.num_visual_tokens, kind=self.layout_kind)

    def positions(self) -> Positions:
        return Positions("mrope", tuple(int(s) for s in self.text_config.rope_parameters["mrope_section"]))

    def extra_arrays(self) -> dict:
        return {}

    # ------------------------------------------------------------------ graphs
    def _vision_model(self):
        return self.model.model.visual

    def tower_class(self):
        from atp.export.towers import tower_class

        return tower_class(self.vision_config)

    def tower(self):
        return self.tower_class()(self._vision_model(), self.vision_config)

    @property
    def connector(self) -> torch.nn.Module:
        return self.model.model.visual.merger

    def vision_inputs(self, batch: int = 2) -> VisionInputs:
        """``pixel_values [P, C*T*p*p]``, ``patch_pos [P, 2]``, ``window_index [W, L]``, ``window_inverse [P]``: one
        image's patches and windows (an :data:`EXAMPLE_GRID` of merged tokens in the example: 6 windows)."""
        from atp.runtime.dynamic import vision_layout

        spec = self.dynamic_spec()
        lay = vision_layout(EXAMPLE_GRID, spec)
        g = torch.Generator().manual_seed(0)
        p = len(lay["patch_pos"])
        px = torch.randn(p, spec.patch_dim, generator=g)
        names = ("pixel_values", *self.tower_class().layout_inputs)
        axes = {n: {0: "windows" if n == "window_index" else "patches"} for n in names}
        return VisionInputs(names, axes, (px, *(torch.from_numpy(lay[n]) for n in names[1:])), images=1,
                            tokens=EXAMPLE_GRID[0] * EXAMPLE_GRID[1])

    def vision_module(self, scorer: torch.nn.Module, clip=None, auto_keep=None):
        return self.multi_view_module(scorer, auto_keep)

    def clip_patch_embedder(self, clip):
        raise CheckpointError("text relevance in CLIP space is not supported for Qwen2.5-VL")
