"""Dynamic K per image (``atp-export onnx --keep auto``): how many visual tokens an image needs.

Definition (per image, scores ``s [N]`` from the scorer, higher = keep):

1. Score mass: ``p_i = (s_i - min_j s_j) / sum_j (s_j - min_j s_j)``: shift the scores so the
   lowest is zero and divide by their sum. Shift and scale invariant, so one rule serves scorers
   whose scores live on different scales (CLS attention probabilities, min-max blends in [0, 1]).
   A flat image (every score equal, no mass) keeps ``k_max``.
2. ``K_mass`` = the smallest K whose K highest ``p`` sum to at least ``fraction``
   (the cumulative sum runs in float64, in the graph as here).
3. ``K = min(clamp(K_mass, k_min, k_max), keep, N)``, at least 1: ``keep`` is the graph's run-time
   input, which for an auto graph is the per-request upper bound (the runtime passes ``k_max``).

``fraction``, ``k_min`` and ``k_max`` come from the calibration artifact (``atp-export calibrate``
fits them per scorer so the answers match the dense model's on the calibration set at the
strictest accuracy budget) or, without one, from :meth:`AutoKeep.defaults`.

Selection scorers (``idp``, ``divprune``) return pick order, not a score distribution, and their
scores depend on ``keep`` itself: they do not support auto K (``auto_keep_supported = False``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from atp.errors import ConfigError

#: Fractions of the score mass searched by calibration.
FRACTIONS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
DEFAULT_FRACTION = 0.9
DEFAULT_MIN_RATIO = 0.0625
NORMALISATION = ("p_i = (s_i - min_j s_j) / sum_j (s_j - min_j s_j) per image; K_mass = smallest K whose K largest p_i "
                 "sum to >= fraction (float64 cumulative sum); flat scores keep k_max; K = min(clamp(K_mass, k_min, k_max), "
                 "keep, N)")


@dataclass(frozen=True)
class AutoKeep:
    """Parameters of the per-image keep count.

    Attributes:
        fraction: Share of the score mass the kept tokens must cover, in (0, 1].
        k_min: Lower bound on K (>= 1).
        k_max: Upper bound on K (>= k_min).
        source: Where the values come from (recorded in the manifest).
    """

    fraction: float
    k_min: int
    k_max: int
    source: str = "defaults"

    def __post_init__(self):
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) or not 0.0 < float(self.fraction) <= 1.0:
            raise ConfigError(f"auto keep fraction must be in (0, 1], got {self.fraction!r}")
        object.__setattr__(self, "fraction", float(self.fraction))
        for name in ("k_min", "k_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"auto keep {name} must be an integer >= 1, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.k_min > self.k_max:
            raise ConfigError(f"auto keep k_min ({self.k_min}) exceeds k_max ({self.k_max})")

    @classmethod
    def defaults(cls, num_tokens: int, source: str = "defaults (no calibration artifact)") -> "AutoKeep":
        """Fraction 0.9 of the score mass, K between ceil(N / 16) and N."""
        return cls(DEFAULT_FRACTION, max(1, math.ceil(DEFAULT_MIN_RATIO * num_tokens)), int(num_tokens), source)

    def check(self, num_tokens: int) -> None:
        """ConfigError unless the bounds fit a model with ``num_tokens`` visual tokens."""
        if self.k_max > num_tokens:
            raise ConfigError(f"auto keep k_max={self.k_max} exceeds the {num_tokens} visual tokens of this model "
                              "(calibration artifact for another model size?)")

    def to_dict(self) -> dict:
        return {**asdict(self), "normalisation": NORMALISATION}


def mass_counts(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """``[B, N]`` scores -> ``[B]`` int64 K_mass (N for flat rows); eager PyTorch, same steps as the graph."""
    n = scores.shape[-1]
    vals = torch.sort(scores, dim=-1, descending=True, stable=True).values
    shifted = (vals - scores.min(dim=-1, keepdim=True).values).to(torch.float64)
    cum = torch.cumsum(shifted, dim=-1)
    last = cum[:, -1:]
    k = (cum < last * float(fraction)).to(torch.int64).sum(dim=-1) + 1
    return torch.where(last[:, 0] > 0, k, torch.full_like(k, n))


def clamp_counts(k_mass: torch.Tensor, k_min: int, k_max: int, keep: torch.Tensor | int, n: int) -> torch.Tensor:
    """``min(clamp(k_mass, k_min, k_max), keep, n)``, at least 1."""
    k = torch.clamp(k_mass, min=int(k_min), max=int(k_max))
    k = torch.minimum(k, torch.as_tensor(keep, dtype=torch.int64))
    return torch.clamp(k, min=1, max=int(n))


def auto_counts(scores: torch.Tensor, auto: AutoKeep, keep: torch.Tensor | int) -> torch.Tensor:
    """``[B]`` int64 K per image for ``scores [B, N]``."""
    return clamp_counts(mass_counts(scores, auto.fraction), auto.k_min, auto.k_max, keep, scores.shape[-1])


def auto_keep_reference(scores: np.ndarray, fraction: float, k_min: int, k_max: int, keep: int) -> tuple[list[int], list[set]]:
    """Plain numpy definition: (K per row, kept index set per row); ties keep the lower index."""
    counts, sets = [], []
    for row in np.asarray(scores, np.float64):
        n = row.shape[0]
        order = sorted(range(n), key=lambda i: (-row[i], i))
        cum = np.cumsum(row[order] - row.min())
        total = float(cum[-1])
        if total > 0:
            k = next((j + 1 for j, acc in enumerate(cum) if acc >= fraction * total), n)
        else:
            k = n
        k = max(1, min(min(max(k, k_min), k_max), keep, n))
        counts.append(k)
        sets.append(set(order[:k]))
    return counts, sets
