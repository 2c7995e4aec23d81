"""``--keep auto`` bundles: the vision graph picks K per image in ONNX Runtime exactly as the PyTorch reference does.

Tolerance: K per image equal, kept index sets equal, embeddings atol 1e-5 (fp32), padding rows exactly zero.
"""

import json

import numpy as np
import pytest

from atp.calibration.auto_keep import AutoKeep
from atp.errors import ConfigError
from tests.conftest import random_image

N = 16
PROMPTS = ["what colour is the circle", "is there a blue triangle", "how many shapes are in the image"]
AUTOS = {"cls": AutoKeep(0.5, 3, 13, "test"), "atp": AutoKeep(0.8, 2, 15, "test")}


@pytest.fixture(scope="module")
def auto_bundle(tiny_ckpt, tmp_path_factory):
    from atp.config import ExportConfig, PruningConfig
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    out = tmp_path_factory.mktemp("auto") / "bundle"
    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    export_bundle(adapter, out, ExportConfig(pruning=PruningConfig(scorer="cls", keep="auto", extra_scorers=("atp", "fastv"))),
                  auto_keep=AUTOS)
    return adapter, Session(out)


def test_manifest_records_auto_keep(auto_bundle):
    _, s = auto_bundle
    pr = s.manifest["pruning"]
    assert pr["keep_mode"] == "auto" and pr["keep"] == "auto" and pr["default_keep"] == 13  # the default scorer's k_max
    assert pr["auto_keep"]["vision"]["fraction"] == 0.5 and pr["auto_keep"]["vision.atp"]["k_max"] == 15
    assert pr["auto_keep"]["vision.fastv"]["source"].startswith("defaults")  # no parameters given for fastv
    g = s.manifest["graphs"]["vision"]
    assert [o["name"] for o in g["outputs"]] == ["image_embeds", "kept_index", "kept_count"]
    assert g["outputs"][0]["shape"][2] == s.manifest["model"]["hidden_size"]  # static, despite the padding mask
    assert "min_j s_j" in g["auto_keep"]["normalisation"]
    assert all(v["same_kept_count"] for k, v in s.manifest["validation"].items() if k.startswith("vision"))


@pytest.mark.parametrize("name", ["cls", "atp", "fastv"])
def test_ort_picks_the_same_k_and_tokens_as_pytorch(auto_bundle, name):
    """24 random images (batch 1 and 2, K cap N and N/2): K per image and kept sets equal, bounds respected."""
    import torch

    from atp.registry import SCORERS
    from atp.runtime.preprocess import preprocess

    adapter, s = auto_bundle
    graph = s.vision_graph(name)
    auto = AutoKeep(**{k: v for k, v in s.manifest["pruning"]["auto_keep"][graph].items() if k != "normalisation"})
    module = adapter.vision_module(SCORERS.get(name)().eval(), auto_keep=auto)
    seen_k, mixed_batches = set(), 0
    for case in range(16):
        batch = 1 + case % 2
        prompt = PROMPTS[case % len(PROMPTS)]
        px = np.concatenate([preprocess(random_image(600 + 2 * case + i), s.manifest["preprocessing"]) for i in range(batch)])
        feeds = {"pixel_values": px}
        if s.needs_text(graph):
            feeds["text_embeds"] = np.repeat(s.text_embeds(prompt, graph), batch, axis=0)
        if s.needs_prompt(graph):
            feeds.update({k: np.repeat(v, batch, axis=0) for k, v in s.prompt_sequence(prompt).items()})
        for cap in (N, N // 2):
            feeds["keep"] = np.array(cap, np.int64)
            embeds, index, count = s.backend.run_graph(graph, feeds)
            args = [torch.from_numpy(feeds[i["name"]]) for i in s.manifest["graphs"][graph]["inputs"]]
            with torch.no_grad():
                ref_embeds, ref_index, ref_count = module(*args)
            assert count.tolist() == ref_count.tolist(), (name, case, cap)
            assert all(min(auto.k_min, cap) <= k <= min(auto.k_max, cap) for k in count.tolist())
            assert index.shape == (batch, max(count))
            for row, ref_row, k in zip(index.tolist(), ref_index.tolist(), count.tolist()):
                assert set(row[:k]) == set(ref_row[:k]) and row[:k] == sorted(row[:k]), (name, case, cap)
                assert row[k:] == [-1] * (len(row) - k)
            np.testing.assert_allclose(embeds, ref_embeds.numpy(), atol=1e-5, rtol=0)
            for b, k in enumerate(count.tolist()):
                assert not embeds[b, k:].any()
            seen_k.update(count.tolist())
            mixed_batches += batch == 2 and len(set(count.tolist())) == 2
    assert len(seen_k) > 1, f"{name}: every image got the same K ({seen_k}); the test would not see per-image K"
    if name != "fastv":  # fastv's defaults (k_max = N) rarely clamp differently per image on the tiny model
        assert mixed_batches > 0, "no batch of 2 with different K per image"


def test_session_generates_with_the_graph_k(auto_bundle):
    _, s = auto_bundle
    for seed in range(4):
        img = random_image(700 + seed)
        res = s.generate(img, PROMPTS[0], scorer="atp", max_new_tokens=2)
        from atp.runtime.preprocess import preprocess

        px = preprocess(img, s.manifest["preprocessing"])
        _, index, count = s.backend.run_graph("vision.atp", {"pixel_values": px, "keep": np.array(15, np.int64),
                                                             "text_embeds": s.text_embeds(PROMPTS[0], "vision.atp")})
        assert res.kept == int(count[0]) == len(res.kept_index) and res.kept_index == index[0].tolist()
        capped = s.generate(img, PROMPTS[0], scorer="atp", keep=2, max_new_tokens=1)
        assert capped.kept == 2  # keep is the request's upper bound (k_min 2 <= K <= 2)


def test_selection_scorers_refuse_auto(tiny_ckpt, tmp_path):
    from atp.config import ExportConfig, PruningConfig
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle

    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    with pytest.raises(ConfigError, match="'idp' returns a pick order"):
        export_bundle(adapter, tmp_path / "b", ExportConfig(pruning=PruningConfig(scorer="cls", keep="auto", extra_scorers=("idp",))))
    assert not (tmp_path / "b").exists()


def test_cli_keep_auto_with_an_artifact_round_trip(tiny_ckpt, tmp_path, capsys):
    """calibrate writes fraction/k_min/k_max per scorer; onnx --keep auto --calibration puts them in the graph."""
    from atp import cli
    from atp.calibration.artifact import CalibrationArtifact
    from atp.calibration.auto_keep_fit import auto_keep_from

    art_dir = tmp_path / "art"
    assert cli.main(["calibrate", str(tiny_ckpt), "--data", "multi-object", "--out", str(art_dir), "--limit", "4",
                     "--scorers", "atp", "idp", "--keep-ratios", "1", "0.5", "0.25"]) == 0
    art = CalibrationArtifact.load(art_dir)
    sec = art.section("retention")
    assert "auto_keep" not in sec["scorers"]["idp"] and sec["auto_keep"]["scorers"] == ["atp"]
    fit = sec["scorers"]["atp"]["auto_keep"]
    agree = art.tensors("retention")["atp.auto_agreement"]
    cands = sec["auto_keep"]["k_candidates"]
    for budget, f in fit.items():
        fi, a, b = sec["auto_keep"]["fractions"].index(f["fraction"]), cands.index(f["k_min"]), cands.index(f["k_max"])
        assert agree[fi, a, b] == pytest.approx(f["agreement"]) and f["agreement"] >= float(budget) - 1e-6
        mean_k = art.tensors("retention")["atp.auto_mean_k"]
        assert not np.any((agree + 1e-6 >= float(budget)) & (mean_k < f["mean_k"] - 1e-6))  # nothing cheaper met the budget
    assert np.all(agree[:, -1, -1] == 1.0)  # k_min = N is the dense model
    reloaded = CalibrationArtifact.load(art_dir)  # round trip: what export reads is what calibrate wrote
    strict = fit[max(fit, key=float)]
    got = auto_keep_from(reloaded, ["atp", "cls"])
    assert (got["atp"].fraction, got["atp"].k_min, got["atp"].k_max) == (strict["fraction"], strict["k_min"], strict["k_max"])
    assert got["cls"].source.startswith("defaults")
    out = tmp_path / "b"
    assert cli.main(["onnx", str(tiny_ckpt), "--out", str(out), "--scorer", "atp", "--keep", "auto",
                     "--calibration", str(art_dir)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    rec = m["pruning"]["auto_keep"]["vision"]
    assert (rec["fraction"], rec["k_min"], rec["k_max"]) == (strict["fraction"], strict["k_min"], strict["k_max"])
    assert rec["source"].startswith("calibration artifact") and m["pruning"]["default_keep"] == strict["k_max"]
    assert cli.main(["onnx", str(tiny_ckpt), "--out", str(tmp_path / "b95"), "--scorer", "atp", "--keep", "auto",
                     "--calibration", str(art_dir), "--budget", "0.95"]) == 0
    rec = json.loads((tmp_path / "b95" / "manifest.json").read_text())["pruning"]["auto_keep"]["vision"]
    assert (rec["fraction"], rec["k_min"], rec["k_max"]) == tuple(fit["0.95"][k] for k in ("fraction", "k_min", "k_max"))
    assert "budget 0.95" in rec["source"]
    capsys.readouterr()
    assert cli.main(["onnx", str(tiny_ckpt), "--out", str(tmp_path / "b5"), "--scorer", "atp", "--keep", "auto",
                     "--calibration", str(art_dir), "--budget", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "budget 0.5" in err and "0.99, 0.95" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["onnx", str(tiny_ckpt), "--out", str(tmp_path / "c"), "--keep", "most"])
    assert exc.value.code == 2 and "integer or 'auto'" in capsys.readouterr().err
