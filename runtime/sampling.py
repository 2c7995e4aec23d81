"""Next-token selection: greedy, or temperature / top-k / top-p sampling with a seed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from atp.errors import ConfigError


@dataclass(frozen=True)
class SamplingConfig:
    """Greedy when ``temperature == 0``; otherwise sample from the filtered distribution."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise ConfigError(f"seed must be in 0..2**64-1, got {self.seed}")


class Sampler:
    """Picks tokens from ``[V]`` logits per a :class:`SamplingConfig`."""

    def __init__(self, cfg: SamplingConfig):
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)

    def __call__(self, logits: np.ndarray) -> int:
        cfg = self.cfg
        if cfg.temperature == 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / cfg.temperature
        if cfg.top_k and cfg.top_k <= len(z):  # a top_k past the vocabulary keeps every token (as the C++ sampler)
            kth = np.partition(z, -cfg.top_k)[-cfg.top_k]
            z = np.where(z < kth, -np.inf, z)
        p = np.exp(z - z.max())
        p /= p.sum()
        if cfg.top_p < 1:
            order = np.argsort(-p)
            cum = np.cumsum(p[order])
            cut = order[np.searchsorted(cum, cfg.top_p) + 1:]
            p[cut] = 0
            p /= p.sum()
        return int(self.rng.choice(len(p), p=p))
