"""LLaVA-OneVision (llava-hf ``LlavaOnevisionForConditionalGeneration``): LLaVA-NeXT's anyres views and unpadding,
a SigLIP tower read in full (no CLS), a Qwen2 LM, and ``anyres_max_N``: when the unpadded grid holds more than about
N views' tokens it is resized bilinearly, after the projector, to ``(rows // r, cols // r)``.

The vision graph takes one image's views ``pixel_values [V, 3, S, S]`` and four taps per language-model token
(``token_index`` / ``token_weight [M, 4]``, from the image size: ``atp.runtime.anyres.tap_layout``). It projects every
tower token, mixes the projected tokens by the taps (exactly transformers' ``interpolate``; identity taps for the
base view and for grids within budget), mixes the saliency the same way, and keeps one global top-K over the M
tokens (``gate_position: after_connector``). Newlines follow every resized grid row, as in LLaVA-NeXT.
"""

from __future__ import annotations

from atp.errors import CheckpointError
from atp.export.adapters.llava import LlavaAdapter
from atp.export.adapters.llava_next import LlavaNextAdapter
from atp.export.vision import TapGate
from atp.registry import ARCHITECTURES


def anyres_max(config) -> int:
    """N of ``vision_aspect_ratio == "anyres_max_N"`` (0 when it is not that form)."""
    ratio = getattr(config, "vision_aspect_ratio", None) or ""
    n = ratio[len("anyres_max_"):] if ratio.startswith("anyres_max_") else ""
    return int(n) if n.isdigit() else 0


@ARCHITECTURES.register("llava_onevision")
class LlavaOnevisionAdapter(LlavaNextAdapter):
    """Adapter for ``model_type == "llava_onevision"`` checkpoints (single-image anyres path)."""

    name = "llava_onevision"
    model_types = ("llava_onevision",)
    hf_class = "LlavaOnevisionForConditionalGeneration"
    title = "LLaVA-OneVision"
    gate_class = TapGate
    gate_position = "after_connector"
    summary = ("LLaVA-OneVision: anyres views, unpadding, anyres_max_N bilinear resize of the projected grid, newline "
               "per row; SigLIP, Qwen2; one global top-K per image")

    @classmethod
    def check_aspect_ratio(cls, config) -> None:
        if anyres_max(config) < 1:
            raise CheckpointError(f"vision_aspect_ratio {getattr(config, 'vision_aspect_ratio', None)!r} is not supported "
                                  "for LLaVA-OneVision (anyres_max_N)")
        if config.vision_feature_select_strategy != "full":
            raise CheckpointError("LLaVA-OneVision export needs vision_feature_select_strategy 'full' (every tower token, "
                                  "as the checkpoints ship)")

    @classmethod
    def check_config(cls, config) -> None:
        super().check_config(config)
        from atp.export.towers import tower_class

        if tower_class(config.vision_config).has_cls:
            raise CheckpointError("LLaVA-OneVision with a tower that has a CLS token is not supported (the grid needs "
                                  "patch tokens only; the checkpoints use SigLIP)")

    def anyres_spec(self):
        from dataclasses import replace

        return replace(super().anyres_spec(), max_patches=anyres_max(self.config))

    def preprocessing(self) -> dict:
        pre = LlavaAdapter.preprocessing(self)
        pre["anyres"] = self.anyres_spec().to_dict()
        return pre
