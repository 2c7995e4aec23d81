"""Qwen2.5-VL dynamic resolution in numpy + Pillow equals transformers: ``Qwen2VLImageProcessorPil``'s patches (1e-6)
and grid at many sizes (extreme aspect ratios, below min_pixels, above max_pixels, real-checkpoint bounds), the
vision layout equal to transformers' own rotary position ids and attention windows, and the M-RoPE positions of a
dense prompt equal to ``get_rope_index``."""

from __future__ import annotations

import numpy as np
import pytest

from atp.errors import InputError
from atp.runtime.dynamic import DynamicSpec, smart_resize, token_grid, vision_layout
from atp.runtime.preprocess import preprocess_views
from tests.conftest import random_image

SIZES = [(32, 32), (40, 24), (24, 56), (3, 500), (500, 3), (9, 9), (200, 100), (1000, 700), (57, 1201)]


def _spec_and_processor(patch: int, min_pixels: int, max_pixels: int, window: int):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, patch_size=patch,
                                  merge_size=2, temporal_patch_size=2)
    spec = DynamicSpec(patch, 2, 2, min_pixels, max_pixels, window)
    pre = {"convert_rgb": True, "resize": None, "center_crop": None, "rescale_factor": 1 / 255,
           "mean": list(ip.image_mean), "std": list(ip.image_std), "image_size": [2 * patch, 2 * patch],
           "dynamic": spec.to_dict()}
    return pre, spec, ip


# (patch, min_pixels, max_pixels): the tiny test model's, and Qwen2.5-VL's own (3136 .. 12845056) scaled down to 1/64
# of its max so the test stays quick
BOUNDS = [(4, 16 * 16, 64 * 64), (14, 56 * 56, 28 * 28 * 80)]


@pytest.mark.parametrize("patch,lo,hi", BOUNDS)
@pytest.mark.parametrize("size", SIZES)
def test_patches_equal_transformers(patch, lo, hi, size):
    pre, spec, ip = _spec_and_processor(patch, lo, hi, 2)
    img = random_image(4, size)
    ref = ip(images=img, return_tensors="np")
    px, got_size = preprocess_views(img, pre)
    assert got_size == size
    assert px.shape == ref["pixel_values"].shape
    np.testing.assert_allclose(px, ref["pixel_values"], atol=1e-6, rtol=0)
    t, gh, gw = ref["image_grid_thw"][0]
    assert t == 1 and token_grid(size, spec) == (gh // 2, gw // 2)
    h, w = smart_resize(*size, spec)
    assert lo <= h * w <= hi or (h * w > hi and min(h, w) == spec.factor)  # transformers' floor of one factor


def test_extreme_aspect_ratio_is_refused_with_the_reason():
    _, spec, _ = _spec_and_processor(4, 256, 4096, 2)
    with pytest.raises(InputError, match="aspect ratio over 200"):
        smart_resize(2, 401, spec)


@pytest.mark.parametrize("grid", [(4, 6), (1, 26), (11, 5), (2, 2), (7, 7)])
@pytest.mark.parametrize("window", [1, 2, 4])
def test_vision_layout_equals_transformers(grid, window):
    """patch_pos = transformers' rotary position ids; window_index holds transformers' windows
    (``get_vision_window_index``), in its order, each padded with P to window^2 * merge^2; window_inverse puts every
    patch back."""
    import torch
    from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

    patch = 4
    spec = DynamicSpec(patch, 2, 2, 16, 10**9, window)
    thw = torch.tensor([[1, grid[0] * 2, grid[1] * 2]])
    lay = vision_layout(grid, spec)
    p = grid[0] * grid[1] * 4
    np.testing.assert_array_equal(lay["patch_pos"], get_vision_position_ids(thw, 2).numpy())
    order, cu = get_vision_window_index(thw, 2, window * 2 * patch, patch)
    units = order.numpy()
    want = [np.concatenate([units[a // 4:b // 4, None] * 4 + np.arange(4)]).reshape(-1)
            for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())]
    index = lay["window_index"]
    assert index.shape == (len(want), window * window * 4)
    for row, w in zip(index, want):
        np.testing.assert_array_equal(row[row < p], w)
        assert (row[len(w):] == p).all()
    np.testing.assert_array_equal(index.reshape(-1)[lay["window_inverse"]], np.arange(p))


@pytest.mark.parametrize("grid", [(4, 6), (1, 26), (11, 5), (2, 2), (30, 1)])
@pytest.mark.parametrize("side", [8, 48])
def test_position_taps_equal_transformers(grid, side):
    """Qwen3-VL: pos_index / pos_weight = transformers' bilinear (corners aligned) taps of the learned table, exactly."""
    import torch
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights

    lay = vision_layout(grid, DynamicSpec(16, 2, 2, 16, 10**9, 0, 3, side))
    assert "window_index" not in lay  # no windows
    index, weight = get_vision_interpolation_indices_and_weights(torch.tensor([[1, grid[0] * 2, grid[1] * 2]]), side,
                                                                 "bilinear", True, 2)
    np.testing.assert_array_equal(lay["pos_index"], index.numpy())
    np.testing.assert_array_equal(lay["pos_weight"], weight.numpy())


def test_mrope_positions_of_a_dense_prompt_equal_get_rope_index(tmp_path):
    """All tokens kept: positions.prefill equals transformers' get_rope_index on the tiny Qwen2.5-VL's chat prompt."""
    import torch
    import transformers

    from atp.manifest import Positions
    from atp.runtime import positions
    from tests.tiny import build_tiny_qwen2_5_vl

    ckpt = build_tiny_qwen2_5_vl(tmp_path / "ckpt")
    proc = transformers.AutoProcessor.from_pretrained(ckpt)
    model = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt)
    for size in [(40, 24), (24, 56), (200, 100)]:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
        inputs = proc(images=random_image(0, size), text=proc.apply_chat_template(msgs, add_generation_prompt=True),
                      return_tensors="pt")
        ref, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"])
        ids = inputs["input_ids"][0]
        image = (ids == model.config.image_token_id).nonzero()[:, 0]
        _, gh, gw = inputs["image_grid_thw"][0].tolist()
        slot = positions.ImageSlot(int(image[0]), np.arange(len(image)), (gh // 2, gw // 2))
        got = positions.prefill(Positions("mrope", (2, 3, 3)), len(ids), image=slot)
        np.testing.assert_array_equal(got, ref.numpy())
        with torch.no_grad():
            assert positions.next_position(got) == int(ref.max()) + 1
