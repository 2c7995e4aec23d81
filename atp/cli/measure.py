"""``atp-export eval`` (accuracy per keep ratio and scorer) and ``atp-export bench`` (latency per keep ratio)."""

from __future__ import annotations

import sys

from atp.cli._common import fmt
from atp.errors import ConfigError

EVAL_EPILOG = fmt("""
    examples:
      atp-export eval build/demo --data easy-vqa --limit 500 --out build/eval-easy
      atp-export eval build/demo --data multi-object --keep-ratios 1 0.25 0.0625 --scorers cls random --out build/eval-mo
""")

BENCH_EPILOG = fmt("""
    examples:
      atp-export bench build/demo --out build/bench-demo
      atp-export bench build/demo --keep-ratios 1 0.25 --repeats 3 --backend ort --out build/bench-quick
""")


def add_eval_parser(sub, raw) -> None:
    e = sub.add_parser("eval", help="accuracy and dense agreement across keep ratios and scorers", epilog=EVAL_EPILOG,
                       formatter_class=raw, description="Answer VQA questions with a bundle at several keep ratios and scorers; "
                       "write results.json, results.md and accuracy.png.")
    e.add_argument("bundle", metavar="BUNDLE")
    e.add_argument("--data", required=True, help="easy-vqa, multi-object, or a folder with questions.json")
    e.add_argument("--split", default="test", help="data split (default: test, the held-out one)")
    e.add_argument("--keep-ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125, 0.0625], metavar="R")
    e.add_argument("--scorers", nargs="+", default=None, metavar="NAME", help="default: every scorer the bundle has")
    e.add_argument("--limit", type=int, default=None, metavar="N", help="seeded subset of N questions")
    e.add_argument("--max-new-tokens", type=int, default=8, metavar="N")
    e.add_argument("--backend", default="ort")
    e.add_argument("--out", required=True, metavar="DIR")


def add_bench_parser(sub, raw) -> None:
    b = sub.add_parser("bench", help="latency, memory and FLOPs per keep ratio, as ratios against dense", epilog=BENCH_EPILOG,
                       formatter_class=raw, description="Measure vision, prefill, time to first token and decode speed per "
                       "keep ratio in one run; write bench.json, bench.md and bench.png.")
    b.add_argument("bundle", metavar="BUNDLE")
    b.add_argument("--image", default="assets/demo.png", metavar="IMG")
    b.add_argument("--prompt", default="What shapes do you see in this image?")
    b.add_argument("--keep-ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125], metavar="R")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--decode-tokens", type=int, default=16)
    b.add_argument("--scorer", default=None)
    b.add_argument("--backend", default="ort", help="ort (CPU) or ort-cuda")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--out", required=True, metavar="DIR")


def cmd_eval(args) -> int:
    from atp.runtime.evaluate import run_eval

    report = run_eval(args.bundle, args.data, args.out, split=args.split, keep_ratios=args.keep_ratios, scorers=args.scorers,
                      limit=args.limit, backend=args.backend, max_new_tokens=args.max_new_tokens)
    from atp.runtime.evaluate import report_markdown

    print(report_markdown(report["results"], f"{args.bundle} on {args.data} ({args.split})"))
    print(f"written to {args.out}/results.json, results.md, accuracy.png", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    from atp.runtime.benchmark import markdown, run_bench

    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    report = run_bench(args.bundle, args.out, args.image, args.prompt, args.keep_ratios, repeats=args.repeats,
                       backend=args.backend, threads=args.threads, decode_tokens=args.decode_tokens, scorer=args.scorer)
    print(markdown(report, f"{args.bundle}: latency vs keep ratio ({args.backend})"))
    print(f"written to {args.out}/bench.json, bench.md, bench.png", file=sys.stderr)
    return 0
