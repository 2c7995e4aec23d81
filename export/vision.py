"""Vision graph: pixel_values -> vision tower -> scorer -> top-K gate -> projector.

Only the encoder layers up to the feature layer run (LLaVA reads the penultimate
layer, so the last layer is dead weight for it). The gate sits before the projector,
so the projector runs on K tokens, not N.
"""

from __future__ import annotations

import torch
from torch import nn

from atp.calibration.retention.base import Scorer, VisionContext
from atp.export.gate import auto_topk_ascending, gather_padded, gather_tokens, slice_rows, topk_ascending


def _layer_out(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def clip_cls_attention(layer: nn.Module, hidden: torch.Tensor, drop_cls: bool) -> torch.Tensor:
    """CLS-query attention row of a CLIP encoder layer, mean over heads.

    Computes only the CLS query against all keys (O(N) memory), as the layer itself would
    inside its attention: ``softmax(q_cls . k^T * scale)``.

    Args:
        layer: A ``CLIPEncoderLayer`` (``layer_norm1``, ``self_attn.{q,k}_proj``).
        hidden: ``[B, 1 + N, D]`` input of that layer.
        drop_cls: Drop the CLS -> CLS entry (when the projector does not read the CLS token).

    Returns:
        ``[B, N]`` (or ``[B, 1 + N]`` when ``drop_cls`` is False) attention weights.
    """
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    b, t, _ = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(x[:, :1]).view(b, 1, heads, hd).transpose(1, 2)  # [B,H,1,hd]
    k = attn.k_proj(x).view(b, t, heads, hd).transpose(1, 2)  # [B,H,T,hd]
    probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * attn.scale, dim=-1)  # [B,H,1,T]
    row = probs.mean(dim=1)[:, 0]  # [B,T]
    return row[:, 1:] if drop_cls else row


def clip_key_metric(layer: nn.Module, hidden: torch.Tensor, drop_cls: bool) -> torch.Tensor:
    """``[B, N, head_dim]`` keys of a CLIP encoder layer, mean over heads (VisionZip's merge metric)."""
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    b, t, _ = x.shape
    k = attn.k_proj(x).view(b, t, attn.num_heads, attn.head_dim).mean(dim=2)
    return k[:, 1:] if drop_cls else k


class ClipVisionGate(nn.Module):
    """LLaVA vision path with the in-graph gate, for CLIP-style towers (CLS token first).

    Args:
        vision_model: ``CLIPVisionTransformer`` (``embeddings``, ``pre_layrnorm``, ``encoder.layers``).
        feature_layer: LLaVA's ``vision_feature_layer`` (index into hidden_states; -2 = penultimate).
        drop_cls: True for LLaVA's ``"default"`` feature select strategy.
        projector: The multimodal projector (per-token MLP).
        scorer: Retention scorer module.
        lm_probe: Module with ``attention_probe(seq, layer, n_queries)`` (the decoder), for scorers with
            ``needs_prompt`` (``fastv``).
        clip_patches: ``pixel_values -> [B, N, E]`` CLIP-space patch embeddings (``atp`` in CLIP space).
        auto_keep: :class:`~atp.calibration.auto_keep.AutoKeep`: K per image from the score mass (``keep``
            becomes the per-request upper bound) and a third output ``kept_count [B]``; rows are padded to the
            batch's largest K (``kept_index`` -1, ``image_embeds`` zero rows).

    Graph inputs: ``pixel_values``, ``keep``, then ``text_embeds`` if the scorer ``needs_text``, then
    ``prompt_prefix`` and ``prompt_suffix`` if it ``needs_prompt``.
    """

    def __init__(self, vision_model: nn.Module, feature_layer: int, drop_cls: bool, projector: nn.Module, scorer: Scorer,
                 lm_probe: nn.Module | None = None, clip_patches: nn.Module | None = None, auto_keep=None):
        super().__init__()
        if auto_keep is not None and not getattr(scorer, "auto_keep_supported", True):
            raise ValueError(f"scorer {type(scorer).__name__} returns pick order, not a score distribution: "
                             "it does not support --keep auto")
        self.auto_keep = auto_keep
        layers = vision_model.encoder.layers
        n_hidden = len(layers) + 1  # hidden_states = [embeddings, layer_0 out, ..., layer_{L-1} out]
        idx = feature_layer if feature_layer >= 0 else n_hidden + feature_layer
        if not 1 <= idx < n_hidden:
            raise ValueError(f"vision_feature_layer {feature_layer} selects no encoder layer output")
        self.embeddings = vision_model.embeddings
        self.pre_layrnorm = vision_model.pre_layrnorm
        self.layers = nn.ModuleList(list(layers)[:idx])
        self.drop_cls = drop_cls
        self.projector = projector
        self.scorer = scorer
        if getattr(scorer, "needs_prompt", False) and lm_probe is None:
            raise ValueError(f"scorer {type(scorer).__name__} needs the language model (lm_probe)")
        self.lm_probe = lm_probe if getattr(scorer, "needs_prompt", False) else None
        if getattr(scorer, "text_space", "lm") == "clip" and clip_patches is None:
            raise ValueError("a scorer in CLIP text space needs the open_clip patch embedder")
        self.clip_patches = clip_patches if getattr(scorer, "text_space", "lm") == "clip" else None

    def features(self, pixel_values: torch.Tensor):
        """(feature-layer tokens [B, N, Dv], lazy CLS attention [B, N], lazy key metric [B, N, head_dim])."""
        h = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.layers[:-1]:
            h = _layer_out(layer(h, None))
        last = self.layers[-1]
        h_in = h
        h = _layer_out(last(h_in, None))
        feats = h[:, 1:] if self.drop_cls else h
        return feats, (lambda: clip_cls_attention(last, h_in, self.drop_cls)), (lambda: clip_key_metric(last, h_in, self.drop_cls))

    def context(self, pixel_values: torch.Tensor, keep: torch.Tensor, text_embeds: torch.Tensor | None = None,
                prompt_prefix: torch.Tensor | None = None, prompt_suffix: torch.Tensor | None = None) -> VisionContext:
        feats, cls_attn, keys = self.features(pixel_values)
        probe = self.lm_probe.attention_probe if self.lm_probe is not None else None
        clip = (lambda: self.clip_patches(pixel_values)) if self.clip_patches is not None else None
        return VisionContext(features=feats, cls_attention=cls_attn, project=self.projector, keep=keep, text_embeds=text_embeds,
                             prompt_prefix=prompt_prefix, prompt_suffix=prompt_suffix, lm_attention=probe, clip_patches=clip,
                             key_metric=keys)

    def forward(self, pixel_values: torch.Tensor, keep: torch.Tensor, *extra: torch.Tensor):
        extra = list(extra)
        text_embeds = extra.pop(0) if self.scorer.needs_text else None
        prefix, suffix = (extra.pop(0), extra.pop(0)) if self.lm_probe is not None else (None, None)
        ctx = self.context(pixel_values, keep, text_embeds, prefix, suffix)
        if self.auto_keep is not None:
            index, count = auto_topk_ascending(self.scorer(ctx), keep, self.auto_keep)
            if ctx._projected is not None:
                return gather_padded(ctx._projected, index), index, count
            mask = (index >= 0).unsqueeze(-1).to(ctx.features.dtype)
            return self.projector(gather_tokens(ctx.features, torch.clamp(index, min=0))) * mask, index, count
        if getattr(self.scorer, "merges_tokens", False):  # VisionZip merge: K - c dominant + c contextual tokens
            dominant, c = self.scorer.split(keep)
            index = topk_ascending(self.scorer(ctx), dominant)
            merged = slice_rows(self.scorer.merge(ctx, index, c), c)
            return self.projector(torch.cat([gather_tokens(ctx.features, index), merged], dim=1)), index
        index = topk_ascending(self.scorer(ctx), keep)
        if ctx._projected is not None:  # the scorer already projected every token: gather, do not project twice
            return gather_tokens(ctx._projected, index), index
        return self.projector(gather_tokens(ctx.features, index)), index
