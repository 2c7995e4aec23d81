"""``random``: seeded random baseline (a fixed random ranking of token positions)."""

from __future__ import annotations

import numpy as np
import torch

from atp.calibration.retention.base import Scorer, VisionContext
from atp.registry import SCORERS


@SCORERS.register("random")
class RandomScorer(Scorer):
    """Keeps a seeded random subset of positions: the same subset for every image.

    The ranking is a graph constant (drawn with numpy at export), so ONNX Runtime and PyTorch
    agree exactly and runs are reproducible; a per-image random draw would need a random op
    whose stream differs between runtimes.
    """

    summary = "seeded random baseline: fixed random ranking of positions (seed 0)"

    #: Positions the ranking covers: N varies per image for multi-view layouts (anyres, tiled), so the graph holds
    #: one table and reads its first N entries (numpy's stream is sequential: the first N equal a draw of N).
    max_tokens = 1 << 16

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed
        table = np.random.default_rng(seed).random(self.max_tokens).astype(np.float32)
        self.register_buffer("ranking", torch.from_numpy(table), persistent=False)

    def forward(self, ctx: VisionContext) -> torch.Tensor:
        n = ctx.features.shape[1]
        return self.ranking[:n][None].expand_as(ctx.features[..., 0])
