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
