"""Accuracy of the trained demo VLM: keep ratio x scorer x decoder weight precision, in one table.

Usage:
    python bench/eval_matrix.py                                      # fp32, int8, int4; 300 questions per set
    python bench/eval_matrix.py --precisions fp32 int4 --limit 500 --scorers cls atp divprune

Exports the built-in ``demo`` once per precision (``build/demo-eval-<precision>``, every scorer as an
alternative vision graph; skipped when the bundle exists), answers the same seeded held-out questions
(easy-VQA test split, multi-object ``test`` split) through each bundle with ``atp.runtime.evaluate``
and writes ``bench/results/eval_matrix_demo.{md,json}`` and one PNG per data set. Accuracy is exact
answer match; agreement (in brackets) is with the same bundle's dense (all tokens) answer.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCORERS = ["cls", "random", "atp", "idp", "qat", "divprune", "visionzip", "visionzip-merge", "fastv"]
WEIGHT_FLAGS = {"fp32": [], "int8": ["--weights", "int8"], "int4": ["--weights", "int4", "--group-size", "32"],
                "int4-kv8": ["--weights", "int4", "--group-size", "32", "--kv-cache", "int8"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8", "int4"], choices=list(WEIGHT_FLAGS))
    ap.add_argument("--data", nargs="+", default=["easy-vqa", "multi-object"])
    ap.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125, 0.0625])
    ap.add_argument("--scorers", nargs="+", default=SCORERS)
    ap.add_argument("--limit", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    from atp import cli, datasets
    from atp.runtime import Session
    from atp.runtime.evaluate import evaluate, plot, report_markdown

    results: dict[str, list[dict]] = {d: [] for d in args.data}
    for precision in args.precisions:
        bundle = ROOT / "build" / f"demo-eval-{precision}"
        if not (bundle / "manifest.json").exists():
            print(f"exporting demo ({precision}) to {bundle} ...", file=sys.stderr)
            rc = cli.main(["onnx", "demo", "--out", str(bundle), "--overwrite", "--scorer", args.scorers[0],
                           "--extra-scorers", *args.scorers[1:], *WEIGHT_FLAGS[precision]])
            if rc != 0:
                sys.exit(rc)
        session = Session(bundle)
        for data in args.data:
            samples = datasets.subsample(datasets.load(data, "test"), args.limit, seed=0)
            print(f"{precision} / {data}: {len(samples)} questions", file=sys.stderr)
            results[data] += evaluate(session, samples, args.ratios, args.scorers, max_new_tokens=4)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from atp.runtime.benchmark import machine

    mc = machine()
    lines = ["# Demo VLM accuracy: keep ratio x scorer x precision", "",
             f"- machine: {mc['cpu']}, {mc['logical_cores']} logical cores, onnxruntime {mc['onnxruntime']}; "
             f"date {dt.date.today().isoformat()}",
             f"- model: built-in `demo` (export/assets/demo-vlm); decoder weights per row (vision fp32); "
             f"{args.limit} seeded held-out questions per data set, greedy, ONNX Runtime CPU",
             f"- command: `python bench/eval_matrix.py --precisions {' '.join(args.precisions)} --limit {args.limit}`",
             "- cell: accuracy (agreement with the same bundle's answer with all tokens kept)", ""]
    for data, rows in results.items():
        table = report_markdown(rows, data).split("\n", 2)[2]  # drop the table's own title
        lines += [f"## {data}", "", table, ""]
        plot(rows, out / f"eval_matrix_demo_{data}.png", f"demo on {data}")
    (out / "eval_matrix_demo.md").write_text("\n".join(lines))
    (out / "eval_matrix_demo.json").write_text(json.dumps({"machine": mc, "results": results}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
