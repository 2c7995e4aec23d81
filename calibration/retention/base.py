"""The contract every retention scorer follows.

A scorer is a ``torch.nn.Module`` that maps a :class:`VisionContext` to per-token
scores ``[B, N]`` (higher = keep). It runs inside the exported vision graph, so it
must use traceable tensor ops only: no Python loops over tokens, no data-dependent
Python control flow.
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
        cls_attention: Callable returning ``[B, N]``: attention from the CLS token to each
            token at the feature layer, mean over heads. Computed on demand, from the CLS
            query row only (O(N), no N x N map).
        extras: Named extra inputs a scorer may declare (e.g. ``text_embeds``).
    """

    features: torch.Tensor
    cls_attention: Callable[[], torch.Tensor]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class Scorer(torch.nn.Module):
    """Base class: subclasses implement ``forward(ctx) -> [B, N]`` scores."""

    #: Short description shown by ``atp-export onnx --help``.
    summary: str = ""

    def forward(self, ctx: VisionContext) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
