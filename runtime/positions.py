"""The decoder's position rule (one place; ``runtime/cpp/src/positions.hpp`` mirrors it).

``1d`` (:data:`atp.manifest.POSITION_SCHEMES`): the spliced prompt takes positions 0..L-1, whatever K is, and each
generated token the next one. Pruned visual tokens therefore close ranks: the text after the image sits right after
the kept tokens, as in a prompt that had K visual tokens to begin with (the rule LLaVA-family pruning papers use).

``mrope`` (Qwen2-VL / Qwen2.5-VL, ``position_ids [3, B, S]``): pruning keeps the geometry. A kept visual token keeps
the (t, h, w) position it has in the full grid, ``(start, start + row, start + col)`` with ``start`` the position
after the text before the image; the text after the image starts at ``start + max(rows, cols)`` exactly as in the
dense model (transformers' ``get_rope_index`` / rope deltas), so K = N reproduces transformers and a pruned prompt
leaves gaps where the pruned tokens were. Each generated token takes the largest position so far + 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp.errors import ConfigError
from atp.manifest import Positions


@dataclass(frozen=True)
class ImageSlot:
    """Where an image's kept tokens sit in the spliced prompt: ``start`` (index of its first kept token),
    ``kept_index`` (ascending, into the merged grid in raster order) and ``grid`` ``(rows, cols)``."""

    start: int
    kept_index: np.ndarray
    grid: tuple[int, int]


def _check(scheme: Positions) -> None:
    if scheme.scheme not in ("1d", "mrope"):
        raise ConfigError(f"position scheme {scheme.scheme!r} is not implemented by this runtime")


def prefill(scheme: Positions, length: int, past: int = 0, image: ImageSlot | None = None) -> np.ndarray:
    """``position_ids`` (``[1, length]``, or ``[3, 1, length]`` for ``mrope``) for ``length`` new tokens after
    ``past`` cached ones; ``image``: the image slot of a prompt (``mrope`` places its tokens on the grid).

    Raises:
        ConfigError: an ``mrope`` prompt after a cache, or a scheme this runtime does not implement.
    """
    _check(scheme)
    if scheme.scheme == "1d":
        return np.arange(past, past + length, dtype=np.int64)[None]
    if image is None:
        return np.repeat(np.arange(past, past + length, dtype=np.int64)[None, None], 3, axis=0)
    if past:
        raise ConfigError("an mrope prompt with an image is one prefill step (no cached tokens before it)")
    k = len(image.kept_index)
    rows, cols = image.grid
    out = np.zeros((3, length), np.int64)
    s = image.start
    out[:, :s] = np.arange(s)
    row, col = np.divmod(np.asarray(image.kept_index, np.int64), cols)
    out[0, s:s + k], out[1, s:s + k], out[2, s:s + k] = s, s + row, s + col
    after = s + max(rows, cols)
    out[:, s + k:] = after + np.arange(length - s - k)
    return out[:, None]


def step(scheme: Positions, position: int) -> np.ndarray:
    """``position_ids`` of one generated token at ``position`` (``[1, 1]``, or ``[3, 1, 1]`` for ``mrope``)."""
    _check(scheme)
    row = np.full((1, 1), position, np.int64)
    return np.repeat(row[None], 3, axis=0) if scheme.scheme == "mrope" else row


def next_position(position_ids: np.ndarray) -> int:
    """The position of the first generated token after a prompt with these ``position_ids``."""
    return int(position_ids.max()) + 1
