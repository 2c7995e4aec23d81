"""`demo-smollm2` (real SmolLM2-135M weights): ORT bundle vs transformers (fp32).

Tolerances: vision embeddings atol 1e-4 (256 tokens, 5 layers); greedy ids equal for
12 new tokens at K = N, N/4 and N/8, with the LM fed the same visual tokens.
"""

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
IMAGE = ROOT / "assets" / "demo.png"
PROMPT = "What shapes do you see in this image?"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    pytest.importorskip("gguf")
    from atp.export.demo import build_demo_adapter, smollm2_dir

    try:
        smollm2_dir()
    except Exception as exc:  # not installed: say why, never pass silently
        pytest.skip(str(exc))
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    adapter = build_demo_adapter()
    out = tmp_path_factory.mktemp("demo") / "bundle"
    manifest = export_bundle(adapter, out)
    return adapter, Session(out), manifest, out


def test_manifest_records_validation(demo):
    _, _, manifest, _ = demo
    assert manifest["pruning"]["num_visual_tokens"] == 256
    assert manifest["validation"]["vision"]["same_kept_index"]
    assert manifest["validation"]["decoder"]["logits_max_abs_diff"] < 1e-3


def test_vision_matches_transformers(demo):
    adapter, session, _, _ = demo
    from atp.runtime.preprocess import preprocess

    px = preprocess(IMAGE, session.manifest["preprocessing"])
    with torch.no_grad():
        ref = adapter.model.model.get_image_features(pixel_values=torch.from_numpy(px), vision_feature_layer=-2,
                                                     vision_feature_select_strategy="default")
    ref = getattr(ref, "pooler_output", ref)
    ref = torch.cat(list(ref)) if isinstance(ref, (list, tuple)) else ref
    embeds, index = session.backend.run_vision(px, 256)
    np.testing.assert_array_equal(index[0], np.arange(256))
    np.testing.assert_allclose(embeds, ref.reshape(embeds.shape).numpy(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("keep", [256, 64, 32])
def test_greedy_ids_equal_transformers_on_real_lm(demo, keep):
    adapter, session, _, _ = demo
    res = session.generate(IMAGE, PROMPT, keep=keep, max_new_tokens=12)
    ids = session.prompt_ids(PROMPT)
    from atp.runtime.preprocess import preprocess

    image_embeds, index = session.backend.run_vision(preprocess(IMAGE, session.manifest["preprocessing"]), keep)
    assert index[0].tolist() == res.kept_index
    embeds = session.inputs_embeds(ids, image_embeds[0])
    with torch.no_grad():
        ref = adapter.model.generate(inputs_embeds=torch.from_numpy(embeds), attention_mask=torch.ones(1, embeds.shape[1], dtype=torch.long),
                                     max_new_tokens=12, do_sample=False)
    assert len(res.token_ids) >= 8
    assert res.token_ids == ref[0].tolist()[-len(res.token_ids):] == ref[0].tolist()


def test_cli_run_on_demo_bundle(demo, capsys):
    from atp import cli

    _, _, _, bundle = demo
    rc = cli.main(["run", str(bundle), "--image", str(IMAGE), "--prompt", PROMPT, "--keep-ratio", "0.25",
                   "--max-new-tokens", "8", "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0 and res["kept"] == 64 and len(res["token_ids"]) >= 1 and res["text"].strip()
