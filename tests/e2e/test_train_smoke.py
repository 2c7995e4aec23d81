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
    subprocess.run([sys.executable, str(script), "--steps", "2", *common], check=True, capture_output=True)
    p = subprocess.run([sys.executable, str(script), "--steps", "3", "--resume", *common], check=True, capture_output=True, text=True)
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
