"""Bundles with several scorers: each vision graph equals its PyTorch reference; scorer chosen per request."""

import numpy as np
import pytest

from atp.errors import ConfigError
from tests.conftest import random_image

N = 16


@pytest.fixture(scope="module")
def ab_bundle(tiny_ckpt, tmp_path_factory):
    from atp.config import ExportConfig, PruningConfig
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    out = tmp_path_factory.mktemp("ab") / "bundle"
    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    export_bundle(adapter, out, ExportConfig(pruning=PruningConfig(scorer="cls", extra_scorers=("random",))))
    return adapter, Session(out)


def test_manifest_lists_scorers(ab_bundle):
    _, s = ab_bundle
    assert s.scorers == ["cls", "random"]
    assert s.manifest["graphs"]["vision.random"]["file"] == "vision.random.onnx"
    assert s.manifest["validation"]["vision.random"]["same_kept_index"]


@pytest.mark.parametrize("batch", [1, 2])
def test_each_scorer_graph_matches_pytorch(ab_bundle, batch):
    import torch

    from atp.registry import SCORERS
    from atp.runtime.preprocess import preprocess

    adapter, s = ab_bundle
    px = np.concatenate([preprocess(random_image(20 + i), s.manifest["preprocessing"]) for i in range(batch)])
    for name in s.scorers:
        module = adapter.vision_module(SCORERS.get(name)().eval())
        for k in (1, N // 4, N):
            with torch.no_grad():
                ref_embeds, ref_index = module(torch.from_numpy(px), torch.tensor(k))
            embeds, index = s.backend.run_vision(px, k, s.vision_graph(name))
            assert [set(r) for r in index.tolist()] == [set(r) for r in ref_index.tolist()], name
            np.testing.assert_allclose(embeds, ref_embeds.numpy(), atol=1e-5, rtol=0)


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
    with pytest.raises(ConfigError, match="no vision graph for scorer 'idp'"):
        s.generate(random_image(0), "what colour", scorer="idp")
