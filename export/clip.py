"""CLIP text space for ``atp``: a user-supplied open_clip model (``clip`` extra).

How the open_clip model relates to the VLM's tower: it is a **separate image-text model run on the
same pixels**. The VLM's tower (an HF ``CLIPVisionModel``) feeds the projector as before; the
open_clip image tower runs next to it inside the vision graph, on the VLM's ``pixel_values``
re-normalised with open_clip's mean/std and resized to its input size, and its patch tokens
(``ln_post`` then the visual projection ``proj``: the MaskCLIP-style dense CLIP embedding) give each
patch a CLIP-space embedding. When its patch grid differs from the VLM's, the similarity map is
resampled bilinearly onto the VLM's grid. This works for any pair (cost: one extra CLIP image
tower pass, recorded in the manifest); for LLaVA-1.5, whose tower *is* OpenAI CLIP ViT-L/14-336,
the same weights could be shared instead (not done here).

The prompt's CLIP text embedding comes from ``text.onnx`` (``input_ids [B, context] -> text_embeds
[B, E]``, L2-normalised), run once per prompt by the runtime with the bundled CLIP tokenizer
(``clip_tokenizer/tokenizer.json``, converted from open_clip's BPE; ids equal open_clip's).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from atp.errors import CheckpointError, ConfigError, require

log = logging.getLogger(__name__)

TEXT_GRAPH_FILE = "text.onnx"
CLIP_TOKENIZER_DIR = "clip_tokenizer"
_CLIP_SPLIT = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@contextlib.contextmanager
def no_mha_fastpath():
    """open_clip uses ``nn.MultiheadAttention``, whose inference fast path (``_native_multi_head_attention``)
    has no ONNX export: trace the plain path."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


class OpenClip:
    """A user-supplied open_clip model and its tokenizer.

    Args:
        model: ``open_clip.CLIP`` (ViT image tower with class token).
        tokenizer: open_clip's ``SimpleTokenizer`` (``get_tokenizer(name)``).
        name: What to record in the manifest.
    """

    def __init__(self, model: nn.Module, tokenizer, name: str):
        visual = getattr(model, "visual", None)
        if visual is None or not hasattr(visual, "conv1") or getattr(visual, "attn_pool", None) is not None:
            raise ConfigError("the CLIP text space needs an open_clip ViT image tower (conv1 patches, class token, no attention pool)")
        if getattr(visual, "pool_type", "tok") != "tok" or getattr(visual, "final_ln_after_pool", False) or visual.proj is None:
            raise ConfigError("the CLIP text space needs an open_clip ViT with token pooling and a visual projection")
        if not hasattr(tokenizer, "encoder") or not hasattr(tokenizer, "bpe_ranks"):
            raise ConfigError("the CLIP text space needs open_clip's SimpleTokenizer (BPE)")
        self.model = model.eval().float()
        self.tokenizer = tokenizer
        self.name = name

    @classmethod
    def load(cls, model_name: str, weights: str | None) -> "OpenClip":
        """``open_clip.create_model(model_name, pretrained=weights)`` with local weights only."""
        open_clip = require("open_clip", "clip")
        if weights is not None and not Path(weights).is_file():
            raise CheckpointError(f"CLIP weights {weights} not found (give a local open_clip checkpoint file)")
        try:
            model = open_clip.create_model(model_name, pretrained=weights)
            tok = open_clip.get_tokenizer(model_name)
        except Exception as exc:  # open_clip raises RuntimeError/KeyError for unknown names
            raise CheckpointError(f"cannot build open_clip model {model_name!r} from {weights}: {exc}") from exc
        return cls(model, tok, f"{model_name}:{weights}")

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.proj.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    def hf_tokenizer(self):
        """open_clip's BPE as a ``tokenizers.Tokenizer`` (no torch at run time)."""
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

        enc = self.tokenizer.encoder
        merges = sorted(self.tokenizer.bpe_ranks, key=self.tokenizer.bpe_ranks.get)
        t = Tokenizer(models.BPE(vocab=dict(enc), merges=merges, end_of_word_suffix="</w>", fuse_unk=False))
        t.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                             normalizers.Lowercase(), normalizers.Strip()])
        t.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        sot, eot = enc["<start_of_text>"], enc["<end_of_text>"]
        t.post_processor = processors.TemplateProcessing(single="<start_of_text> $A <end_of_text>",
                                                         special_tokens=[("<start_of_text>", sot), ("<end_of_text>", eot)])
        t.decoder = decoders.ByteLevel()
        return t

    def save_tokenizer(self, out: Path) -> dict:
        out.mkdir(parents=True, exist_ok=True)
        self.hf_tokenizer().save(str(out / "tokenizer.json"))
        eot = self.tokenizer.encoder["<end_of_text>"]
        info = {"file": f"{out.name}/tokenizer.json", "context_length": self.context_length, "pad_id": 0, "eot_id": int(eot)}
        (out / "clip_tokenizer.json").write_text(json.dumps(info))
        return info


class ClipTextEncoder(nn.Module):
    """``input_ids [B, context] -> [B, E]`` L2-normalised CLIP text embeddings."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, normalize=True)


class ClipPatchEmbedder(nn.Module):
    """VLM ``pixel_values`` -> ``[B, N, E]`` CLIP-space patch embeddings on the VLM's patch grid.

    Args:
        clip: The open_clip model.
        vlm_mean, vlm_std: The VLM processor's normalisation (undone first).
        vlm_grid: Patches per side of the VLM tower (N = grid ** 2).
    """

    def __init__(self, clip: OpenClip, vlm_mean, vlm_std, vlm_grid: int):
        super().__init__()
        self.visual = clip.model.visual
        size = self.visual.image_size
        self.clip_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = getattr(self.visual, "preprocess_cfg", None) or {}
        mean = cfg.get("mean") or getattr(self.visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073)
        std = cfg.get("std") or getattr(self.visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711)
        # x_clip = (px * vlm_std + vlm_mean - mean) / std, per channel
        vm, vs = torch.tensor(vlm_mean, dtype=torch.float32), torch.tensor(vlm_std, dtype=torch.float32)
        m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        self.register_buffer("scale", (vs / s).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((vm - m) / s).view(1, 3, 1, 1), persistent=False)
        self.vlm_grid = int(vlm_grid)
        gs = self.visual.grid_size
        self.clip_grid = tuple(gs) if isinstance(gs, (tuple, list)) else (gs, gs)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values * self.scale + self.shift
        if tuple(x.shape[-2:]) != self.clip_size:
            x = F.interpolate(x, size=self.clip_size, mode="bilinear", align_corners=False)
        v = self.visual
        h = v.transformer(v._embeds(x))
        tokens = v.ln_post(h)[:, 1:] @ v.proj  # [B, Nc, E]
        if self.clip_grid != (self.vlm_grid, self.vlm_grid):
            b, _, e = tokens.shape
            grid = tokens.transpose(1, 2).reshape(b, e, *self.clip_grid)
            grid = F.interpolate(grid, size=(self.vlm_grid, self.vlm_grid), mode="bilinear", align_corners=False)
            tokens = grid.reshape(b, e, -1).transpose(1, 2)
        return tokens
