"""Qwen2-VL (transformers ``Qwen2VLForConditionalGeneration``): the first Qwen-VL generation on the same contract as
Qwen2.5-VL (:mod:`atp.export.adapters.qwen2_5_vl`): dynamic resolution, the 2 x 2 patch merger, M-RoPE, with
LayerNorm tower blocks that all attend over the whole image (no windows) and a Qwen2 language model."""

from __future__ import annotations

from atp.export.adapters.qwen2_5_vl import Qwen25VLAdapter
from atp.registry import ARCHITECTURES


@ARCHITECTURES.register("qwen2_vl")
class Qwen2VLAdapter(Qwen25VLAdapter):
    """Adapter for ``model_type == "qwen2_vl"`` checkpoints (still images)."""

    name = "qwen2_vl"
    model_types = ("qwen2_vl",)
    hf_class = "Qwen2VLForConditionalGeneration"
    summary = "Qwen2-VL: dynamic resolution (smart resize), full-attention LayerNorm tower, 2 x 2 merger, M-RoPE"
    title = "Qwen2-VL"
    text_model_types = ("qwen2_vl_text",)

    def _check_supported(self) -> None:
        self.check_config(self.config)
        self._check_processor()

    def _window(self) -> int:
        return 0  # every tower block attends over the whole image
