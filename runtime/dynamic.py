"""Qwen2-VL / Qwen2.5-VL dynamic resolution (numpy + Pillow, no torch): one view at the image's own size.

An image is resized by ``smart_resize`` (both sides multiples of ``factor = patch * merge``, pixels within
``[min_pixels, max_pixels]``, aspect kept as closely as possible; Pillow BICUBIC), rescaled and normalised, and cut into
``patch x patch`` patches laid out **block-major**: the ``merge x merge`` patches of one language-model token are
consecutive, tokens in raster order of the merged grid. Each patch is repeated ``temporal`` times (a still image is a
one-step clip), so ``pixel_values`` is ``[P, 3 * temporal * patch * patch]`` exactly as ``Qwen2VLImageProcessorPil``
gives it (the reference in tests/unit/test_dynamic.py).

The vision graph also takes, per patch, its ``(row, col)`` on the patch grid (the tower's 2-D rotary positions), and
the attention windows as gather indices (:func:`vision_layout`: windowed layers attend within a ``window x window``
block of merged tokens, the last row / column of blocks cut short). Everything here derives from the grid alone;
``runtime/cpp/src/dynamic.cpp`` mirrors it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from atp.errors import InputError

MAX_ASPECT = 200  # transformers' smart_resize refuses a longer side over 200 x the shorter


@dataclass(frozen=True)
class DynamicSpec:
    """``preprocessing.dynamic`` of a bundle.

    Attributes:
        patch: Patch side in pixels (14 for Qwen2.5-VL).
        merge: Patches per language-model token along each side (2: a 2 x 2 merger).
        temporal: Temporal patch size (frames per patch; a still image is repeated).
        min_pixels: Fewest pixels after the resize.
        max_pixels: Most pixels after the resize.
        window: Windowed-attention block side, in merged tokens (``window_size // merge // patch``; Qwen2.5-VL), or 0
            (every block attends over the whole image: Qwen3-VL).
        resample: Pillow filter of the resize (3 = BICUBIC).
        position_grid: Side of a learned square position-embedding table the tower resamples to each image's patch
            grid (bilinear, corners aligned: Qwen3-VL's 48), or 0 (none: Qwen2.5-VL).
    """

    patch: int
    merge: int
    temporal: int
    min_pixels: int
    max_pixels: int
    window: int
    resample: int = 3
    position_grid: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "DynamicSpec":
        return cls(int(d["patch"]), int(d["merge"]), int(d["temporal"]), int(d["min_pixels"]), int(d["max_pixels"]),
                   int(d["window"]), int(d.get("resample", 3)), int(d.get("position_grid", 0)))

    def to_dict(self) -> dict:
        return {"patch": self.patch, "merge": self.merge, "temporal": self.temporal, "min_pixels": self.min_pixels,
                "max_pixels": self.max_pixels, "window": self.window, "resample": self.resample,
                "position_grid": self.position_grid,
                "order": "patches block-major (each merged token's merge x merge patches consecutive), tokens in raster "
                         "order of the merged grid"}

    @property
    def factor(self) -> int:
        """Both resized sides are multiples of this (``patch * merge``)."""
        return self.patch * self.merge

    @property
    def max_tokens(self) -> int:
        """The largest N: merged tokens of an image at ``max_pixels``."""
        return self.max_pixels // (self.factor * self.factor)

    @property
    def patch_dim(self) -> int:
        """Values per patch row of ``pixel_values``: ``3 * temporal * patch * patch``."""
        return 3 * self.temporal * self.patch * self.patch


def smart_resize(height: int, width: int, spec: DynamicSpec) -> tuple[int, int]:
    """``(height, width)`` after the resize (transformers' ``smart_resize``, the same float arithmetic).

    Raises:
        InputError: an aspect ratio over 200.
    """
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise InputError(f"the image is {width}x{height}: an aspect ratio over {MAX_ASPECT} is not supported by this "
                         "model's processor (crop or pad it first)")
    f = spec.factor
    h_bar, w_bar = round(height / f) * f, round(width / f) * f
    if h_bar * w_bar > spec.max_pixels:
        beta = math.sqrt((height * width) / spec.max_pixels)
        h_bar = max(f, math.floor(height / beta / f) * f)
        w_bar = max(f, math.floor(width / beta / f) * f)
    elif h_bar * w_bar < spec.min_pixels:
        beta = math.sqrt(spec.min_pixels / (height * width))
        h_bar = math.ceil(height * beta / f) * f
        w_bar = math.ceil(width * beta / f) * f
    return h_bar, w_bar


def token_grid(size: tuple[int, int], spec: DynamicSpec) -> tuple[int, int]:
    """``(rows, cols)`` of the merged-token grid of an image of ``size = (height, width)``: N = rows * cols."""
    h, w = smart_resize(*size, spec)
    return h // spec.factor, w // spec.factor


def patchify(chw: np.ndarray, spec: DynamicSpec) -> np.ndarray:
    """``[3, H, W]`` normalised image -> ``[P, 3 * temporal * patch * patch]`` patches, block-major (the processor's
    ``patchify``)."""
    c, h, w = chw.shape
    p, m = spec.patch, spec.merge
    gh, gw = h // p, w // p
    x = chw.reshape(c, gh // m, m, p, gw // m, m, p).transpose(1, 4, 2, 5, 0, 3, 6)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], spec.temporal, p, p))
    return np.ascontiguousarray(x.reshape(gh * gw, c * spec.temporal * p * p), dtype=np.float32)


def vision_layout(grid: tuple[int, int], spec: DynamicSpec) -> dict[str, np.ndarray]:
    """The vision graph's layout inputs for a merged grid ``(rows, cols)``:

    - ``patch_pos [P, 2]`` int64: each patch's row and column on the patch grid (block-major), the tower's rotary
      positions;
    - ``window_index [W, L]`` int64: the patches of each attention window (a ``window x window`` block of merged tokens,
      windows row by row, merged tokens row by row inside, each token's merge^2 patches together), padded with P (a
      zero row) to ``L = window^2 * merge^2``;
    - ``window_inverse [P]`` int64: where each patch sits in the flattened ``[W * L]`` windows.

    Windowed blocks gather ``[W, L]`` rows and attend within each (padding keys masked), so their cost is P * L, not
    P^2; the windows are transformers' (``get_vision_window_index``)."""
    rows, cols = grid
    m, win = spec.merge, spec.window
    unit = m * m
    r, c = np.divmod(np.arange(rows * cols, dtype=np.int64), cols)  # merged token -> (row, col)
    q = np.arange(unit, dtype=np.int64)
    pos = np.stack([(r[:, None] * m + q[None] // m).reshape(-1), (c[:, None] * m + q[None] % m).reshape(-1)], axis=1)
    out = {"patch_pos": np.ascontiguousarray(pos)}
    if spec.position_grid:
        out.update(position_taps(pos, (rows * m, cols * m), spec.position_grid))
    if not win:
        return out
    per_row = -(-cols // win)
    window = (r // win) * per_row + c // win
    order = np.argsort(window, kind="stable")  # merged tokens window by window, raster order inside
    counts = np.bincount(window, minlength=int(window.max()) + 1 if len(window) else 0)
    counts = counts[counts > 0]
    slot = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)  # rank inside its window
    w_of = window[order]
    dense = np.unique(w_of, return_inverse=True)[1]  # windows numbered 0..W-1 in order
    length = win * win * unit
    index = np.full((len(counts), length), rows * cols * unit, np.int64)
    patches = order[:, None] * unit + q[None]  # [tokens, unit] patch ids, window order
    flat = dense[:, None] * length + slot[:, None] * unit + q[None]
    index.reshape(-1)[flat.reshape(-1)] = patches.reshape(-1)
    inverse = np.empty(rows * cols * unit, np.int64)
    inverse[patches.reshape(-1)] = flat.reshape(-1)
    return {**out, "window_index": index, "window_inverse": inverse}


def position_taps(pos: np.ndarray, size: tuple[int, int], side: int) -> dict[str, np.ndarray]:
    """``pos_index [P, 4]`` int64 / ``pos_weight [P, 4]`` float32: the bilinear (corners aligned) taps of a
    ``side x side`` learned position table at each patch of a ``size = (rows, cols)`` patch grid (``pos`` = each
    patch's (row, col)), in float32 exactly as transformers' ``get_vision_interpolation_indices_and_weights``."""

    def axis(index: np.ndarray, n: int):
        src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(n - 1, 1))
        floor = np.floor(src)
        taps = np.clip(floor.astype(np.int64)[:, None] + np.arange(2), 0, side - 1)
        weights = np.clip(np.float32(1) - np.abs(src[:, None] - floor[:, None] - np.arange(2, dtype=np.float32)), 0, None)
        return taps, weights.astype(np.float32)

    ht, hw = axis(pos[:, 0], size[0])
    wt, ww = axis(pos[:, 1], size[1])
    index = (ht[:, :, None] * side + wt[:, None, :]).reshape(-1, 4)
    weight = (hw[:, :, None] * ww[:, None, :]).reshape(-1, 4)
    return {"pos_index": np.ascontiguousarray(index), "pos_weight": np.ascontiguousarray(weight, dtype=np.float32)}
