"""Idefics3 / SmolVLM image splitting in numpy + Pillow equals transformers' ``Idefics3ImageProcessorPil`` (pixels
1e-6, tile grid), at several sizes and aspect ratios, with splitting into tiles and without (the global view only)."""

from __future__ import annotations

import numpy as np
import pytest

from atp.runtime.preprocess import preprocess_views
from atp.runtime.tiling import TilingSpec, grid_shape, slot
from tests.conftest import random_image


def _spec_and_processor(longest: int, tile: int):
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    ip = Idefics3ImageProcessorPil(size={"longest_edge": longest}, max_image_size={"longest_edge": tile})
    pre = {"convert_rgb": True, "resize": None, "resample": 1, "center_crop": None, "rescale_factor": 1 / 255,
           "mean": list(ip.image_mean), "std": list(ip.image_std), "image_size": [tile, tile], "layout": "NCHW",
           "tiling": TilingSpec(longest, tile, 1).to_dict()}
    return pre, ip


@pytest.mark.parametrize("longest,tile", [(64, 32), (96, 32), (32, 32), (1456, 364)])
@pytest.mark.parametrize("size", [(32, 32), (40, 24), (24, 56), (7, 300), (301, 13), (500, 380)])
def test_views_equal_transformers(longest, tile, size):
    pre, ip = _spec_and_processor(longest, tile)
    img = random_image(3, size)
    ref = ip(images=img, return_tensors="np", return_row_col_info=True)
    px, _ = preprocess_views(img, pre)
    want = ref["pixel_values"][0]
    assert px.shape == want.shape
    np.testing.assert_allclose(px, want, atol=1e-6, rtol=0)
    assert grid_shape(size, TilingSpec(longest, tile)) == (ref["rows"][0][0], ref["cols"][0][0])


def test_slot_lays_kept_tokens_between_marker_runs():
    table = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    embeds = np.full((3, 2), -1.0, np.float32) * np.arange(1, 4, dtype=np.float32)[:, None]
    out = slot(embeds, np.array([1, 5, 6]), 4, [[1, 2], [3], [4, 5]], table)  # views 0 and 1 of 4 tokens each
    want = np.concatenate([table[[1, 2]], embeds[:1], table[[3]], embeds[1:], table[[4, 5]]])
    np.testing.assert_array_equal(out, want)
