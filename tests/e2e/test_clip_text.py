"""``atp`` in CLIP text space with an open_clip model built here (real open_clip code, tiny random weights).

Tolerances: text embeddings atol 1e-5; kept index sets equal; image embeddings atol 1e-5 + rtol 1e-5 (fp32).
"""

import numpy as np
import pytest

from tests.conftest import random_image

open_clip = pytest.importorskip("open_clip", reason="the clip extra (open_clip) is not installed")

N = 16
PROMPTS = ["what colour is the circle", "Is there a BLUE triangle?", "how many shapes are in the image", "describe the picture"]


def tiny_open_clip(patch=8, image_size=32):
    import torch
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from atp.export.clip import OpenClip

    torch.manual_seed(0)
    model = CLIP(embed_dim=24, vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=patch, image_size=image_size),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2))
    return OpenClip(model, open_clip.get_tokenizer("ViT-B-32"), name=f"tiny-open-clip-p{patch}-{image_size}")


@pytest.fixture(scope="module")
def clip_bundle(tiny_ckpt, tmp_path_factory):
    from atp.config import ExportConfig, PruningConfig
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    clip = tiny_open_clip(patch=16, image_size=48)  # a 3x3 grid against the VLM's 4x4: resampled onto it
    out = tmp_path_factory.mktemp("clip") / "bundle"
    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    export_bundle(adapter, out, ExportConfig(pruning=PruningConfig(scorer="atp", extra_scorers=("idp", "qat"))), clip=clip)
    return adapter, clip, Session(out)


def test_manifest_records_clip_space(clip_bundle):
    _, clip, s = clip_bundle
    g = s.manifest["graphs"]
    assert g["vision"]["text_embeds"]["space"] == "clip" and g["vision"]["text_embeds"]["clip_model"] == clip.name
    assert g["vision.idp"]["text_embeds"]["space"] == "lm"  # idp has no CLIP form: LM space, recorded as such
    assert g["vision.qat"]["text_embeds"]["space"] == "clip"  # qat's semantic term is atp's relevance
    assert g["text"]["file"] == "text.onnx" and s.manifest["pruning"]["scorer_params"]["atp"]["text_space"] == "clip"
    assert s.manifest["validation"]["text"]["max_abs_diff"] < 1e-5


def test_runtime_tokenizer_and_text_graph_match_open_clip(clip_bundle):
    import torch

    _, clip, s = clip_bundle
    for p in PROMPTS:
        ids = clip.tokenizer([p])
        with torch.no_grad():
            ref = clip.model.encode_text(ids, normalize=True).numpy()
        np.testing.assert_allclose(s.clip_text_embeds(p), ref, atol=1e-5, rtol=0)
        assert s.text_embeds(p, "vision").shape == (1, clip.embed_dim)


@pytest.mark.parametrize("name,graph", [("atp", "vision"), ("qat", "vision.qat")])
def test_clip_atp_graph_matches_pytorch(clip_bundle, name, graph):
    """21 images x prompts, K in {1, N/4, N}, batch 1 and 2."""
    import torch

    from atp.registry import SCORERS
    from atp.runtime.preprocess import preprocess

    adapter, clip, s = clip_bundle
    module = adapter.vision_module(SCORERS.get(name)(text_space="clip").eval(), clip=clip)
    for case in range(14):
        batch = 1 + case % 2
        px = np.concatenate([preprocess(random_image(500 + 2 * case + i), s.manifest["preprocessing"]) for i in range(batch)])
        text = np.repeat(s.text_embeds(PROMPTS[case % len(PROMPTS)], graph), batch, axis=0)
        for k in (1, N // 4, N):
            with torch.no_grad():
                ref_embeds, ref_index = module(torch.from_numpy(px), torch.tensor(k), torch.from_numpy(text))
            embeds, index = s.backend.run_vision(px, k, graph, text)
            assert [set(r) for r in index.tolist()] == [set(r) for r in ref_index.tolist()], (case, k)
            np.testing.assert_allclose(embeds, ref_embeds.numpy(), atol=1e-5, rtol=1e-5)


def test_clip_relevance_is_the_open_clip_patch_similarity(clip_bundle):
    """alpha = 0: the ranking is cosine(open_clip patch embedding, CLIP text embedding), computed here from open_clip."""
    import torch

    from atp.calibration.retention.atp_hybrid import AtpHybridScorer
    from atp.runtime.preprocess import preprocess

    adapter, _, s = clip_bundle
    clip = tiny_open_clip()  # same grid as the VLM (4x4): no resampling
    module = adapter.vision_module(AtpHybridScorer(alpha=0.0, text_space="clip").eval(), clip=clip)
    img = random_image(9)
    px = torch.from_numpy(preprocess(img, s.manifest["preprocessing"]))
    with torch.no_grad():
        t = clip.model.encode_text(clip.tokenizer(["is there a red circle"]), normalize=True)
        _, idx = module(px, torch.tensor(4), t)
        # open_clip's own pipeline on the same [0, 1] pixels, its normalisation
        mean, std = torch.tensor(s.manifest["preprocessing"]["mean"]), torch.tensor(s.manifest["preprocessing"]["std"])
        raw = px * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)
        v = clip.model.visual
        v.output_tokens = True
        m, sd = torch.tensor(open_clip.OPENAI_DATASET_MEAN), torch.tensor(open_clip.OPENAI_DATASET_STD)
        _, tokens = v((raw - m.view(1, 3, 1, 1)) / sd.view(1, 3, 1, 1))
        v.output_tokens = False
        sim = torch.nn.functional.normalize(tokens @ v.proj, dim=-1) @ t[0]
    assert set(idx[0].tolist()) == set(sim[0].topk(4).indices.tolist())


def test_clip_cli_errors(tiny_ckpt, tmp_path, capsys):
    from atp import cli

    rc = cli.main(["onnx", str(tiny_ckpt), "--out", str(tmp_path / "b"), "--scorer", "atp", "--clip-model", "ViT-B-32",
                   "--clip-weights", str(tmp_path / "missing.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "CLIP weights" in err and "not found" in err
    rc = cli.main(["onnx", str(tiny_ckpt), "--out", str(tmp_path / "b"), "--clip-weights", str(tmp_path / "x.pt")])
    assert rc == 2 and "--clip-weights needs --clip-model" in capsys.readouterr().err
