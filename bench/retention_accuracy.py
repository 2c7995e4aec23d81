"""Accuracy vs keep ratio for every retention scorer, clean and under image corruptions.

Usage:
    python bench/retention_accuracy.py                        # exports build/demo-all-scorers if missing
    python bench/retention_accuracy.py --limit 300 --data easy-vqa multi-object --corruptions none noise blur jpeg
    python bench/retention_accuracy.py --limit 0 --data easy-vqa --corruptions none --scorers random atp idp qat \
        --ratios 1 0.25 0.125 0.0625 --workers 2                # the whole test split, one process per core

Runs the embedded demo VLM (exported once with every registered scorer as an alternative vision
graph) on held-out questions; for each data set and corruption prints accuracy (agreement with
the dense answer) per scorer and keep ratio, each scorer against ``random`` on the same questions
(paired bootstrap 95% interval), and writes ``bench/results/retention_accuracy.md`` (+ ``.json`` with
every answer's hit) and a PNG per data set.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCORERS = ["cls", "random", "atp", "idp", "qat", "divprune", "visionzip", "visionzip-merge", "fastv"]


def corrupt(image, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise (sigma 25), Gaussian blur (radius 1.5) or JPEG (quality 15) of an image."""
    from PIL import Image, ImageFilter

    img = Image.open(image).convert("RGB") if isinstance(image, (str, Path)) else Image.fromarray(image)
    if kind == "noise":
        arr = np.asarray(img, np.float32) + rng.normal(0, 25, (img.height, img.width, 3))
        return np.clip(arr, 0, 255).astype(np.uint8)
    if kind == "blur":
        return np.asarray(img.filter(ImageFilter.GaussianBlur(1.5)))
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=15)
        return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return np.asarray(img)


def evaluate_shard(job) -> list[dict]:
    """One worker process: its own single-threaded session on a shard of the questions."""
    from atp.runtime import Session
    from atp.runtime.evaluate import evaluate

    bundle, cases, ratios, scorers = job
    return evaluate(Session(bundle, threads=1), cases, ratios, scorers, max_new_tokens=4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "build" / "demo-all-scorers"))
    ap.add_argument("--data", nargs="+", default=["easy-vqa", "multi-object"])
    ap.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125, 0.0625])
    ap.add_argument("--corruptions", nargs="+", default=["none", "noise", "blur", "jpeg"])
    ap.add_argument("--limit", type=int, default=500, help="seeded questions per data set (0: the whole test split)")
    ap.add_argument("--scorers", nargs="+", default=None, help="default: every scorer")
    ap.add_argument("--workers", type=int, default=1, help="processes, each one ORT thread on a shard of the questions")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--calibration", default=None, metavar="ARTIFACT",
                    help="export with this calibration artifact's blend weights (atp-export calibrate demo ...)")
    args = ap.parse_args()

    manifest = Path(args.bundle) / "manifest.json"
    have = set(json.loads(manifest.read_text())["pruning"]["scorers"]) if manifest.exists() else set()
    if not set(SCORERS) <= have or args.calibration:
        print(f"exporting demo with every scorer to {args.bundle} ...", file=sys.stderr)
        cal = ["--calibration", args.calibration] if args.calibration else []
        subprocess.run([sys.executable, "-m", "atp.cli", "onnx", "demo", "--out", args.bundle, "--scorer", SCORERS[0],
                        "--extra-scorers", *SCORERS[1:], "--overwrite", "--keep-ratio", "0.25", *cal], check=True)

    from atp import datasets
    from atp.runtime import Session
    from atp.runtime.benchmark import machine
    from atp.runtime.evaluate import evaluate, merge, plot, report_markdown

    session = Session(args.bundle)
    scorers = args.scorers or session.scorers
    mc = machine()
    sections = [f"# Retention accuracy: scorers x keep ratio ({session.manifest['source']['checkpoint']})", "",
                f"- machine: {mc['cpu']}, {mc['logical_cores']} cores, onnxruntime {mc['onnxruntime']}; fp32",
                (f"- held-out questions: {args.limit} per data set (seeded subset of the test split); command: " if args.limit else
                 "- held-out questions: the whole test split; command: ") +
                f"`python bench/retention_accuracy.py {' '.join(sys.argv[1:])}`",
                f"- scorer parameters: {json.dumps(session.manifest['pruning'].get('scorer_params', {}))}"
                + (f" (calibrated: {args.calibration})" if args.calibration else " (defaults)"), ""]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    everything = {}
    for data in args.data:
        samples = datasets.subsample(datasets.load(data, "test"), args.limit or None, seed=0)
        for kind in args.corruptions:
            rng = np.random.default_rng(0)
            cases = samples if kind == "none" else [replace(s, image=corrupt(s.image, kind, rng)) for s in samples]
            if args.workers > 1:
                with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                    shards = [cases[i::args.workers] for i in range(args.workers)]
                    results = merge(list(pool.map(evaluate_shard, [(args.bundle, shard, args.ratios, scorers) for shard in shards])))
            else:
                results = evaluate(session, cases, args.ratios, scorers, max_new_tokens=4)
            title = f"{data}, {'clean' if kind == 'none' else kind}"
            table = report_markdown(results, title).replace("# ", "## ", 1)
            print(table)
            sections.append(table)
            plot(results, out / f"retention_{data}_{kind}.png", title)
            everything[f"{data}/{kind}"] = results
    (out / "retention_accuracy.md").write_text("\n".join(sections))
    (out / "retention_accuracy.json").write_text(json.dumps(everything, indent=1) + "\n")
    print(f"written to {out / 'retention_accuracy.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
