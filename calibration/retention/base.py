"""The contract every retention scorer follows.

A scorer is a ``torch.nn.Module`` that maps a :class:`VisionContext` to per-token
scores ``[B, N]`` (higher = keep); the gate keeps the top K. It runs inside the
exported vision graph, so it must use traceable tensor ops only: no Python loops
over tokens and no data-dependent Python control flow (a selection loop goes into
a scripted function, which exports as an ONNX ``Loop``).

A scorer that needs the prompt declares ``needs_text = True``; its vision graph then
has a ``text_embeds [B, D]`` input: the mean of the prompt's token embeddings in the
language model's embedding space (the runtime computes it from the bundle's table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class VisionContext:
    """What the vision graph offers a scorer.

    Attributes:
        features: ``[B, N, Dv]`` the tokens the projector reads (feature layer output).
        saliency: Callable returning ``[B, N]`` token saliency from the tower: CLS attention at the feature layer
            (mean over heads, CLS query row only) where the tower has a CLS token, else the attention each token
            receives (mean over queries and heads); ``saliency_kind`` says which (the manifest records it).
        project: The multimodal projector (``[..., Dv] -> [..., D]``).
        keep: int64 scalar K (for selection scorers that stop after K picks).
        text_embeds: ``[B, D]`` prompt embedding in LM space, for scorers with ``needs_text``.
        prompt_prefix: ``[B, P, D]`` token embeddings of the prompt before the image placeholder
            (scorers with ``needs_prompt``).
        prompt_suffix: ``[B, S, D]`` token embeddings after the placeholder.
        lm_attention: ``(sequence [B, T, D], layer, n_queries) -> [B, n_queries, T]``: attention
            probabilities (mean over heads) of the last ``n_queries`` positions at LM layer ``layer``
            (clamped to the last layer) after the layers before it (scorers with ``needs_prompt``).
        clip_patches: Callable returning ``[B, N, E]`` CLIP-space patch embeddings (bundles made with an
            open_clip model, scorers with ``text_space == "clip"``).
        key_metric: Callable returning ``[B, N, hd]`` keys of the feature layer, mean over heads (VisionZip's merge).
    """

    features: torch.Tensor
    saliency: Callable[[], torch.Tensor]
    project: Callable[[torch.Tensor], torch.Tensor]
    keep: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    prompt_prefix: torch.Tensor | None = None
    prompt_suffix: torch.Tensor | None = None
    lm_attention: Callable[[torch.Tensor, int, int], torch.Tensor] | None = None
    clip_patches: Callable[[], torch.Tensor] | None = None
    key_metric: Callable[[], torch.Tensor] | None = None
    saliency_kind: str = "cls_attention"
    _projected: torch.Tensor | None = field(default=None, repr=False)

    def projected(self) -> torch.Tensor:
        """``[B, N, D]`` all tokens through the projector (computed once; the gate then gathers from it)."""
        if self._projected is None:
            self._projected = self.project(self.features)
        return self._projected


class Scorer(torch.nn.Module):
    """Base class: subclasses implement ``forward(ctx) -> [B, N]`` scores.

    Capabilities are typed class attributes (read as ``scorer.needs_text``, or on the class before it is built);
    the exporter, calibration and the CLI read them, never ``getattr`` with a default."""

    #: Short description shown by ``atp-export list``.
    summary: str = ""
    #: True when the vision graph needs the ``text_embeds`` input.
    needs_text: bool = False
    #: True when the vision graph needs ``prompt_prefix``/``prompt_suffix`` and the language model.
    needs_prompt: bool = False
    #: False for scorers whose scores are a pick order (``idp``, ``divprune``): no ``--keep auto``.
    auto_keep_supported: bool = True
    #: True when the outputs are not a token subset (VisionZip's contextual merge): calibration refuses it.
    merges_tokens: bool = False
    #: True when text relevance can be measured in CLIP space (``text_space="clip"`` with an open_clip model).
    supports_clip: bool = False
    #: True when the score reads the tower's saliency (CLS attention, or its CLS-free stand-in: the manifest names it).
    uses_saliency: bool = False
    #: Where text relevance is measured: ``"lm"`` (LM embedding space) or ``"clip"``; set per instance.
    text_space: str = "lm"

    def forward(self, ctx: VisionContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


def unit_interval(name: str, value: float) -> float:
    """``value`` as a float, or ValueError when it lies outside [0, 1] (blend weights)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


def minmax(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-row min-max normalisation of ``[B, N]`` scores to [0, 1]."""
    lo = x.min(dim=-1, keepdim=True).values
    hi = x.max(dim=-1, keepdim=True).values
    return (x - lo) / (hi - lo + eps)


def text_similarity(ctx: VisionContext) -> torch.Tensor:
    """``[B, N]`` cosine between each projected visual token and the prompt embedding (LM space)."""
    v = torch.nn.functional.normalize(ctx.projected(), dim=-1)
    t = torch.nn.functional.normalize(ctx.text_embeds, dim=-1)
    return torch.matmul(v, t.unsqueeze(-1)).squeeze(-1)


def text_relevance(ctx: VisionContext, text_space: str = "lm") -> torch.Tensor:
    """``[B, N]`` cosine between each visual token and the prompt in ``text_space``.

    ``"lm"``: projected visual tokens vs the mean prompt token embedding (:func:`text_similarity`);
    ``"clip"``: the open_clip patch embeddings vs the prompt's CLIP text embedding.
    """
    if text_space == "clip":
        if ctx.clip_patches is None:
            raise ValueError("text relevance in CLIP space needs the open_clip patch embedder in the vision context")
        v = torch.nn.functional.normalize(ctx.clip_patches(), dim=-1)
        t = torch.nn.functional.normalize(ctx.text_embeds, dim=-1)
        return torch.matmul(v, t.unsqueeze(-1)).squeeze(-1)
    return text_similarity(ctx)


def check_text_space(text_space: str) -> str:
    """``text_space`` if it is ``"lm"`` or ``"clip"``, else ValueError."""
    if text_space not in ("lm", "clip"):
        raise ValueError(f"text_space must be 'lm' or 'clip', got {text_space!r}")
    return text_space


def hybrid_relevance(ctx: VisionContext, alpha: float, text_space: str = "lm") -> torch.Tensor:
    """``alpha * minmax(saliency) + (1 - alpha) * minmax(text relevance)``: ``atp``'s score, ``qat``'s semantic term."""
    return alpha * minmax(ctx.saliency()) + (1.0 - alpha) * minmax(text_relevance(ctx, text_space))
