"""Decoder prefill time and time to first token vs keep ratio, as ratios against keep 1.0.

Usage:
    python bench/prefill_pruning.py                                   # exports build/demo-smollm2 if missing
    python bench/prefill_pruning.py --bundle build/demo-smollm2 --ratios 1 0.5 0.25 0.125 --repeats 7
    python bench/prefill_pruning.py --builtin demo-smollm2-576        # LLaVA-1.5's 576 visual tokens (336 px / 14)

Uses the SmolLM2-135M-based built-in (``demo-smollm2``) by default: a real 135M-parameter language
model, so prefill costs are those of an LM, not of the tiny trained demo. All ratios run in one
process, interleaved over the repeats (see ``atp.runtime.benchmark``). Prints the table and writes
it to ``bench/results/prefill_pruning_<bundle>_<backend>.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "What shapes do you see in this image?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builtin", default="demo-smollm2", help="built-in model to export when --bundle is missing")
    ap.add_argument("--bundle", default=None, help="default: build/<builtin>")
    ap.add_argument("--image", default=str(ROOT / "assets" / "demo.png"))
    ap.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    args.bundle = args.bundle or str(ROOT / "build" / args.builtin)

    if not (Path(args.bundle) / "manifest.json").exists():
        print(f"exporting {args.builtin} to {args.bundle} ...", file=sys.stderr)
        subprocess.run(["atp-export", "onnx", args.builtin, "--out", args.bundle], check=True)

    from atp.runtime import Session
    from atp.runtime.benchmark import benchmark

    s = Session(args.bundle, backend=args.backend, threads=args.threads)
    rep = benchmark(s, args.image, PROMPT, args.ratios, repeats=args.repeats, decode_tokens=2)
    mc = rep["machine"]
    lines = [
        f"# Prefill and time to first token vs keep ratio ({args.backend})",
        "",
        f"- machine: {mc['cpu']}, {mc['logical_cores']} logical cores, {mc['os']}, onnxruntime {mc['onnxruntime']}",
        f"- bundle: {rep['source']}",
        f"- N = {s.num_visual_tokens} visual tokens, scorer {s.scorers[0]}, fp32; {args.repeats} repeats after a warm-up, "
        f"interleaved; median (min..max); ratios against keep ratio {args.ratios[0]:g}",
        f"- date: {dt.date.today().isoformat()}; command: `python bench/prefill_pruning.py --builtin {args.builtin} --repeats {args.repeats}`",
        "",
        "| keep ratio | K | prompt tokens | prefill ms | prefill vs dense | TTFT ms | TTFT vs dense |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rep["rows"]:
        lines.append(
            f"| {r['keep_ratio']:g} | {r['k']} | {r['prompt_tokens']} | {r['prefill_ms']:.1f} "
            f"({r['prefill_spread_ms'][0]:.0f}..{r['prefill_spread_ms'][1]:.0f}) | {r['vs_dense']['prefill']:.2f} | "
            f"{r['ttft_ms']:.1f} ({r['ttft_spread_ms'][0]:.0f}..{r['ttft_spread_ms'][1]:.0f}) | {r['vs_dense']['ttft']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "bench" / "results" / f"prefill_pruning_{Path(args.bundle).name}_{args.backend}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
