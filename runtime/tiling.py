"""Idefics3 / SmolVLM image splitting (numpy + Pillow, no torch): views and their prompt markers.

An image is resized so its longest edge is ``longest_edge`` (aspect kept, the other side rounded up to even), then to
whole multiples of the tile size, and cut into ``rows x cols`` square tiles; a global view (the whole resized image
at tile size) follows them. An image that fits one tile is only the global view (rows = cols = 0). Every resize is
Pillow's, with the checkpoint's filter (LANCZOS); transformers' ``Idefics3ImageProcessorPil`` is the reference
(tests/unit/test_tiling.py).

In the prompt, each tile's visual tokens follow its markers (``<fake_token_around_image><row_r_col_c>``, a newline
after each row of tiles) and the global view's follow ``<fake_token_around_image><global-img>``; the manifest's
``token_layout.markers`` holds the token ids of the marker runs for every grid shape (tokenized at export through the
checkpoint's own processor rule), and :func:`slot` lays the kept tokens of each view between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_SIDE = 4096  # transformers' MAX_IMAGE_SIZE: the longest edge after the first resize is at most this


@dataclass(frozen=True)
class TilingSpec:
    """``preprocessing.tiling`` of a bundle: longest edge of the first resize, tile (view) size, Pillow filter."""

    longest_edge: int
    tile: int
    resample: int = 1

    @classmethod
    def from_dict(cls, d: dict) -> "TilingSpec":
        return cls(int(d["longest_edge"]), int(d["tile"]), int(d.get("resample", 1)))

    def to_dict(self) -> dict:
        return {"longest_edge": self.longest_edge, "tile": self.tile, "resample": self.resample,
                "order": "tiles row by row, then the global view; tokens: each view's tokens after its markers"}

    @property
    def max_grid(self) -> int:
        """The most tile rows (or columns) an image can have."""
        return max(1, math.ceil(min(self.longest_edge, MAX_SIDE) / self.tile))


def _first_size(h: int, w: int, spec: TilingSpec) -> tuple[int, int]:
    """Size after the resize to ``longest_edge`` (transformers' ``get_resize_output_image_size``)."""
    m, aspect = spec.longest_edge, w / h
    if w >= h:
        w, h = m, int(m / aspect)
        h += h % 2
    else:
        h, w = m, int(m * aspect)
        w += w % 2
    h, w = max(h, 1), max(w, 1)
    aspect = w / h
    if w >= h and w > MAX_SIDE:
        w, h = MAX_SIDE, int(MAX_SIDE / aspect)
    elif h > w and h > MAX_SIDE:
        h, w = MAX_SIDE, int(MAX_SIDE * aspect)
    return max(h, 1), max(w, 1)


def _tiled_size(h: int, w: int, tile: int) -> tuple[int, int]:
    """Size after the resize to whole tiles (``resize_for_vision_encoder``)."""
    aspect = w / h
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / aspect) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * aspect) / tile) * tile
    return h, w


def _grid(h: int, w: int, tile: int) -> tuple[int, int]:
    """``(rows, cols)`` of tiles in an image already resized to whole tiles; ``(0, 0)``: it is one tile (global only)."""
    if h > tile or w > tile:
        return (h - tile) // tile + 1, (w - tile) // tile + 1
    return 0, 0


def grid_shape(size: tuple[int, int], spec: TilingSpec) -> tuple[int, int]:
    """``(rows, cols)`` of tiles for an ``(h, w)`` image; ``(0, 0)`` when it is only the global view."""
    return _grid(*_tiled_size(*_first_size(*size, spec), spec.tile), spec.tile)


def views(img, spec: TilingSpec) -> list:
    """PIL views of an RGB PIL image: the tiles row by row, then the global view (each ``tile x tile``)."""
    from PIL import Image

    resample = Image.Resampling(spec.resample)
    h, w = _first_size(img.height, img.width, spec)
    img = img.resize((w, h), resample=resample)
    h, w = _tiled_size(h, w, spec.tile)
    img = img.resize((w, h), resample=resample)
    t = spec.tile
    rows, cols = _grid(h, w, t)
    if not rows:
        return [img]
    tiles = [img.crop((c * t, r * t, c * t + t, r * t + t)) for r in range(rows) for c in range(cols)]
    return [*tiles, img.resize((t, t), resample=resample)]


def grid_key(rows: int, cols: int) -> str:
    """Key of a grid shape in ``token_layout.markers``."""
    return f"{rows}x{cols}"


def slot(embeds: np.ndarray, kept_index: np.ndarray, tokens_per_view: int, markers: list[list[int]], table) -> np.ndarray:
    """``[L, D]`` what goes in the image slot: marker run 0, the kept tokens of view 0, marker run 1, ... (one more
    marker run than views; a view that keeps no token keeps its markers). ``embeds`` are the kept tokens
    (``[K, D]``, ascending ``kept_index`` into the ``views * tokens_per_view`` tokens)."""
    view = np.asarray(kept_index) // tokens_per_view
    parts = []
    for v, run in enumerate(markers):
        if run:
            parts.append(np.asarray(table[list(run)], np.float32))
        if v < len(markers) - 1:
            parts.append(embeds[view == v])
    return np.concatenate(parts).astype(np.float32)
