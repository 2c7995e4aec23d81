"""LLaVA-NeXT / LLaVA-OneVision "anyres" images (numpy + Pillow, no torch): views and where their tokens go.

An image is resized into the best of the checkpoint's grid pinpoints (aspect kept, centred zero padding), cut into
``crop x crop`` tiles, and preceded by a base view (the whole image resized to the crop size); every view then goes
through the CLIP steps (``atp.runtime.preprocess``). transformers' ``LlavaNextImageProcessorPil`` is the reference
(tests/unit/test_anyres.py, 1e-6).

The language model reads, per image: the base view's P tokens, then the tile grid's tokens in raster order with the
padding rows / columns removed (``unpad``), each grid row followed by the ``image_newline`` embedding.
:func:`token_layout` gives the order as indices into the vision tower's ``[views * P]`` tokens, and each token's grid
row (-1 for the base view): the vision graph gathers them (``token_index``) and gates over them; the runtime puts a
newline after the last kept token of every grid row that keeps one (all tokens kept: exactly transformers' sequence).

LLaVA-OneVision (``anyres_max_N``) then shrinks a large unpadded grid bilinearly (:func:`max_patches_shape`) after
the projector; :func:`tap_layout` writes that resize as four taps per token (``token_index`` / ``token_weight``
``[M, 4]``), so the graph mixes projected tokens exactly as ``torch.nn.functional.interpolate`` does.
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
    max_patches: int = 0  # LLaVA-OneVision's anyres_max_N: the unpadded grid is resized to about N views' tokens

    @classmethod
    def from_dict(cls, d: dict) -> "AnyresSpec":
        return cls(tuple((int(h), int(w)) for h, w in d["grid_pinpoints"]), int(d["crop"]), int(d["patch"]),
                   int(d.get("max_patches", 0)))

    def to_dict(self) -> dict:
        out = {"grid_pinpoints": [list(p) for p in self.pinpoints], "crop": self.crop, "patch": self.patch,
               "order": "base view, then tiles row by row; tokens: base P, unpadded grid raster + newline per row"}
        if self.max_patches:
            out["max_patches"] = self.max_patches
            out["resize"] = ("unpadded grid rows x cols -> (rows // r, cols // r), r = sqrt(rows * cols / "
                             "(max_patches * P)), when r > 1.1: bilinear, align_corners false (token_index / "
                             "token_weight [M, 4] taps over the projected tokens)")
        return out


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


def _unpadded_grid(size: tuple[int, int], spec: AnyresSpec) -> tuple[int, int, int, int, int]:
    """``(r0, r1, c0, c1, gw)``: the token rows / columns of the tile grid left after unpadding, and its tiles per row."""
    side = spec.crop // spec.patch
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
    return r0, r1, c0, c1, gw


def _tower_index(rows: np.ndarray, cols: np.ndarray, spec: AnyresSpec, gw: int) -> np.ndarray:
    """Tower token index (into ``[views * P]``) of grid token ``(row, col)`` (full grid coordinates)."""
    side = spec.crop // spec.patch
    tile = (rows // side) * gw + cols // side  # which tile a grid token lies in
    return side * side * (1 + tile) + (rows % side) * side + cols % side


def token_layout(size: tuple[int, int], spec: AnyresSpec) -> tuple[np.ndarray, np.ndarray]:
    """For an ``(h, w)`` image: ``token_index [M]`` (int64, into the tower's ``[views * P]`` tokens, in the order the
    language model reads them) and ``row [M]`` (grid row of each token after unpadding; -1 for the base view)."""
    per_view = (spec.crop // spec.patch) ** 2
    r0, r1, c0, c1, gw = _unpadded_grid(size, spec)
    rows, cols = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    index = np.concatenate([np.arange(per_view), _tower_index(rows, cols, spec, gw).ravel()]).astype(np.int64)
    row = np.concatenate([np.full(per_view, -1), (rows - r0).ravel()]).astype(np.int64)
    return index, row


def max_patches_shape(rows: int, cols: int, spec: AnyresSpec) -> tuple[int, int]:
    """LLaVA-OneVision's ``anyres_max_N``: the unpadded grid ``rows x cols`` is bilinearly resized to
    ``(rows // ratio, cols // ratio)`` when ``ratio = sqrt(rows * cols / (N * P)) > 1.1``; else kept."""
    side = spec.crop // spec.patch
    ratio = math.sqrt(rows * cols / (spec.max_patches * side * side))
    if ratio > 1.1:
        return int(rows // ratio), int(cols // ratio)
    return rows, cols


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's ``interpolate(mode="bilinear", align_corners=False)`` along one axis, in float32 as torch computes
    it on the CPU: ``(i0, i1, w0, w1)`` per output index."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = src.astype(np.int64)
    w1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, np.float32(1) - w1, w1


def tap_layout(size: tuple[int, int], spec: AnyresSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LLaVA-OneVision (``spec.max_patches`` set): ``token_index [M, 4]`` (int64 tower tokens) and ``token_weight
    [M, 4]`` (float32) such that token m is ``sum_j weight[m, j] * projected[index[m, j]]`` (identity taps where
    nothing is resized: the base view, and grids within the ``max_patches`` budget), and ``row [M]``."""
    per_view = (spec.crop // spec.patch) ** 2
    r0, r1, c0, c1, gw = _unpadded_grid(size, spec)
    oh, ow = max_patches_shape(r1 - r0, c1 - c0, spec)
    ri0, ri1, rw0, rw1 = _bilinear_taps(r1 - r0, oh)
    ci0, ci1, cw0, cw1 = _bilinear_taps(c1 - c0, ow)
    rr = np.stack([ri0, ri0, ri1, ri1], axis=1)[:, None, :]  # [oh, 1, 4]
    cc = np.stack([ci0, ci1, ci0, ci1], axis=1)[None, :, :]  # [1, ow, 4]
    wr = np.stack([rw0, rw0, rw1, rw1], axis=1)[:, None, :]
    wc = np.stack([cw0, cw1, cw0, cw1], axis=1)[None, :, :]
    grid_index = _tower_index(rr + r0, cc + c0, spec, gw).reshape(-1, 4)
    grid_weight = (wr * wc).astype(np.float32).reshape(-1, 4)
    base = np.repeat(np.arange(per_view, dtype=np.int64)[:, None], 4, axis=1)
    base_weight = np.zeros((per_view, 4), np.float32)
    base_weight[:, 0] = 1
    row = np.concatenate([np.full(per_view, -1), np.repeat(np.arange(oh), ow)]).astype(np.int64)
    return (np.concatenate([base, grid_index]).astype(np.int64), np.concatenate([base_weight, grid_weight]), row)


def graph_layout(size: tuple[int, int], spec: AnyresSpec) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The vision graph's layout inputs for an ``(h, w)`` image (``token_index``, and ``token_weight`` for
    ``anyres_max``) and each token's grid row; ``len(row)`` is this image's N."""
    if spec.max_patches:
        index, weight, row = tap_layout(size, spec)
        return {"token_index": index, "token_weight": weight}, row
    index, row = token_layout(size, spec)
    return {"token_index": index}, row


def newline_slots(kept_index: np.ndarray, row: np.ndarray) -> list[int]:
    """Positions (into the kept tokens) after which a newline goes: the last kept token of each grid row."""
    rows = row[kept_index]
    return [i for i in range(len(rows)) if rows[i] >= 0 and (i + 1 == len(rows) or rows[i + 1] != rows[i])]


def check_size(size: tuple[int, int]) -> None:
    if min(size) < 1:
        raise InputError(f"image of size {size[1]}x{size[0]} has no pixels")
