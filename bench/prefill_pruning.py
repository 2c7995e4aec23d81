"""Decoder prefill time and time to first token vs keep ratio, as ratios against keep 1.0.

Usage:
    python bench/prefill_pruning.py                       # exports build/demo first if missing
    python bench/prefill_pruning.py --bundle build/demo --ratios 1 0.5 0.25 0.125 --repeats 7

All ratios run in one process, interleaved round-robin over the repeats so drift
hits them alike; medians are reported, with the spread (min..max). The table is
printed and written to ``bench/results/prefill_pruning_<backend>.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from _machine import machine_line  # noqa: E402

PROMPT = "What shapes do you see in this image?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "build" / "demo"))
    ap.add_argument("--image", default=str(ROOT / "assets" / "demo.png"))
    ap.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=None, help="Markdown file (default bench/results/prefill_pruning_<backend>.md)")
    args = ap.parse_args()

    if not (Path(args.bundle) / "manifest.json").exists():
        print(f"exporting the demo bundle to {args.bundle} ...", file=sys.stderr)
        subprocess.run(["atp-export", "onnx", "demo", "--out", args.bundle], check=True)

    from atp.runtime import Session
    from atp.runtime.preprocess import preprocess

    s = Session(args.bundle, backend=args.backend, threads=args.threads)
    ids = s.prompt_ids(PROMPT)
    pixels = preprocess(args.image, s.manifest["preprocessing"])
    cases = []
    for r in args.ratios:
        k = s.resolve_keep(keep_ratio=r)
        image_embeds, _ = s.backend.run_vision(pixels, k)
        embeds = s.inputs_embeds(ids, image_embeds[0])
        cases.append({"ratio": r, "k": k, "embeds": embeds, "prefill": [], "ttft": []})

    def prefill(c):
        n = c["embeds"].shape[1]
        t = time.perf_counter()
        s._step(c["embeds"], np.ones((1, n), np.int64), np.arange(n)[None], s._empty_past(1))
        return (time.perf_counter() - t) * 1e3

    for c in cases:  # warm-up: one of each
        prefill(c)
        s.generate(args.image, PROMPT, keep=c["k"], max_new_tokens=1)
    for _ in range(args.repeats):
        for c in cases:
            c["prefill"].append(prefill(c))
            c["ttft"].append(s.generate(args.image, PROMPT, keep=c["k"], max_new_tokens=1).timings["ttft"])

    base = cases[0]
    bp, bt = statistics.median(base["prefill"]), statistics.median(base["ttft"])
    m = s.manifest
    lines = [
        f"# Prefill and time to first token vs keep ratio ({args.backend})",
        "",
        f"- machine: {machine_line()}",
        f"- bundle: {m['source']['checkpoint']}",
        f"- N = {m['pruning']['num_visual_tokens']} visual tokens, scorer {m['pruning']['scorer']}, fp32; "
        f"{args.repeats} repeats after 1 warm-up, interleaved; median (min..max); ratios against keep ratio {base['ratio']}",
        f"- date: {dt.date.today().isoformat()}; command: `python bench/prefill_pruning.py --repeats {args.repeats}`",
        "",
        "| keep ratio | K | prompt tokens | prefill ms | prefill vs dense | TTFT ms | TTFT vs dense |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cases:
        p, t = statistics.median(c["prefill"]), statistics.median(c["ttft"])
        lines.append(
            f"| {c['ratio']:g} | {c['k']} | {c['embeds'].shape[1]} | {p:.1f} ({min(c['prefill']):.0f}..{max(c['prefill']):.0f}) "
            f"| {p / bp:.2f} | {t:.1f} ({min(c['ttft']):.0f}..{max(c['ttft']):.0f}) | {t / bt:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"prefill_pruning_{args.backend}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
