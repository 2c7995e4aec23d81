"""The decoder's position rule (one place; ``runtime/cpp/src/positions.hpp`` mirrors it).

``1d`` (:data:`atp.manifest.POSITION_SCHEMES`): the spliced prompt takes positions 0..L-1, whatever K is, and each
generated token the next one. Pruned visual tokens therefore close ranks: the text after the image sits right after
the kept tokens, as in a prompt that had K visual tokens to begin with (the rule LLaVA-family pruning papers use).
"""

from __future__ import annotations

import numpy as np

from atp.errors import ConfigError
from atp.manifest import Positions


def _check(scheme: Positions) -> None:
    if scheme.scheme != "1d":
        raise ConfigError(f"position scheme {scheme.scheme!r} is not implemented by this runtime")


def prefill(scheme: Positions, length: int, past: int = 0) -> np.ndarray:
    """``position_ids [1, length]`` for ``length`` new tokens after ``past`` cached ones."""
    _check(scheme)
    return np.arange(past, past + length, dtype=np.int64)[None]


def step(scheme: Positions, past: int) -> np.ndarray:
    """``position_ids [1, 1]`` of one generated token after ``past`` cached ones."""
    return prefill(scheme, 1, past)
