"""``atp-export calibrate``: fit scorer blend weights, keep ratios and mixed-precision plans into an artifact."""

from __future__ import annotations

import json

from atp.cli._common import fmt, load_adapter, load_clip, quiet_transformers
from atp.errors import ConfigError

CALIBRATE_EPILOG = fmt("""
    examples:
      atp-export calibrate demo --data multi-object --out build/calib-demo --limit 200
      atp-export calibrate demo --data easy-vqa --out build/calib-easy --limit 100 --scorers atp qat --budgets 0.99 0.95
      atp-export onnx demo --out build/demo-cal --scorer atp --extra-scorers qat --calibration build/calib-demo
      atp-export calibrate demo-smollm2 --bits 4.4 --group-size 64 --out build/calib-smollm2   # mixed int4/int8 plan
""")


def add_calibrate_parser(sub, raw) -> None:
    c = sub.add_parser("calibrate", help="fit scorer blend weights and recommended keep ratios on calibration data",
                       epilog=CALIBRATE_EPILOG, formatter_class=raw,
                       description="Answer calibration questions with all visual tokens and with K kept by each scorer setting "
                       "(PyTorch); keep the blend weights that agree most with the dense answers and the smallest keep ratio "
                       "per accuracy budget. Writes an artifact directory (calibration.json + safetensors) for "
                       "`atp-export onnx --calibration`. Interrupted runs resume from ARTIFACT.partial/.")
    c.add_argument("checkpoint", metavar="CHECKPOINT", help="local Hugging Face model folder, or a built-in: demo, demo-smollm2, demo-smollm2-576")
    c.add_argument("--data", default=None,
                   help="retention: easy-vqa, multi-object (their calibration part only) or a folder with questions.json")
    c.add_argument("--out", required=True, metavar="ARTIFACT", help="artifact directory to write (atomically)")
    c.add_argument("--limit", type=int, default=200, metavar="N", help="calibration questions (default: 200)")
    c.add_argument("--scorers", nargs="+", default=["cls", "atp", "qat"], metavar="NAME", help="scorers to calibrate (default: cls atp qat)")
    c.add_argument("--keep-ratios", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.375, 0.25, 0.125, 0.0625], metavar="R")
    c.add_argument("--budgets", type=float, nargs="+", default=[0.99, 0.95], metavar="A",
                   help="agreement with the dense answers for the recommended keep ratios (default: 0.99 0.95)")
    c.add_argument("--max-new-tokens", type=int, default=4, metavar="N")
    c.add_argument("--clip-model", metavar="NAME", default=None,
                   help="open_clip model the bundle will be exported with: atp's alpha is fitted with text relevance in CLIP "
                        "space, as the bundle measures it (default: LM embedding space)")
    c.add_argument("--clip-weights", metavar="FILE", default=None, help="local open_clip checkpoint for --clip-model")
    c.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    c.add_argument("--no-resume", action="store_true", help="start over even if ARTIFACT.partial/ holds progress")
    cq = c.add_argument_group("quantization (mixed int4/int8 weights per output feature)")
    cq.add_argument("--bits", type=float, default=None, metavar="B",
                    help="average weight bits in [4, 8] (e.g. 4.4): salience per output feature, int8 for the most salient")
    cq.add_argument("--group-size", type=int, default=32, metavar="G", help="int4 group size (default 32)")
    cq.add_argument("--asymmetric", action="store_true", help="int4 with zero points")
    cq.add_argument("--salience", default="fisher", choices=["fisher", "hessian"], help="salience estimate (default fisher)")
    cq.add_argument("--text", default=None, metavar="FILE",
                    help="calibration text (paragraphs); default: the Debian fortunes corpus, calibration split")
    cq.add_argument("--calib-tokens", type=int, default=16384, metavar="N", help="calibration tokens (default 16384)")


def cmd_calibrate(args) -> int:
    from atp.errors import require

    if args.data is None and args.bits is None:
        raise ConfigError("nothing to calibrate: give --data (token retention) and/or --bits (mixed-precision weights)")
    for module in ("torch", "transformers", "safetensors"):
        require(module, "export")
    if args.bits is not None:
        from atp.calibration.mixed_precision import check_bits

        check_bits(args.bits)  # fail before loading anything
    quiet_transformers()
    adapter = load_adapter(args.checkpoint)
    if args.data is not None:
        from atp.calibration.calibrate import RetentionCalibConfig, run_calibrate

        cfg = RetentionCalibConfig(data=args.data, limit=args.limit, scorers=tuple(args.scorers), keep_ratios=tuple(args.keep_ratios),
                                   budgets=tuple(args.budgets), max_new_tokens=args.max_new_tokens)
        art = run_calibrate(adapter, cfg, args.out, overwrite=args.overwrite, resume=not args.no_resume,
                            clip=load_clip(args))
        sec = art.section("retention")
        for name, v in sec["scorers"].items():
            rec = ", ".join(f">={b}: keep {r['keep_ratio']:g} (K={r['k']})" for b, r in v["recommended_keep"].items())
            print(f"{name:10s} params {json.dumps(v['params'])}  mean agreement {v['objective']:.3f} "
                  f"(defaults {v['default_objective']:.3f}); {rec}")
        print(f"wrote {args.out} (model fingerprint {art.fingerprint[:12]}..., {sec['n_samples']} {sec['data']} calibration questions)")
    if args.bits is not None:
        from atp.calibration.quant_calibrate import run_calibrate_quantization

        plan = run_calibrate_quantization(adapter, args.out, args.bits, args.group_size, not args.asymmetric, args.salience,
                                          args.text, args.calib_tokens, overwrite=args.overwrite,
                                          add_to_existing=args.data is not None)
        s = plan.summary()
        print(f"quantization plan: {s['average_bits']:.3f} average bits ({100 * s['int8_fraction']:.1f}% of weights int8, "
              f"{s['average_bits_with_scales']:.3f} with scales), int4 group {s['group_size']}"
              f"{'' if s['symmetric'] else ' asymmetric'}; written to {args.out}")
    return 0
