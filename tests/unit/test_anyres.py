"""LLaVA-NeXT anyres preprocessing in numpy equals transformers' LlavaNextImageProcessorPil (1e-6) at several aspect
ratios, and the token order (base view, unpadded grid rows) gives transformers' token count."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from atp.runtime.anyres import AnyresSpec, newline_slots, token_layout
from atp.runtime.preprocess import preprocess_views

PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
SPEC = {"convert_rgb": True, "resize": {"shortest_edge": 32}, "resample": 3, "center_crop": {"height": 32, "width": 32},
        "rescale_factor": 1 / 255, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
        "image_size": [32, 32], "anyres": {"grid_pinpoints": PINPOINTS, "crop": 32, "patch": 8}}
SIZES = [(32, 32), (40, 24), (24, 56), (100, 30), (17, 80), (64, 64), (50, 90)]  # (H, W)


def _hf():
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    return LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                      image_grid_pinpoints=PINPOINTS)


@pytest.mark.parametrize("size", SIZES)
def test_views_equal_transformers(size):
    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    ref = _hf()(images=img, return_tensors="np")
    ours, hw = preprocess_views(img, SPEC)
    assert hw == size and tuple(ref["image_sizes"][0]) == size
    assert ours.shape == ref["pixel_values"][0].shape
    np.testing.assert_allclose(ours, ref["pixel_values"][0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", SIZES)
def test_token_count_equals_the_processor(size):
    from transformers import LlavaNextProcessor

    from tests.tiny import build_tokenizer

    proc = LlavaNextProcessor(image_processor=_hf(), tokenizer=build_tokenizer(None), patch_size=8,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
    index, row = token_layout(size, AnyresSpec.from_dict(SPEC["anyres"]))
    n_rows = len(set(row[row >= 0].tolist()))
    # base P (+1 CLS the processor counts and the model drops) + unpadded grid + one newline per grid row
    assert len(index) + n_rows + 1 == proc._get_number_of_features(*size, 32, 32)
    assert len(set(index.tolist())) == len(index)
    assert newline_slots(np.arange(len(index)), row) == [i for i in range(16, len(index)) if i + 1 == len(index) or row[i + 1] != row[i]]


@pytest.mark.parametrize("size", [(49, 73), (67, 27), (200, 40), (32, 32), (31, 97)])
def test_onevision_taps_equal_torch_interpolate(size):
    """anyres_max: mixing the tower tokens by tap_layout's four taps gives transformers' own unpad + bilinear
    interpolate of the projected grid (``pack_image_features`` with no newline), and the rows it names."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionModel

    from atp.runtime.anyres import tap_layout

    pins = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96], [128, 32]]
    cfg = LlavaOnevisionConfig(vision_config={"model_type": "siglip_vision_model", "image_size": 32, "patch_size": 8,
                                              "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                                              "intermediate_size": 8},
                               text_config={"model_type": "qwen2", "hidden_size": 8, "num_hidden_layers": 1,
                                            "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 8,
                                            "vocab_size": 16},
                               image_grid_pinpoints=pins, vision_aspect_ratio="anyres_max_1")
    spec = AnyresSpec(tuple(map(tuple, pins)), 32, 8, max_patches=1)
    index, weight, row = tap_layout(size, spec)
    views = int(index.max()) // 16 + 1
    x = torch.randn(views, 16, 5, generator=torch.Generator().manual_seed(0))
    ref = LlavaOnevisionModel(cfg).pack_image_features([x], torch.tensor([size]), image_newline=None,
                                                       vision_aspect_ratio="anyres_max_1")[0][0]
    ours = (x.reshape(-1, 5)[torch.from_numpy(index)] * torch.from_numpy(weight)[..., None]).sum(1)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-6, rtol=0)
    assert (row[:16] == -1).all() and (np.diff(row[16:]) >= 0).all() and (weight.sum(1) - 1 < 1e-6).all()
