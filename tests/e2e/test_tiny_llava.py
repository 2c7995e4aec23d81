"""Tiny seeded LLaVA: the exported bundle on ONNX Runtime against transformers (fp32).

Tolerances (fp32, CPU): vision embeddings atol 1e-5; decoder logits and KV atol 1e-4
(ORT fuses and reorders reductions); greedy ids and kept index sets must be equal.
"""

import numpy as np
import onnx
import pytest
import torch

from atp.export.gate import reference_gate
from tests.conftest import random_image

N = 16  # (32 / 8)^2 visual tokens of the tiny CLIP tower
PROMPTS = ["what colour is the circle", "how many shapes are in the image"]
VISION_ATOL = 1e-5
LOGITS_ATOL = 1e-4


def _hf_inputs(processor, img, prompt):
    return processor(images=img, text=f"USER: <image>\n{prompt} ASSISTANT:", return_tensors="pt")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_ids_equal_transformers_generate(tiny_session, hf_tiny, seed, prompt):
    model, processor = hf_tiny
    img = random_image(seed)
    inputs = _hf_inputs(processor, img, prompt)
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    ours = tiny_session.generate(img, prompt, max_new_tokens=12)
    assert len(ours.token_ids) >= 8
    assert ours.token_ids == ref
    assert ours.kept == N and ours.kept_index == list(range(N))


@pytest.fixture(scope="module")
def hf_eager(tiny_ckpt):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(tiny_ckpt, attn_implementation="eager").eval()


def _pixels(tiny_session, seeds):
    from atp.runtime.preprocess import preprocess

    return np.concatenate([preprocess(random_image(s), tiny_session.manifest["preprocessing"]) for s in seeds])


def _hf_scores_and_features(model, px):
    """CLS attention from transformers' own attention maps (eager) at the feature layer, and projected features."""
    with torch.no_grad():
        out = model.model.vision_tower(torch.from_numpy(px), output_attentions=True, output_hidden_states=True)
        layer = len(out.hidden_states) + model.config.vision_feature_layer - 1  # layer whose output is read
        scores = out.attentions[layer][:, :, 0, 1:].mean(dim=1)
        feats = model.model.multi_modal_projector(out.hidden_states[model.config.vision_feature_layer][:, 1:])
    return scores, feats


@pytest.mark.parametrize("batch", [1, 2])
def test_vision_graph_matches_pytorch_for_every_k(tiny_session, hf_eager, batch):
    px = _pixels(tiny_session, range(10, 10 + batch))
    scores, feats = _hf_scores_and_features(hf_eager, px)
    for k in (1, N // 4, N // 2, N):
        embeds, index = tiny_session.backend.run_vision(px, k)
        ref_embeds, ref_index = reference_gate(scores, feats, k)
        assert embeds.shape == (batch, k, 64) and index.shape == (batch, k)
        assert [set(r) for r in index.tolist()] == [set(r) for r in ref_index.tolist()]
        np.testing.assert_allclose(embeds, ref_embeds.numpy(), atol=VISION_ATOL, rtol=0)


def _ref_prefill_logits(model, embeds, mask):
    with torch.no_grad():
        h = model.model.language_model(inputs_embeds=torch.from_numpy(embeds), attention_mask=torch.from_numpy(mask)).last_hidden_state
        return model.lm_head(h[:, -1]).numpy()


@pytest.mark.parametrize("k", [1, N // 4, N])
def test_pruned_prefill_logits_match_pytorch(tiny_session, hf_eager, k):
    px = _pixels(tiny_session, [3])
    scores, feats = _hf_scores_and_features(hf_eager, px)
    ref_embeds, ref_index = reference_gate(scores, feats, k)
    image_embeds, index = tiny_session.backend.run_vision(px, k)
    assert set(index[0].tolist()) == set(ref_index[0].tolist())
    ids = tiny_session.prompt_ids(PROMPTS[0])
    ours = tiny_session.inputs_embeds(ids, image_embeds[0])
    ref = tiny_session.inputs_embeds(ids, ref_embeds[0].numpy())
    mask = np.ones((1, ours.shape[1]), np.int64)
    logits, _ = tiny_session._step(ours, mask, np.arange(ours.shape[1])[None], tiny_session._empty_past(1))
    np.testing.assert_allclose(logits, _ref_prefill_logits(hf_eager, ref, mask), atol=LOGITS_ATOL, rtol=0)
    assert len(ids) - 1 + k == ours.shape[1]


def test_decoder_batch2_left_padding_and_kv_cache(tiny_session, hf_eager):
    """Batch 2 with left padding, prefill then two decode steps, against transformers per row."""
    rng = np.random.default_rng(5)
    lengths, d = [7, 4], 64
    total = max(lengths)
    embeds = np.zeros((2, total, d), np.float32)
    mask = np.zeros((2, total), np.int64)
    rows = [rng.normal(0, 0.5, (n, d)).astype(np.float32) for n in lengths]
    for b, row in enumerate(rows):
        embeds[b, total - len(row):] = row
        mask[b, total - len(row):] = 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    logits, past = tiny_session._step(embeds, mask, positions, tiny_session._empty_past(2))
    for step in range(2):
        nxt = rng.normal(0, 0.5, (2, 1, d)).astype(np.float32)
        rows = [np.concatenate([r, nxt[b]]) for b, r in enumerate(rows)]
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1
        logits, past = tiny_session._step(nxt, mask, positions, past)
        assert past["past_key_values.0.key"].shape == (2, 2, total + step + 1, 16)
    for b, row in enumerate(rows):
        ref = _ref_prefill_logits(hf_eager, row[None], np.ones((1, len(row)), np.int64))
        np.testing.assert_allclose(logits[b:b + 1], ref, atol=LOGITS_ATOL, rtol=0)


def test_dynamic_axes_are_in_the_graphs(tiny_bundle):
    def dims(path, names):
        m = onnx.load(str(path), load_external_data=False)
        vs = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*m.graph.input, *m.graph.output]}
        return {n: vs[n] for n in names}

    v = dims(tiny_bundle / "vision.onnx", ["pixel_values", "keep", "image_embeds", "kept_index"])
    assert v == {"pixel_values": ["batch", 3, 32, 32], "keep": [], "image_embeds": ["batch", "keep", 64], "kept_index": ["batch", "keep"]}
    d = dims(tiny_bundle / "decoder.onnx", ["inputs_embeds", "attention_mask", "position_ids", "past_key_values.1.value",
                                          "logits", "present.1.value"])
    assert d == {"inputs_embeds": ["batch", "sequence", 64], "attention_mask": ["batch", "total_sequence"],
                 "position_ids": ["batch", "sequence"], "past_key_values.1.value": ["batch", 2, "past_sequence", 16],
                 "logits": ["batch", 1, 301], "present.1.value": ["batch", 2, "total_sequence", 16]}
    assert sorted(p.name for p in tiny_bundle.glob("*.onnx")) == ["decoder.onnx", "vision.onnx"]


@pytest.mark.parametrize("text_model", ["qwen2", "mistral"])
def test_other_text_models_generate_like_transformers(tmp_path, text_model):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session
    from tests.tiny import build_tiny_llava

    ckpt = build_tiny_llava(tmp_path / "ckpt", seed=3, text_model=text_model)
    export_bundle(adapter_for_checkpoint(ckpt).from_checkpoint(ckpt), tmp_path / "bundle")
    model, processor = LlavaForConditionalGeneration.from_pretrained(ckpt).eval(), AutoProcessor.from_pretrained(ckpt)
    img = random_image(7)
    inputs = _hf_inputs(processor, img, PROMPTS[1])
    with torch.no_grad():
        ref = model.generate(**inputs, max_new_tokens=10, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    ours = Session(tmp_path / "bundle").generate(img, PROMPTS[1], max_new_tokens=10)
    assert len(ours.token_ids) >= 8 and ours.token_ids == ref


def test_external_data_for_large_weights(tiny_ckpt, tiny_session, tmp_path):
    """Weights over the threshold go to <graph>.data, listed in the manifest and checksummed."""
    from atp.config import ExportConfig
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    m = export_bundle(adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt), tmp_path / "b",
                      ExportConfig(external_data_threshold=1000), validate=False)
    assert m["graphs"]["decoder"]["external_data"] == ["decoder.onnx.data"]
    assert {"vision.onnx.data", "decoder.onnx.data"} <= set(m["files"])
    assert (tmp_path / "b" / "decoder.onnx").stat().st_size < 100_000
    img = random_image(0)
    ours = Session(tmp_path / "b").generate(img, PROMPTS[0], max_new_tokens=8)
    assert len(ours.token_ids) == 8 and ours.token_ids == tiny_session.generate(img, PROMPTS[0], max_new_tokens=8).token_ids


def test_context_length_is_checked(tiny_bundle):
    """Issue 20: a prompt past the model's positions is refused with the reason; generation stops at the last
    position (ignore_eos included) instead of running past it."""
    from atp.errors import InputError
    from atp.runtime import Session

    s = Session(tiny_bundle)
    assert s.max_sequence == 512
    with pytest.raises(InputError, match="at or past the model's 512 positions"):
        s.generate(random_image(0), "what colour is the circle " * 120, max_new_tokens=4)
    ids = s.prompt_ids("what colour is the circle " * 25)
    r = s.generate(random_image(0), "what colour is the circle " * 25, max_new_tokens=400, ignore_eos=True)
    assert r.prompt_tokens == len(ids) - 1 + N and r.prompt_tokens + len(r.token_ids) == 512
