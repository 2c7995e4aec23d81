"""The demo VLM training script runs, checkpoints, resumes and writes an exportable checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_train_smoke_resume_and_export(tmp_path):
    script = ROOT / "scripts" / "train_demo_vlm.py"
    common = ["--limit-train", "64", "--multi-object-images", "10", "--n-test", "16", "--batch", "4",
              "--eval-every", "2", "--save-every", "1", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "ckpt")]
    pruning_aware = ["--token-drop", "0.5", "--aux-cls", "0.5", "--aux-word", "0.5"]
    subprocess.run([sys.executable, str(script), "--steps", "2", *pruning_aware, *common], check=True, capture_output=True)
    p = subprocess.run([sys.executable, str(script), "--steps", "3", "--resume", *pruning_aware, *common], check=True, capture_output=True,
                       text=True)
    assert "resumed from step 2" in p.stderr
    info = json.loads((tmp_path / "ckpt" / "training.json").read_text())
    assert [h["step"] for h in info["history"]] == [2, 3] and len(info["sha256"]) == 64
    assert info["sha256"] in (tmp_path / "ckpt" / "README.md").read_text()

    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    ckpt = tmp_path / "ckpt"
    export_bundle(adapter_for_checkpoint(ckpt).from_checkpoint(ckpt), tmp_path / "bundle")
    res = Session(tmp_path / "bundle").generate(ROOT / "assets" / "demo.png", "what shape is in the image?", keep_ratio=0.25,
                                                max_new_tokens=3)
    assert res.kept == 16 and len(res.token_ids) >= 1


def test_token_subsets_and_word_tied_loss():
    """Pruning-aware subsets: ascending, K in [k_min, N-1], object patches favoured; word-tied loss falls
    when object patches point at their words' embeddings."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    from demo_vlm_supervision import token_subsets, word_tied_loss

    rng = np.random.default_rng(0)
    targets = torch.zeros(400, 64, dtype=torch.long)
    targets[:, :8] = 5  # eight object patches per image
    keep = token_subsets(targets, rng, fraction=0.5, k_min=4, object_bias=1.0)
    kept = [k for k in keep if k is not None]
    assert 150 < len(kept) < 250
    assert all(4 <= len(k) <= 63 and (np.diff(k) > 0).all() for k in kept)
    small = [k for k in kept if len(k) <= 8]
    assert small and np.mean([np.isin(k, np.arange(8)).mean() for k in small]) > 0.9  # a perfect-ish scorer's choice
    uniform = [k for k in token_subsets(targets, rng, 1.0, 4, 0.0) if len(k) <= 8]
    assert np.mean([np.isin(k, np.arange(8)).mean() for k in uniform]) < 0.4

    embed = torch.randn(50, 16)
    color_ids, shape_ids = list(range(8)), [8, 9, 10]
    background = torch.randn(2, 16)
    t = torch.tensor([[0, 1, 1 + 8 * 2 + 3, -100]])  # background, red circle, teal triangle, unknown
    aligned = torch.stack([background[0] + background[1], embed[0] + embed[8], embed[3] + embed[10], torch.randn(16)])[None]
    assert word_tied_loss(aligned, t, embed, color_ids, shape_ids, background) < word_tied_loss(
        torch.randn(1, 4, 16), t, embed, color_ids, shape_ids, background)
