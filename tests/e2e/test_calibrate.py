"""``atp-export calibrate`` on the tiny checkpoint: artifact contents follow from the measured agreement,
the PyTorch answers equal the bundle's, export applies the blend weights and refuses another model's artifact."""

import json

import numpy as np
import pytest

from atp import cli
from atp.calibration.artifact import CalibrationArtifact

RATIOS = [1.0, 0.5, 0.25]


def run_cli(args, capsys):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def artifact(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("calib") / "art"
    rc = cli.main(["calibrate", str(tiny_ckpt), "--data", "multi-object", "--out", str(out), "--limit", "8",
                   "--scorers", "cls", "atp", "qat", "--keep-ratios", *map(str, RATIOS)])
    assert rc == 0
    return out


def test_artifact_follows_from_the_measured_agreement(artifact, tiny_ckpt):
    from atp.calibration.artifact import adapter_fingerprint
    from atp.calibration.calibrate import PARAM_GRIDS
    from atp.export.adapters import adapter_for_checkpoint

    art = CalibrationArtifact.load(artifact)
    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    art.check_model(adapter_fingerprint(adapter))
    sec = art.section("retention")
    assert sec["split"] == "calib" and sec["n_samples"] == 8 and sec["keep_ratios"] == RATIOS
    assert art.section("quantization") is None
    tensors = art.tensors("retention")
    for name in ("cls", "atp", "qat"):
        s = sec["scorers"][name]
        grid = PARAM_GRIDS.get(name, [{}])
        agreement = tensors[f"{name}.agreement"]
        assert agreement.shape == (len(grid), len(RATIOS))
        assert np.all(agreement[:, 0] == 1.0)  # keep ratio 1 is the dense answer itself
        objective = agreement[:, 1:].mean(axis=1)
        best = int(np.argmax(objective))
        assert s["params"] == grid[best]
        assert s["objective"] == pytest.approx(float(objective[best]), abs=1e-6)
        for budget, rec in s["recommended_keep"].items():
            r = rec["keep_ratio"]
            chosen = agreement[best]
            ok = [chosen[i] >= float(budget) - 1e-6 for i, x in enumerate(RATIOS) if x >= r]
            assert all(ok), (name, budget, rec, chosen)
            smaller = [i for i, x in enumerate(RATIOS) if x < r]
            if smaller:  # the next smaller ratio misses the budget, or the rule would have gone lower
                assert chosen[smaller[0]] < float(budget)


def test_torch_answers_equal_the_bundle(tiny_ckpt, tiny_session):
    """Calibration answers in PyTorch what the exported bundle answers (dense and pruned)."""
    import torch

    from atp.calibration.calibrate import TorchVlm, calibration_samples
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.gate import topk_ascending

    vlm = TorchVlm(adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt))
    for sample in calibration_samples("multi-object", 4):
        with torch.no_grad():
            ctx = vlm.gate.context(vlm.pixels(sample.image), torch.tensor(4), vlm.text_embeds(sample.question))
            proj = ctx.projected()[0]
            idx = topk_ascending(ctx.saliency(), torch.tensor(4))[0]
            dense, pruned = vlm.answers(vlm.prompt_ids(sample.question), proj[None], 5)[0], \
                vlm.answers(vlm.prompt_ids(sample.question), proj[idx][None], 5)[0]
        assert list(dense) == tiny_session.generate(sample.image, sample.question, keep=16, max_new_tokens=5).token_ids
        res = tiny_session.generate(sample.image, sample.question, keep=4, max_new_tokens=5)
        assert res.kept_index == idx.tolist() and list(pruned) == res.token_ids


def test_resume_reuses_saved_progress(tiny_ckpt, tmp_path, monkeypatch):
    from atp.calibration import calibrate as cal
    from atp.export.adapters import adapter_for_checkpoint

    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    cfg = cal.RetentionCalibConfig(data="multi-object", limit=3, scorers=("cls", "atp"), keep_ratios=(1.0, 0.25))
    first = cal.calibrate_retention(adapter, cfg, tmp_path / "p", progress=False)
    lines = (tmp_path / "p" / "samples.jsonl").read_text().splitlines()
    (tmp_path / "p" / "samples.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # interrupted mid-line
    calls = []
    real = cal._sample_answers
    monkeypatch.setattr(cal, "_sample_answers", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = cal.calibrate_retention(adapter, cfg, tmp_path / "p", progress=False)
    assert len(calls) == 1  # only the sample whose line was cut short ran again
    assert second[0] == first[0]
    other = cal.RetentionCalibConfig(data="multi-object", limit=3, scorers=("cls",), keep_ratios=(1.0, 0.25))
    cal.calibrate_retention(adapter, other, tmp_path / "p", progress=False)
    assert len(calls) == 4  # another configuration starts over


def test_export_applies_calibration(artifact, tiny_ckpt, tmp_path, capsys):
    import torch

    from atp.registry import SCORERS
    from atp.runtime import Session
    from atp.export.adapters import adapter_for_checkpoint
    from tests.conftest import random_image
    from atp.runtime.preprocess import preprocess

    out = tmp_path / "b"
    rc, _, err = run_cli(["onnx", tiny_ckpt, "--out", out, "--scorer", "atp", "--extra-scorers", "qat", "--calibration", artifact], capsys)
    assert rc == 0, err
    sec = CalibrationArtifact.load(artifact).section("retention")
    s = Session(out)
    pr = s.manifest["pruning"]
    for name in ("atp", "qat"):
        assert pr["scorer_params"][name] == sec["scorers"][name]["params"]
        assert pr["calibration"]["recommended_keep"][name] == sec["scorers"][name]["recommended_keep"]
    strict = sec["scorers"]["atp"]["recommended_keep"]["0.99"]
    assert s.default_keep == strict["k"]
    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    for name in ("atp", "qat"):
        module = adapter.vision_module(SCORERS.get(name)(**sec["scorers"][name]["params"]).eval())
        for seed in range(3):
            px = preprocess(random_image(300 + seed), s.manifest["preprocessing"])
            text = s.text_embeds("what colour is the circle") if s.needs_text(s.vision_graph(name)) else None
            with torch.no_grad():
                args = [torch.from_numpy(px), torch.tensor(4)] + ([torch.from_numpy(text)] if text is not None else [])
                _, ref = module(*args)
            _, idx = s.backend.run_vision(px, 4, s.vision_graph(name), text)
            assert idx.tolist() == ref.tolist()


def test_export_refuses_another_models_artifact(artifact, tmp_path, capsys):
    from tests.tiny import build_tiny_llava

    other = build_tiny_llava(tmp_path / "other", seed=1)
    rc, _, err = run_cli(["onnx", other, "--out", tmp_path / "b", "--calibration", artifact], capsys)
    assert rc == 2 and "made for another model" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


def test_calibrate_bad_input(tiny_ckpt, tmp_path, capsys):
    rc, _, err = run_cli(["calibrate", tiny_ckpt, "--data", "nowhere", "--out", tmp_path / "a", "--limit", "2"], capsys)
    assert rc == 2 and "unknown calibration data" in err
    rc, _, err = run_cli(["calibrate", tiny_ckpt, "--data", "multi-object", "--out", tmp_path / "a", "--scorers", "nope"], capsys)
    assert rc == 2 and "unknown scorer 'nope'" in err
    bad = tmp_path / "notart"
    bad.mkdir()
    rc, _, err = run_cli(["onnx", tiny_ckpt, "--out", tmp_path / "b", "--calibration", bad], capsys)
    assert rc == 2 and "calibration.json is missing" in err
    doc = tmp_path / "v2"
    doc.mkdir()
    (doc / "calibration.json").write_text(json.dumps({"format": "atp-calibration", "version": 99}))
    rc, _, err = run_cli(["onnx", tiny_ckpt, "--out", tmp_path / "b", "--calibration", doc], capsys)
    assert rc == 2 and "version 99 is not supported" in err
