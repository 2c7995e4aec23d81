"""``--keep auto`` against fixed K on held-out questions: agreement with the dense answers at the same token budget.

Usage:
    python bench/auto_keep.py --calibration build/calib-demo-auto --budget 0.8       # calibrates first if missing
    python bench/auto_keep.py --calibration build/calib-demo-auto --budget 0.9 --limit 500 --data easy-vqa

Exports the embedded demo VLM twice with the artifact's blend weights (one bundle with ``--keep auto`` at the
chosen budget, one with fixed K), answers the held-out ``test`` questions with all tokens (dense), with the auto
K per image and with fixed K at the floor and ceiling of the auto mean K, and prints per scorer: agreement with
the dense answers and mean K. Dynamic K helps only where it beats fixed K at the same mean K; the table says
whether it does. Measured side by side in one run; the machine is named in the header.
"""

from __future__ import annotations

import argparse
import math
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calibration", default=str(ROOT / "build" / "calib-demo-auto"), metavar="ARTIFACT")
    ap.add_argument("--budget", default="0.8", help="the artifact's budget whose auto keep fit is used")
    ap.add_argument("--scorers", nargs="+", default=["cls", "atp", "qat"])
    ap.add_argument("--data", default="multi-object")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--work", default=str(ROOT / "build" / "bench-auto-keep"))
    args = ap.parse_args()

    art_dir = Path(args.calibration)
    if not art_dir.exists():
        subprocess.run([sys.executable, "-m", "atp.cli", "calibrate", "demo", "--data", args.data, "--out", str(art_dir),
                        "--limit", "200", "--scorers", *args.scorers, "--budgets", "0.95", "0.9", "0.8"], check=True)

    from atp import datasets
    from atp.calibration.artifact import CalibrationArtifact
    from atp.calibration.auto_keep_fit import auto_keep_from
    from atp.calibration.calibrate import scorer_params_from
    from atp.config import ExportConfig, PruningConfig
    from atp.export.demo import BUILTINS
    from atp.export.exporter import export_bundle
    from atp.runtime import Session
    from atp.runtime.evaluate import normalize

    art = CalibrationArtifact.load(art_dir)
    adapter = BUILTINS["demo"]()
    autos = auto_keep_from(art, args.scorers, budget=args.budget)
    params = scorer_params_from(art)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    pruning = dict(scorer=args.scorers[0], extra_scorers=tuple(args.scorers[1:]))
    export_bundle(adapter, work / "auto", ExportConfig(pruning=PruningConfig(keep="auto", **pruning)), scorer_params=params,
                  auto_keep=autos, validate=False)
    export_bundle(adapter, work / "fixed", ExportConfig(pruning=PruningConfig(**pruning)), scorer_params=params, validate=False)
    auto, fixed = Session(work / "auto"), Session(work / "fixed")
    n = fixed.num_visual_tokens
    samples = datasets.subsample(datasets.load(args.data, "test"), args.limit, seed=0)
    dense = [normalize(fixed.generate(s.image, s.question, keep=n, max_new_tokens=4).text) for s in samples]
    print(f"# --keep auto vs fixed K ({platform.node()}, {platform.processor() or platform.machine()}; demo VLM; "
          f"{len(samples)} {args.data} test questions; artifact {art_dir}, budget {args.budget})\n")
    print("| scorer | auto (fraction, k_min, k_max) | auto agreement | auto mean K | fixed K | fixed agreement |")
    print("|---|---|---|---|---|---|")
    for name in args.scorers:
        a = autos[name]
        got = [auto.generate(s.image, s.question, scorer=name, max_new_tokens=4) for s in samples]
        agree = np.mean([normalize(r.text) == d for r, d in zip(got, dense)])
        mean_k = float(np.mean([r.kept for r in got]))
        for k in sorted({max(1, math.floor(mean_k)), min(n, math.ceil(mean_k))}):
            fk = np.mean([normalize(fixed.generate(s.image, s.question, keep=k, scorer=name, max_new_tokens=4).text) == d
                          for s, d in zip(samples, dense)])
            print(f"| {name} | {a.fraction:g}, {a.k_min}, {a.k_max} | {agree:.3f} | {mean_k:.1f} | {k} | {fk:.3f} |")


if __name__ == "__main__":
    main()
