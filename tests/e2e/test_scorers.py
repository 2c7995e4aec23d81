"""Bundles with several scorers: each vision graph equals its PyTorch reference; scorer chosen per request.

Tolerance: kept index sets equal; embeddings atol 1e-5 (fp32).
"""

import numpy as np
import pytest

from atp.errors import ConfigError
from tests.conftest import random_image

N = 16
EXTRA = ("random", "atp", "idp", "divprune", "qat", "visionzip", "fastv")
PROMPTS = ["what colour is the circle", "is there a blue triangle", "how many shapes are in the image", "describe the picture"]


@pytest.fixture(scope="module")
def ab_bundle(tiny_ckpt, tmp_path_factory):
    from atp.config import ExportConfig, PruningConfig
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    out = tmp_path_factory.mktemp("ab") / "bundle"
    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    export_bundle(adapter, out, ExportConfig(pruning=PruningConfig(scorer="cls", extra_scorers=EXTRA)))
    return adapter, Session(out)


def test_manifest_lists_scorers(ab_bundle):
    _, s = ab_bundle
    assert s.scorers == ["cls", *EXTRA]
    assert s.manifest["graphs"]["vision.random"]["file"] == "vision.random.onnx"
    assert s.manifest["validation"]["vision.random"]["same_kept_index"]


@pytest.mark.parametrize("name", ["cls", *EXTRA])
def test_each_scorer_graph_matches_pytorch(ab_bundle, name):
    """21 images x prompts, K in {1, N/4, N}, batch 1 and 2: ORT == PyTorch reference of the same scorer."""
    import torch

    from atp.registry import SCORERS
    from atp.runtime.preprocess import preprocess

    adapter, s = ab_bundle
    module = adapter.vision_module(SCORERS.get(name)().eval())
    graph = s.vision_graph(name)
    for case in range(14):
        batch = 1 + case % 2
        prompt = PROMPTS[case % len(PROMPTS)]
        px = np.concatenate([preprocess(random_image(200 + 2 * case + i), s.manifest["preprocessing"]) for i in range(batch)])
        text = np.repeat(s.text_embeds(prompt), batch, axis=0) if s.needs_text(graph) else None
        seq = {k: np.repeat(v, batch, axis=0) for k, v in s.prompt_sequence(prompt).items()} if s.needs_prompt(graph) else {}
        for k in (1, N // 4, N):
            args = [torch.from_numpy(px), torch.tensor(k)] + ([torch.from_numpy(text)] if text is not None else []) + \
                [torch.from_numpy(seq[n]) for n in ("prompt_prefix", "prompt_suffix") if n in seq]
            with torch.no_grad():
                ref_embeds, ref_index = module(*args)
            embeds, index = s.backend.run_vision(px, k, graph, text, seq)
            assert index.shape == (batch, k)
            assert [set(r) for r in index.tolist()] == [set(r) for r in ref_index.tolist()], (name, case, k)
            np.testing.assert_allclose(embeds, ref_embeds.numpy(), atol=1e-5, rtol=0)


def test_text_conditioned_scorers_follow_the_prompt(ab_bundle):
    _, s = ab_bundle
    assert s.needs_text("vision.atp") and s.needs_text("vision.idp") and not s.needs_text("vision")
    assert s.manifest["graphs"]["vision.atp"]["text_embeds"]["space"] == "lm"
    img = random_image(77)
    picks = {p: tuple(s.generate(img, p, keep=4, scorer="atp", max_new_tokens=1).kept_index) for p in PROMPTS}
    assert len(set(picks.values())) > 1, "different prompts should be able to keep different tokens"


def test_random_is_a_fixed_seeded_ranking(ab_bundle):
    _, s = ab_bundle
    expected = np.sort(np.argsort(-np.random.default_rng(0).random(N))[:4])
    for seed in (1, 2):
        res = s.generate(random_image(seed), "what colour", keep=4, scorer="random", max_new_tokens=2)
        assert res.kept_index == expected.tolist()
    cls = s.generate(random_image(1), "what colour", keep=4, max_new_tokens=2)
    assert len(cls.kept_index) == 4


def test_unknown_scorer_for_bundle(ab_bundle):
    _, s = ab_bundle
    with pytest.raises(ConfigError, match="no vision graph for scorer 'nope'"):
        s.generate(random_image(0), "what colour", scorer="nope")


def test_visionzip_dominant_tokens_equal_cls(ab_bundle):
    """Without the contextual merge, VisionZip's dominant tokens are the CLS-attention top K (recorded: 0 merged)."""
    _, s = ab_bundle
    assert s.manifest["graphs"]["vision.visionzip"]["contextual_tokens"] == 0
    for seed in range(5):
        for k in (1, 4, 9):
            a = s.generate(random_image(400 + seed), "what colour", keep=k, scorer="visionzip", max_new_tokens=1).kept_index
            b = s.generate(random_image(400 + seed), "what colour", keep=k, scorer="cls", max_new_tokens=1).kept_index
            assert a == b


def test_fastv_reads_the_prompt_and_records_its_cost(ab_bundle):
    """fastv's ranking is the text-to-image attention of the LM: it changes with the prompt; its cost is in the manifest."""
    _, s = ab_bundle
    g = s.manifest["graphs"]["vision.fastv"]
    assert [i["name"] for i in g["inputs"]] == ["pixel_values", "keep", "prompt_prefix", "prompt_suffix"]
    assert g["prompt_sequence"]["cost"]["lm_layer"] == 1  # layer 2 clamped to the tiny LM's last layer
    img = random_image(78)
    picks = {p: tuple(s.generate(img, p, keep=4, scorer="fastv", max_new_tokens=1).kept_index) for p in PROMPTS}
    assert len(set(picks.values())) > 1


def test_fastv_probe_equals_transformers_attention(ab_bundle):
    """The partial LM pass equals transformers' own attention weights at that layer (eager attention)."""
    import torch

    adapter, s = ab_bundle
    lm = adapter.model.model.language_model
    dec = adapter.decoder_module()
    h = torch.randn(2, 11, adapter.model_info()["hidden_size"], generator=torch.Generator().manual_seed(0)) * 0.1
    old = lm.config._attn_implementation
    lm.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            ref = lm(inputs_embeds=h, output_attentions=True).attentions[1].mean(dim=1)[:, -3:]
            got = dec.attention_probe(h, 1, 3)
    finally:
        lm.config._attn_implementation = old
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)
