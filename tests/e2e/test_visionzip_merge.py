"""``visionzip-merge`` bundles: ORT == PyTorch (dominant index sets, all K rows incl. contextual tokens), and the
PyTorch graph module == VisionZip's step-by-step definition (dominant top-(K-c) by CLS attention, contextual merge).

Tolerance: index sets equal; embeddings atol 1e-5 (fp32).
"""

import numpy as np
import pytest

from tests.conftest import random_image

N = 16


@pytest.fixture(scope="module")
def vz_bundle(tiny_ckpt, tmp_path_factory):
    from atp.config import ExportConfig, PruningConfig
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    out = tmp_path_factory.mktemp("vz") / "bundle"
    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    export_bundle(adapter, out, ExportConfig(pruning=PruningConfig(scorer="cls", extra_scorers=("visionzip-merge",))),
                  scorer_params={"visionzip-merge": {"contextual": 3}})
    return adapter, Session(out)


def test_manifest_says_outputs_change(vz_bundle):
    _, s = vz_bundle
    g = s.manifest["graphs"]["vision.visionzip-merge"]
    assert g["contextual_tokens"] == 3 and g["contextual_merge"]["changes_outputs"] is True
    assert "not original tokens" in g["contextual_merge"]["note"]
    assert s.manifest["pruning"]["scorer_params"]["visionzip-merge"] == {"contextual": 3}


def test_ort_equals_pytorch_and_the_definition(vz_bundle):
    """21 random images, K in {1, N/4, N}, batch 1 and 2."""
    import torch

    from atp.calibration.retention.visionzip import VisionZipMergeScorer, contextual_merge_reference
    from atp.runtime.preprocess import preprocess

    adapter, s = vz_bundle
    module = adapter.vision_module(VisionZipMergeScorer(contextual=3).eval())
    for case in range(14):
        batch = 1 + case % 2
        px = np.concatenate([preprocess(random_image(800 + 2 * case + i), s.manifest["preprocessing"]) for i in range(batch)])
        for k in (1, N // 4, N):
            c = min(3, k - 1)
            embeds, index = s.backend.run_vision(px, k, "vision.visionzip-merge")
            with torch.no_grad():
                ref_embeds, ref_index = module(torch.from_numpy(px), torch.tensor(k))
                ctx = module.context(torch.from_numpy(px), torch.tensor(k))
                cls, feats, keys = ctx.saliency().numpy(), ctx.features.numpy(), ctx.key_metric().numpy()
            assert embeds.shape == (batch, k, ref_embeds.shape[-1]) and index.shape == (batch, k - c)
            assert [set(r) for r in index.tolist()] == [set(r) for r in ref_index.tolist()], (case, k)
            np.testing.assert_allclose(embeds, ref_embeds.numpy(), atol=1e-5, rtol=0)
            for b in range(batch):  # the definition, independent of the vectorised graph code
                dom = sorted(np.argsort(-cls[b], kind="stable")[: k - c].tolist())
                assert index[b].tolist() == dom
                rows = feats[b, dom]
                if c:
                    rows = np.concatenate([rows, contextual_merge_reference(feats[b], keys[b], dom, c)])
                with torch.no_grad():
                    want = module.projector(torch.from_numpy(rows.astype(np.float32))).numpy()
                np.testing.assert_allclose(embeds[b], want, atol=1e-4, rtol=0)


def test_session_feeds_dominant_and_contextual_tokens(vz_bundle):
    _, s = vz_bundle
    res = s.generate(random_image(900), "what colour is the circle", keep=6, scorer="visionzip-merge", max_new_tokens=2)
    assert res.kept == 6 and len(res.kept_index) == 3  # 3 dominant + 3 contextual tokens reached the LM
    plain = s.generate(random_image(900), "what colour is the circle", keep=6, max_new_tokens=2)
    assert res.prompt_tokens == plain.prompt_tokens
