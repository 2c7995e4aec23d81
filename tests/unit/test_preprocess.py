"""Torch-free preprocessing equals transformers' CLIP image processor."""

import numpy as np
import pytest
from PIL import Image

from atp.errors import InputError
from atp.runtime.preprocess import preprocess

SPEC = {"convert_rgb": True, "resize": {"shortest_edge": 48}, "resample": 3, "center_crop": {"height": 48, "width": 48},
        "rescale_factor": 1 / 255, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
        "image_size": [48, 48], "layout": "NCHW"}


@pytest.mark.parametrize("size,mode", [((48, 48), "RGB"), ((97, 61), "RGB"), ((40, 130), "L"), ((64, 64), "RGBA")])
def test_matches_transformers(size, mode):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    rng = np.random.default_rng(sum(size))
    arr = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA").convert(mode)
    ip = CLIPImageProcessorPil(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    ref = ip(images=img, return_tensors="np")["pixel_values"]
    ours = preprocess(img, SPEC)
    assert ours.shape == ref.shape == (1, 3, 48, 48)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_unreadable_and_missing_images(tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    with pytest.raises(InputError, match="cannot read image"):
        preprocess(bad, SPEC)
    with pytest.raises(InputError, match="does not exist"):
        preprocess(tmp_path / "nope.jpg", SPEC)
    with pytest.raises(InputError, match="HxWx3 uint8"):
        preprocess(np.zeros((4, 4), np.float32), SPEC)


@pytest.mark.parametrize("rescale,norm", [(1 / 255, True), (1 / 255, False), (None, True), (None, False)])
def test_value_table_is_bit_identical_to_the_per_pixel_formula(rescale, norm):
    """The uint8 -> float table applies (x * rescale - mean) / std with the same float32 operations per value."""
    arr = np.random.default_rng(3).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    spec = {**SPEC, "resize": None, "center_crop": None, "image_size": [20, 30], "rescale_factor": rescale}
    if not norm:
        spec["mean"] = spec["std"] = None
    x = arr.astype(np.float32)
    if rescale is not None:
        x = x * np.float32(rescale)
    if norm:
        x = (x - np.asarray(SPEC["mean"], np.float32)) / np.asarray(SPEC["std"], np.float32)
    ours = preprocess(arr, spec)
    assert ours.dtype == np.float32 and ours.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(ours, x.transpose(2, 0, 1)[None])


def test_memory_is_bounded_for_tiny_but_huge_inputs(tmp_path):
    """A 274-byte 1 x 100000 PNG would resize to 64 x 6.4M (GBs) and a 30000 x 30000 PNG decodes to 2.7 GB: both are
    refused with the reason before any large allocation (issue 20)."""
    strip = tmp_path / "strip.png"
    Image.new("RGB", (1, 100_000)).save(strip)
    with pytest.raises(InputError, match="resized for this model is 48x4800000 = 230 MPixels"):
        preprocess(strip, SPEC)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (30_000, 30_000)).save(bomb)  # 900 MPixels: Pillow's own bomb check fires at open
    with pytest.raises(InputError, match="decompression bomb"):
        preprocess(bomb, SPEC)
    big = tmp_path / "big.png"
    Image.new("1", (9_000, 8_000)).save(big)  # 72 MPixels: under Pillow's limit, over atp's
    with pytest.raises(InputError, match="9000x8000 = 72 MPixels; atp takes at most 67"):
        preprocess(big, SPEC)
