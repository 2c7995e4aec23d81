"""LLaVA-NeXT "anyres" images (numpy + Pillow, no torch): views and where their tokens go.

An image is resized into the best of the checkpoint's grid pinpoints (aspect kept, centred zero padding), cut into
``crop x crop`` tiles, and preceded by a base view (the whole image resized to the crop size); every view then goes
through the CLIP steps (``atp.runtime.preprocess``). transformers' ``LlavaNextImageProcessorPil`` is the reference
(tests/unit/test_anyres.py, 1e-6).

The language model reads, per image: the base view's P tokens, then the tile grid's tokens in raster order with the
padding rows / columns removed (``unpad``), each grid row followed by the ``image_newline`` embedding.
:func:`token_layout` gives the order as indices into the vision tower's ``[views * P]`` tokens, and each token's grid
row (-1 for the base view): the vision graph gathers them (``token_index``) and gates over them; the runtime puts a
newline after the last kept token of every grid row that keeps one (all tokens kept: exactly transformers' sequence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from atp.errors import InputError


def select_best_resolution(size: tuple[int, int], pinpoints) -> tuple[int, int]:
    """The pinpoint ``(h, w)`` that keeps the most of an ``(h, w)`` image, then wastes the least (LLaVA-NeXT's rule)."""
    oh, ow = size
    best, best_eff, best_waste = None, 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / ow, h / oh)
        dw, dh = int(ow * scale), int(oh * scale)
        eff = min(dw * dh, ow * oh)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (int(h), int(w)), eff, waste
    return best


def _fit(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of the image resized into ``target`` with its aspect kept."""
    oh, ow = size
    th, tw = target
    sw, sh = tw / ow, th / oh
    if sw < sh:
        return min(math.ceil(oh * sw), th), tw
    return th, min(math.ceil(ow * sh), tw)


@dataclass(frozen=True)
class AnyresSpec:
    """``preprocessing.anyres`` of a bundle: pinpoints ``[(h, w), ...]``, crop (view) size, tower patch size."""

    pinpoints: tuple[tuple[int, int], ...]
    crop: int
    patch: int

    @classmethod
    def from_dict(cls, d: dict) -> "AnyresSpec":
        return cls(tuple((int(h), int(w)) for h, w in d["grid_pinpoints"]), int(d["crop"]), int(d["patch"]))

    def to_dict(self) -> dict:
        return {"grid_pinpoints": [list(p) for p in self.pinpoints], "crop": self.crop, "patch": self.patch,
                "order": "base view, then tiles row by row; tokens: base P, unpadded grid raster + newline per row"}


def views(img, spec: AnyresSpec, resample: int):
    """PIL views of an RGB PIL image: the base view (whole image resized to crop x crop), then the tiles."""
    from PIL import Image

    w, h = img.size
    best = select_best_resolution((h, w), spec.pinpoints)
    nh, nw = _fit((h, w), best)
    resized = np.asarray(img.resize((nw, nh), resample=Image.Resampling(resample)), np.uint8)
    top, left = (best[0] - nh) // 2, (best[1] - nw) // 2
    canvas = np.zeros((best[0], best[1], 3), np.uint8)
    canvas[top:top + nh, left:left + nw] = resized
    tiles = [Image.fromarray(canvas[i:i + spec.crop, j:j + spec.crop])
             for i in range(0, best[0], spec.crop) for j in range(0, best[1], spec.crop)]
    base = img.resize((spec.crop, spec.crop), resample=Image.Resampling(resample))
    return [base, *tiles]


def token_layout(size: tuple[int, int], spec: AnyresSpec) -> tuple[np.ndarray, np.ndarray]:
    """For an ``(h, w)`` image: ``token_index [M]`` (int64, into the tower's ``[views * P]`` tokens, in the order the
    language model reads them) and ``row [M]`` (grid row of each token after unpadding; -1 for the base view)."""
    side = spec.crop // spec.patch
    per_view = side * side
    best = select_best_resolution(size, spec.pinpoints)
    gh, gw = best[0] // spec.crop, best[1] // spec.crop
    ch, cw = gh * side, gw * side  # the grid's token rows and columns before unpadding
    oh, ow = size
    r0, r1, c0, c1 = 0, ch, 0, cw
    if ow / oh > cw / ch:
        pad = (ch - int(round(oh * (cw / ow), 7))) // 2
        r0, r1 = pad, ch - pad
    else:
        pad = (cw - int(round(ow * (ch / oh), 7))) // 2
        c0, c1 = pad, cw - pad
    rows, cols = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    tile = (rows // side) * gw + cols // side  # which tile a grid token lies in
    within = (rows % side) * side + cols % side
    grid_index = (per_view * (1 + tile) + within).ravel()
    index = np.concatenate([np.arange(per_view), grid_index]).astype(np.int64)
    row = np.concatenate([np.full(per_view, -1), (rows - r0).ravel()]).astype(np.int64)
    return index, row


def newline_slots(kept_index: np.ndarray, row: np.ndarray) -> list[int]:
    """Positions (into the kept tokens) after which a newline goes: the last kept token of each grid row."""
    rows = row[kept_index]
    return [i for i in range(len(rows)) if rows[i] >= 0 and (i + 1 == len(rows) or rows[i + 1] != rows[i])]


def check_size(size: tuple[int, int]) -> None:
    if min(size) < 1:
        raise InputError(f"image of size {size[1]}x{size[0]} has no pixels")
