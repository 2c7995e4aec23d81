"""``visionzip``: VisionZip (peer method), dominant tokens by CLS attention.

VisionZip keeps the *dominant* tokens, those the CLS token attends to most at the layer the
projector reads (attention summed over heads), and optionally merges the rest into a few
*contextual* tokens. ``visionzip`` is the dominant-token variant: the output is exactly K gathered
tokens like every other scorer, so its ranking coincides with ``cls`` on CLIP towers (the sum
and the mean over heads order tokens alike; a test asserts the equality); the bundle records
``contextual_tokens: 0``. ``visionzip-merge`` adds the contextual merge within the same budget K
(K - c dominant + c contextual tokens, as VisionZip splits e.g. 64 = 54 + 10); its merged tokens
are not original tokens, which the manifest states.
"""

from __future__ import annotations

import numpy as np
import torch

from atp.calibration.retention.base import Scorer, VisionContext
from atp.registry import SCORERS


@SCORERS.register("visionzip")
class VisionZipScorer(Scorer):
    """Dominant-token selection of VisionZip (sum over heads of the CLS attention row)."""

    summary = "VisionZip (peer): dominant tokens by CLS attention (no contextual merge)"
    uses_saliency = True
    contextual_tokens = 0

    def forward(self, ctx: VisionContext) -> torch.Tensor:
        # the context offers the mean over heads; VisionZip sums, which ranks identically
        return ctx.saliency()


def contextual_merge(features: torch.Tensor, metric: torch.Tensor, dominant: torch.Tensor, n_contextual: torch.Tensor,
                     slots: int) -> torch.Tensor:
    """VisionZip's contextual tokens, vectorised with a fixed number of slots (traceable; no loop over tokens).

    The tokens not in ``dominant`` (the *rest*, in ascending token order) are split as VisionZip does:
    ``step = max(1, n_rest // c)``; targets are the rest's members number ``0, step, 2 step, ...`` (the first c);
    every other rest token joins the target whose key is most cosine-similar (first on ties); each contextual
    token is the mean of its target and the tokens that joined it.

    Args:
        features: ``[B, N, Dv]`` the tokens the projector reads.
        metric: ``[B, N, Dm]`` similarity features (keys of the feature layer, mean over heads).
        dominant: ``[B, D]`` int64 indices of the dominant tokens.
        n_contextual: int64 scalar c <= ``slots``, c <= N - D.
        slots: Static upper bound on c.

    Returns:
        ``[B, slots, Dv]``: rows ``>= c`` are zero.
    """
    b, n = features.shape[0], features.shape[1]
    dtype = features.dtype
    m = torch.nn.functional.normalize(metric, dim=-1)
    rest = torch.ones(b, n, dtype=dtype).scatter(1, dominant, torch.zeros(dominant.shape, dtype=dtype))
    rank = torch.cumsum(rest, dim=1) - 1.0  # position of each token among the rest
    c = n_contextual.to(dtype)
    step = torch.clamp(torch.floor(rest.sum(dim=1, keepdim=True) / torch.clamp(c, min=1.0)), min=1.0)  # [B, 1]
    slot = torch.arange(slots, dtype=dtype)
    live = slot < c  # [slots]
    target = (rest.unsqueeze(-1) > 0) & (rank.unsqueeze(-1) == slot * step.unsqueeze(-1)) & live  # [B, N, slots]
    tgt = target.to(dtype)
    sim = torch.matmul(m, torch.matmul(tgt.transpose(1, 2), m).transpose(1, 2))  # [B, N, slots]
    sim = torch.where(live, sim, torch.full_like(sim, -1e9))
    joins = (rest > 0) & (tgt.sum(dim=-1) == 0)  # rest tokens that are no target
    assign = (sim.argmax(dim=-1, keepdim=True) == slot.to(torch.int64)).to(dtype) * joins.unsqueeze(-1).to(dtype)
    group = tgt + assign  # [B, N, slots]: each slot's target and the tokens that joined it
    return torch.matmul(group.transpose(1, 2), features) / torch.clamp(group.sum(dim=1), min=1.0).unsqueeze(-1)


def contextual_merge_reference(features: np.ndarray, metric: np.ndarray, dominant: list[int], c: int) -> np.ndarray:
    """One image, plain numpy, following VisionZip's code step by step: ``[c, Dv]`` contextual tokens."""
    n = features.shape[0]
    rest = [i for i in range(n) if i not in set(dominant)]
    m = metric[rest] / np.linalg.norm(metric[rest], axis=-1, keepdims=True)
    step = max(1, len(rest) // c)
    targets = list(range(0, len(rest), step))[:c]
    others = [j for j in range(len(rest)) if j not in targets]
    sim = m[others] @ m[targets].T
    out = np.stack([features[rest[t]] for t in targets]).astype(np.float64)
    count = np.ones(len(targets))
    for j, o in enumerate(others):
        t = int(np.argmax(sim[j]))
        out[t] += features[rest[o]]
        count[t] += 1
    return out / count[:, None]


@SCORERS.register("visionzip-merge")
class VisionZipMergeScorer(VisionZipScorer):
    """VisionZip with its contextual merge: of the K output tokens, ``K - c`` are dominant (CLS attention) and
    ``c`` are contextual tokens merged from the rest (:func:`contextual_merge`); see :meth:`split` for c.

    The contextual tokens are not original tokens: the bundle's manifest says so (``contextual_tokens``), and
    ``kept_index`` lists only the ``K - c`` dominant tokens.
    """

    summary = "VisionZip (peer) with contextual merge: K-c dominant tokens + c merged contextual tokens (changes outputs)"
    auto_keep_supported = False  # K here is dominant + contextual, not a share of one score distribution
    merges_tokens = True  # outputs are not a token subset (calibration, which measures subsets, refuses it)

    def __init__(self, contextual: int | None = None):
        super().__init__()
        if contextual is not None and (isinstance(contextual, bool) or not isinstance(contextual, int) or contextual < 1):
            raise ValueError(f"contextual must be an integer >= 1 or None (VisionZip's split), got {contextual!r}")
        self.contextual = contextual
        self.contextual_tokens = contextual if contextual is not None else "min(floor(10 K / 64), K - 1) (VisionZip's split)"

    def split(self, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dominant count, contextual count c) for the keep count K (int64 scalars, traceable).

        ``contextual=None`` follows VisionZip's published splits (64 = 54 + 10, 128 = 108 + 20, 192 = 162 + 30):
        c = floor(10 K / 64); a fixed ``contextual`` gives c = that. Either way c <= K - 1 (one dominant token).
        """
        c = keep * 10 // 64 if self.contextual is None else torch.full_like(keep, self.contextual)
        c = torch.clamp(torch.minimum(c, keep - 1), min=0)
        return keep - c, c

    def slots(self, n: int) -> int:
        """Static upper bound on c for N tokens."""
        return min(n, self.contextual if self.contextual is not None else n * 10 // 64 + 1)

    def merge(self, ctx: VisionContext, dominant: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``[B, slots, Dv]`` contextual slots (rows >= c zero) from the tokens not in ``dominant``."""
        metric = ctx.key_metric() if ctx.key_metric is not None else ctx.features
        return contextual_merge(ctx.features, metric, dominant, c, self.slots(ctx.features.shape[1]))
