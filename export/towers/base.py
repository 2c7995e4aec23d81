"""The tower contract: what a vision tower hands the gate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import nn

from atp.errors import CheckpointError
from atp.registry import TOWERS

#: Saliency kinds a tower can offer, as the manifest names them (``graphs.vision.saliency``).
SALIENCY_KINDS = {
    "cls_attention": "attention from the CLS query to each patch token at the feature layer, mean over heads "
                     "(CLS query row only: no N x N map)",
    "attention_received": "attention each token receives at the feature layer, mean over all queries and heads "
                          "(CLS-free towers: no CLS token to ask)",
}


@dataclass
class TowerOutput:
    """What a tower offers the gate and the scorers.

    Attributes:
        features: ``[B, N, Dv]`` feature-layer tokens the connector reads (CLS dropped where the architecture drops it).
        grid: ``(rows, cols)`` of the patch grid the N tokens lie on (N = rows * cols, or rows * cols + 1 when the
            architecture keeps the CLS token as a feature).
        saliency: Callable returning ``[B, N]`` non-negative token saliency (see :data:`SALIENCY_KINDS`).
        saliency_kind: Which saliency it is (a key of :data:`SALIENCY_KINDS`).
        key_metric: Callable returning ``[B, N, head_dim]`` feature-layer keys, mean over heads (VisionZip's merge).
        projected: ``[B, N, D]`` the connector's output over the same N tokens, where the gate sits after the
            connector (LLaVA-OneVision resizes projected tokens); None otherwise.
        deepstack: ``[L, B, N, D]`` DeepStack features (Qwen3-VL): per token, L more language-model-space features
            (intermediate tower layers through their own mergers) that join the LM's hidden states after its first L
            layers; gathered with the same kept indices. None otherwise.
    """

    features: torch.Tensor
    grid: tuple[int, int]
    saliency: Callable[[], torch.Tensor]
    saliency_kind: str
    key_metric: Callable[[], torch.Tensor]
    projected: torch.Tensor | None = None
    deepstack: torch.Tensor | None = None


class Tower(nn.Module):
    """Base class of the vision towers: ``forward(pixel_values) -> TowerOutput``.

    Subclasses set ``model_types`` (the vision configs' ``model_type`` they read), ``has_cls`` and
    ``saliency_kind``, and implement :meth:`forward`. Built by :func:`tower_for`.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    has_cls: ClassVar[bool] = False
    saliency_kind: ClassVar[str] = "attention_received"

    def forward(self, pixel_values: torch.Tensor) -> TowerOutput:  # pragma: no cover - abstract
        raise NotImplementedError


def _layer_out(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def run_layers(layers, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run encoder ``layers`` on ``h``; returns (output of the last one, input of the last one)."""
    for layer in layers[:-1]:
        h = _layer_out(layer(h, None))
    return _layer_out(layers[-1](h, None)), h


def feature_layer_index(feature_layer: int, n_layers: int) -> int:
    """How many encoder layers produce ``hidden_states[feature_layer]`` (hidden_states = [embeddings, layer outputs])."""
    n_hidden = n_layers + 1
    idx = feature_layer if feature_layer >= 0 else n_hidden + feature_layer
    if not 1 <= idx < n_hidden:
        raise ValueError(f"vision_feature_layer {feature_layer} selects no encoder layer output")
    return idx


def attention_probs(layer: nn.Module, hidden: torch.Tensor, queries: slice | None = None) -> torch.Tensor:
    """``[B, H, Q, T]`` softmax attention of an encoder layer (``layer_norm1``, ``self_attn.{q,k}_proj``, ``scale``)
    for the queries in ``queries`` (all when None), computed as the layer computes it."""
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    b, t, _ = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    xq = x if queries is None else x[:, queries]
    q = attn.q_proj(xq).view(b, xq.shape[1], heads, hd).transpose(1, 2)
    k = attn.k_proj(x).view(b, t, heads, hd).transpose(1, 2)
    return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * attn.scale, dim=-1)


def mean_keys(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """``[B, T, head_dim]`` keys of an encoder layer, mean over heads."""
    attn = layer.self_attn
    x = layer.layer_norm1(hidden)
    b, t, _ = x.shape
    return attn.k_proj(x).view(b, t, attn.num_heads, attn.head_dim).mean(dim=2)


def tower_class(vision_config) -> type[Tower]:
    """The registered tower class that reads ``vision_config.model_type``.

    Raises:
        CheckpointError: no tower reads this vision config (the message lists the ones that do).
    """
    mt = getattr(vision_config, "model_type", None)
    for name in TOWERS.names():
        cls = TOWERS.get(name)
        if mt in cls.model_types:
            return cls
    known = sorted(t for n in TOWERS.names() for t in TOWERS.get(n).model_types)
    raise CheckpointError(f"unsupported vision tower {mt!r}; supported: {', '.join(known)}")


def tower_for(vision_model: nn.Module, vision_config, feature_layer: int, drop_cls: bool) -> Tower:
    """The registered tower for ``vision_config`` (:func:`tower_class`), built on ``vision_model``."""
    return tower_class(vision_config)(vision_model, vision_config, feature_layer=feature_layer, drop_cls=drop_cls)
