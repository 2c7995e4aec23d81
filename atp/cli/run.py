"""``atp-export run``: answer a question about an image with a bundle."""

from __future__ import annotations

import json
import sys

from atp.cli._common import add_keep_args, fmt

RUN_EPILOG = fmt("""
    examples:
      atp-export run build/demo --image assets/demo.png --prompt "What shapes do you see?"
      atp-export run build/demo --image assets/demo.png --prompt "Describe the image." --keep-ratio 0.25 --json
      atp-export run build/demo --image assets/demo.png --raw-prompt --prompt "<image> The colours are" --max-new-tokens 8
""")


def add_run_parser(sub, raw) -> None:
    r = sub.add_parser("run", help="answer a question about an image with a bundle", epilog=RUN_EPILOG, formatter_class=raw,
                       description="Generate text from an image and a prompt (ONNX Runtime on CPU by default).")
    r.add_argument("bundle", metavar="BUNDLE")
    r.add_argument("--image", required=True, metavar="IMG", help="image file (PNG, JPEG, ...)")
    r.add_argument("--prompt", required=True, metavar="TEXT", help="question or instruction")
    add_keep_args(r, "for this request")
    r.add_argument("--max-new-tokens", type=int, default=32, metavar="N")
    r.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    r.add_argument("--top-p", type=float, default=1.0)
    r.add_argument("--top-k", type=int, default=0)
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--raw-prompt", action="store_true", help="use --prompt verbatim (it must contain the image placeholder)")
    r.add_argument("--scorer", default=None, metavar="NAME", help="one of the bundle's scorers (default: its default)")
    r.add_argument("--backend", default="ort", help="ort (CPU, default) or ort-cuda")
    r.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    r.add_argument("--json", action="store_true", help="print one JSON object")


def cmd_run(args) -> int:
    from atp.runtime import Session

    session = Session(args.bundle, backend=args.backend, threads=args.threads)
    res = session.generate(args.image, args.prompt, keep=args.keep, keep_ratio=args.keep_ratio,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           top_k=args.top_k, seed=args.seed, raw_prompt=args.raw_prompt,
                           scorer=args.scorer)
    if args.json:
        print(json.dumps({"text": res.text, "token_ids": res.token_ids, "kept": res.kept, "kept_index": res.kept_index,
                          "visual_tokens": res.visual_tokens, "prompt_tokens": res.prompt_tokens,
                          "timings": {k: round(v, 3) for k, v in res.timings.items()}}))
        return 0
    t = res.timings
    print(res.text)
    print(f"-- kept {res.kept}/{res.visual_tokens} visual tokens; prompt {res.prompt_tokens} tokens, "
          f"generated {len(res.token_ids)}", file=sys.stderr)
    print(f"-- timings (ms): vision {t['vision']:.1f}, prefill {t['prefill']:.1f}, time to first token {t['ttft']:.1f}, "
          f"decode {t['decode_per_token']:.1f}/token, total {t['total']:.1f}", file=sys.stderr)
    return 0
