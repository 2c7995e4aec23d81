"""LLaVA-1.5 / llava-hf ``LlavaForConditionalGeneration`` with a CLIP tower (CLS token) or a SigLIP tower (no CLS:
llava-interleave-style checkpoints) and a Llama, Mistral or Qwen2 language model."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from atp.errors import CheckpointError
from atp.export.adapters.base import Adapter, VisionInputs, load_processor
from atp.export.decoder import LlamaLikeDecoder
from atp.export.towers import tower_class, tower_for
from atp.registry import ARCHITECTURES

log = logging.getLogger(__name__)

_PROMPT_SENTINEL = "\x07ATP_PROMPT\x07"
LLAVA15_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"


def _plain_size(size) -> dict | None:
    """transformers' size objects (dict, SizeDict, int) -> {"shortest_edge"|"height"|"width": int}."""
    if size is None:
        return None
    if isinstance(size, int):
        return {"shortest_edge": size}
    keys = ("shortest_edge", "longest_edge", "height", "width")
    get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    out = {k: int(get(k)) for k in keys if get(k) is not None}
    return out or None


@ARCHITECTURES.register("llava")
class LlavaAdapter(Adapter):
    """Adapter for ``model_type == "llava"`` checkpoints.

    Args:
        model: A loaded ``LlavaForConditionalGeneration`` (fp32, eval mode).
        processor: Its ``LlavaProcessor`` (tokenizer + image processor).
        source: Where the model came from, recorded in the manifest.
    """

    name = "llava"
    model_types = ("llava",)
    hf_class = "LlavaForConditionalGeneration"
    title = "LLaVA"  # in messages
    gate_class = None  # multi-view subclasses: the vision graph's module over one image's views (atp.export.vision)
    summary = "LLaVA-1.5 / llava-interleave: one fixed-size view, CLIP (CLS) or SigLIP tower, MLP projector"
    text_model_types = ("llama", "mistral", "qwen2")

    def __init__(self, model, processor, source: str):
        self.model = model.eval().float()
        self.processor = processor
        self.source = source
        cfg = model.config
        self.config = cfg
        self.text_config = cfg.text_config
        self.vision_config = cfg.vision_config
        self._check_supported()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "LlavaAdapter":
        """Load a local llava-hf style checkpoint folder (weights + processor files).

        Raises:
            CheckpointError: the folder cannot be loaded as a LLaVA model with its processor.
        """
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import transformers
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(path))
        except Exception as exc:  # transformers raises many kinds here
            raise CheckpointError(f"cannot load {path} as a LLaVA model: {exc}") from exc
        cls.check_config(config)  # refuse unsupported variants before reading any weight
        try:
            model = getattr(transformers, cls.hf_class_for(config)).from_pretrained(str(path), dtype=torch.float32)
        except Exception as exc:
            raise CheckpointError(f"cannot load {path} as a {cls.hf_class_for(config)}: {exc}") from exc
        try:
            processor = load_processor(path)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"cannot load the processor (tokenizer + image processor) of {path}: {exc}") from exc
        return cls(model, processor, source=str(Path(path).resolve()))

    @classmethod
    def hf_class_for(cls, config) -> str:
        """The transformers class that loads ``config``'s checkpoint."""
        return cls.hf_class

    @classmethod
    def check_lm_and_tower(cls, config) -> None:
        """Refuse a language model this adapter does not list, or a tower no file reads, naming what is supported.

        Raises:
            CheckpointError: the text config's model_type or the vision config's tower is not supported.
        """
        tt = config.text_config.model_type
        if tt not in cls.text_model_types:
            raise CheckpointError(f"unsupported {cls.title} language model {tt!r}; supported: {', '.join(cls.text_model_types)}")
        tower_class(config.vision_config)  # raises for a tower no file reads

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse LLaVA variants atp does not export, naming what is supported.

        Raises:
            CheckpointError: language model, tower, feature layer or select strategy outside what is supported.
        """
        tc, vc = config.text_config, config.vision_config
        tt, vt = tc.model_type, vc.model_type
        cls.check_lm_and_tower(config)
        if not isinstance(config.vision_feature_layer, int):
            raise CheckpointError("multi-layer vision_feature_layer (a list) is not supported yet; use a single layer")
        if config.vision_feature_select_strategy not in ("default", "full"):
            raise CheckpointError(f"unknown vision_feature_select_strategy {config.vision_feature_select_strategy!r}; "
                                  "supported: default, full")
        if vt == "siglip_vision_model" and config.vision_feature_select_strategy != "full":
            raise CheckpointError("a SigLIP tower has no CLS token: LLaVA with SigLIP needs vision_feature_select_strategy "
                                  "'full' (llava-interleave and OneVision checkpoints use it)")
        if getattr(tc, "use_sliding_window", False):
            raise CheckpointError(f"{tt} with sliding-window attention is not supported yet")

    def _check_supported(self) -> None:
        self.check_config(self.config)
        if hasattr(self.language_model.layers[0].self_attn, "q_norm"):
            raise CheckpointError(f"{self.text_config.model_type} with q/k norms is not supported yet")

    # ------------------------------------------------------------------ facts
    @property
    def has_cls(self) -> bool:
        """Whether the tower puts a CLS token first (CLIP) or has none (SigLIP)."""
        return tower_class(self.vision_config).has_cls

    @property
    def num_visual_tokens(self) -> int:
        patches = (self.vision_config.image_size // self.vision_config.patch_size) ** 2
        return patches + (1 if self.has_cls and self.config.vision_feature_select_strategy == "full" else 0)

    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_token(self) -> str:
        return getattr(self.processor, "image_token", None) or "<image>"

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    def model_info(self) -> dict:
        tc = self.text_config
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        return {
            "model_type": self.config.model_type,
            "text_model_type": tc.model_type,
            "vision_model_type": self.vision_config.model_type,
            "num_visual_tokens": self.num_visual_tokens,
            "hidden_size": tc.hidden_size,
            "vision_hidden_size": getattr(self.vision_config, "embed_dim", None) or self.vision_config.hidden_size,
            "vocab_size": tc.vocab_size,
            "num_layers": tc.num_hidden_layers,
            "num_attention_heads": tc.num_attention_heads,
            "num_kv_heads": tc.num_key_value_heads,
            "head_dim": head_dim,
            "vision_feature_layer": self.feature_layer,
            "vision_feature_select_strategy": getattr(self.config, "vision_feature_select_strategy", "full"),
            "eos_token_ids": self.eos_token_ids(),
            "pad_token_id": self.tokenizer.pad_token_id,
            "cost": self.cost_model(),
        }

    def _vision_cost(self) -> tuple[int, int]:
        """(tower layers that run, tokens they run on) per view, for :meth:`cost_model`."""
        vc = self.vision_config
        n_layers = len(self._vision_model().encoder.layers)
        fl = self.feature_layer
        return fl if fl >= 0 else n_layers + 1 + fl, (vc.image_size // vc.patch_size) ** 2 + (1 if self.has_cls else 0)

    def cost_model(self) -> dict:
        """Sizes for analytic FLOP counts (``atp-export bench``): what runs per image and per token."""
        vc = self.vision_config
        used, tokens = self._vision_cost()
        lm = self.language_model
        linear = sum(m.weight.numel() for m in lm.layers.modules() if isinstance(m, torch.nn.Linear))
        return {
            "vision_layers_used": int(used),
            "vision_tokens": int(tokens),
            "vision_hidden": int(getattr(vc, "embed_dim", None) or vc.hidden_size),
            "vision_intermediate": int(getattr(vc, "intermediate_size", None) or vc.embed_dim * vc.mlp_ratio),
            "patch_size": int(vc.patch_size),
            "projector_params": int(sum(p.numel() for p in self.connector.parameters())),
            "lm_linear_params": int(linear),
            "lm_head_params": int(self.model.lm_head.weight.numel()),
        }

    def eos_token_ids(self) -> list[int]:
        ids = []
        gen = getattr(self.model, "generation_config", None)
        for src in (getattr(gen, "eos_token_id", None), self.tokenizer.eos_token_id):
            if src is None:
                continue
            ids += list(src) if isinstance(src, (list, tuple)) else [src]
        return sorted({int(i) for i in ids})

    def preprocessing(self) -> dict:
        """The image processor's steps as plain data for torch-free runtimes."""
        ip = self.processor.image_processor
        size = _plain_size(ip.size)
        crop = _plain_size(getattr(ip, "crop_size", None))
        resample = getattr(ip, "resample", 3)
        return {
            "convert_rgb": bool(getattr(ip, "do_convert_rgb", True)),
            "resize": size if getattr(ip, "do_resize", True) else None,
            "resample": int(getattr(resample, "value", resample)) if resample is not None else 3,
            "center_crop": crop if getattr(ip, "do_center_crop", False) and crop else None,
            "rescale_factor": float(ip.rescale_factor) if getattr(ip, "do_rescale", True) else None,
            "mean": [float(x) for x in ip.image_mean] if getattr(ip, "do_normalize", True) else None,
            "std": [float(x) for x in ip.image_std] if getattr(ip, "do_normalize", True) else None,
            "image_size": [self.image_size, self.image_size],
            "layout": "NCHW",
        }

    def prompt_template(self) -> str:
        """The chat template rendered for one user turn (image + text), with ``{prompt}`` left open."""
        messages_image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": _PROMPT_SENTINEL}]}]
        for render in (
            lambda: self.processor.apply_chat_template(messages_image, add_generation_prompt=True, tokenize=False),
            lambda: self.tokenizer.apply_chat_template(
                [{"role": "user", "content": f"{self.image_token}\n{_PROMPT_SENTINEL}"}],
                add_generation_prompt=True,
                tokenize=False,
            ),
        ):
            try:
                text = render()
            except Exception:  # no template, or one that wants other message shapes
                continue
            if isinstance(text, str) and _PROMPT_SENTINEL in text and self.image_token in text:
                return text.replace(_PROMPT_SENTINEL, "{prompt}")
        log.info("checkpoint has no usable chat template; using the LLaVA-1.5 prompt format")
        return LLAVA15_TEMPLATE.replace("<image>", self.image_token)

    # ------------------------------------------------------------------ graphs
    @property
    def language_model(self) -> torch.nn.Module:
        """The decoder stack (embeddings, layers, final norm) without the LM head."""
        return self.model.model.language_model

    @property
    def feature_layer(self) -> int:
        """The tower layer the connector reads (``hidden_states`` index; the last one where the config names none)."""
        return int(getattr(self.config, "vision_feature_layer", -1))

    def _vision_model(self):
        tower = self.model.model.vision_tower
        return getattr(tower, "vision_model", tower)  # transformers 4.x nests it

    def tower(self):
        """The vision tower up to LLaVA's feature layer (:func:`atp.export.towers.tower_for`)."""
        return tower_for(self._vision_model(), self.vision_config, self.config.vision_feature_layer,
                         drop_cls=self.config.vision_feature_select_strategy == "default")

    @property
    def connector(self) -> torch.nn.Module:
        return self.model.model.multi_modal_projector

    def vision_inputs(self, batch: int = 2) -> VisionInputs:
        """``pixel_values [B, 3, S, S]``: one fixed-size view per image (batch axis dynamic)."""
        g = torch.Generator().manual_seed(0)
        px = torch.randn(batch, 3, self.image_size, self.image_size, generator=g)
        return VisionInputs(("pixel_values",), {"pixel_values": {0: "batch"}}, (px,))

    def multi_view_module(self, scorer: torch.nn.Module, auto_keep=None):
        """The vision module of a multi-view architecture (``gate_class`` over one image's views); refuses what needs
        one fixed view.

        Raises:
            CheckpointError: CLIP text space, ``--keep auto``, contextual merge or a prompt-reading scorer (FastV).
        """
        if scorer.text_space == "clip" or auto_keep is not None or scorer.merges_tokens or scorer.needs_prompt:
            raise CheckpointError(f"scorer {type(scorer).__name__} with these options is not supported for {self.title} yet "
                                  "(CLIP text space, --keep auto, contextual merge and fastv need one fixed view)")
        return self.gate_class(self.tower(), connector=self.connector, scorer=scorer).eval()

    def clip_patch_embedder(self, clip):
        from atp.export.clip import ClipPatchEmbedder

        if clip is None:
            raise CheckpointError("this scorer is in CLIP text space: give an open_clip model")
        if self.config.vision_feature_select_strategy != "default":
            raise CheckpointError("CLIP text space needs vision_feature_select_strategy 'default' (patch tokens only)")
        pre = self.preprocessing()
        return ClipPatchEmbedder(clip, pre["mean"] or (0, 0, 0), pre["std"] or (1, 1, 1),
                                 self.vision_config.image_size // self.vision_config.patch_size)

    def decoder_module(self, kv_dtype: str = "float32", all_logits: bool = False) -> LlamaLikeDecoder:
        return LlamaLikeDecoder(self.language_model, self.model.lm_head, self.text_config, kv_dtype=kv_dtype,
                                all_logits=all_logits).eval()

    def embedding_table(self) -> np.ndarray:
        return self.model.get_input_embeddings().weight.detach().float().numpy()

    def save_tokenizer(self, out: Path) -> None:
        self.tokenizer.save_pretrained(str(out))
        if not (out / "tokenizer.json").is_file():
            raise CheckpointError("the checkpoint's tokenizer has no fast (tokenizer.json) form; atp runtimes need it")
