"""Qwen3-VL (transformers ``Qwen3VLForConditionalGeneration``): Qwen2.5-VL's dynamic resolution and M-RoPE
(:mod:`atp.export.adapters.qwen2_5_vl`) with 16-px patches, a learned position table resampled to each image, full
attention in every tower block, DeepStack, and a Qwen3 language model (q / k norms, interleaved M-RoPE).

The vision graph outputs ``deepstack_embeds [L, 1, K, D]`` beside ``image_embeds``: each DeepStack level's features of
the same K kept tokens. The decoder graphs take ``deepstack_embeds [L, B, S, D]`` (the runtime places each kept
token's rows at its place in the prompt, zeros elsewhere and in decode steps) and add level i after layer i.
"""

from __future__ import annotations

from atp.errors import CheckpointError
from atp.export.adapters.qwen2_5_vl import Qwen25VLAdapter
from atp.export.decoder import LlamaLikeDecoder
from atp.registry import ARCHITECTURES


@ARCHITECTURES.register("qwen3_vl")
class Qwen3VLAdapter(Qwen25VLAdapter):
    """Adapter for ``model_type == "qwen3_vl"`` checkpoints (dense language models; still images)."""

    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    hf_class = "Qwen3VLForConditionalGeneration"
    summary = ("Qwen3-VL: dynamic resolution, learned + rotary positions, 2 x 2 merger, DeepStack levels gathered with "
               "the kept tokens, Qwen3 LM (q/k norms, interleaved M-RoPE)")
    title = "Qwen3-VL"
    text_model_types = ("qwen3_vl_text",)

    def _check_supported(self) -> None:
        self.check_config(self.config)
        self._check_processor()
        vc = self.vision_config
        side = int(vc.num_position_embeddings ** 0.5)
        if side * side != vc.num_position_embeddings:
            raise CheckpointError(f"num_position_embeddings {vc.num_position_embeddings} is not a square grid")
        if len(self.vision_config.deepstack_visual_indexes) > self.text_config.num_hidden_layers:
            raise CheckpointError("more DeepStack levels than language-model layers")

    def _window(self) -> int:
        return 0  # every tower block attends over the whole image

    def _position_grid(self) -> int:
        return int(self.vision_config.num_position_embeddings ** 0.5)

    def model_info(self) -> dict:
        return {**super().model_info(), "deepstack_levels": len(self.vision_config.deepstack_visual_indexes)}

    def decoder_module(self, kv_dtype: str = "float32", all_logits: bool = False) -> LlamaLikeDecoder:
        return LlamaLikeDecoder(self.language_model, self.model.lm_head, self.text_config, kv_dtype=kv_dtype,
                                all_logits=all_logits, deepstack=len(self.vision_config.deepstack_visual_indexes)).eval()
