"""``atp-export``: the one command-line entry point.

Heavy imports (torch, transformers, onnxruntime) happen inside the subcommands so
``atp-export --help`` is instant. Every :class:`~atp.errors.AtpError` becomes one
``error: ...`` line on stderr and exit code 2; ``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap

from atp.errors import AtpError, ConfigError

log = logging.getLogger("atp")


def _fmt(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


MAIN_EPILOG = _fmt("""
    examples:
      atp-export onnx demo --out build/demo                       # embedded default: the trained demo VLM
      atp-export onnx ./llava-1.5-7b-hf --out build/llava --keep-ratio 0.25
      atp-export run build/demo --image assets/demo.png --prompt "What shapes do you see?" --keep 64
      atp-export inspect build/demo
      atp-export eval build/demo --data easy-vqa --limit 500 --out build/eval-easy
      atp-export calibrate demo --data multi-object --out build/calib-demo --limit 200
      atp-export list
""")

ONNX_EPILOG = _fmt("""
    examples:
      atp-export onnx demo --out build/demo
      atp-export onnx demo-smollm2 --out build/demo-smollm2
      atp-export onnx ./llava-1.5-7b-hf --out build/llava --keep 144 --scorer cls
      atp-export onnx demo --out build/demo-ab --extra-scorers random         # A/B: pick the scorer per request
      atp-export onnx demo --out build/demo-auto --scorer atp --keep auto       # K per image, decided in the graph
      atp-export onnx ./my-llava --out build/my-llava --keep-ratio 0.25 --opset 21 --overwrite
      atp-export onnx demo-smollm2 --out build/smollm2-int4 --weights int4 --group-size 64 --kv-cache int8
      atp-export onnx demo-smollm2 --out build/smollm2-w44 --weights mixed --calibration build/calib-smollm2

    CHECKPOINT is a local Hugging Face folder (config.json, weights, processor and tokenizer
    files) of a registered architecture (see `atp-export list`), or a built-in: `demo` (the
    trained demo VLM) or `demo-smollm2` (real SmolLM2-135M + untrained vision tower). The keep count
    stored here is only the default: the vision graph takes K as a run-time input.
""")

RUN_EPILOG = _fmt("""
    examples:
      atp-export run build/demo --image assets/demo.png --prompt "What shapes do you see?"
      atp-export run build/demo --image assets/demo.png --prompt "Describe the image." --keep-ratio 0.25 --json
      atp-export run build/demo --image assets/demo.png --raw-prompt --prompt "<image> The colours are" --max-new-tokens 8
""")

EVAL_EPILOG = _fmt("""
    examples:
      atp-export eval build/demo --data easy-vqa --limit 500 --out build/eval-easy
      atp-export eval build/demo --data multi-object --keep-ratios 1 0.25 0.0625 --scorers cls random --out build/eval-mo
""")

BENCH_EPILOG = _fmt("""
    examples:
      atp-export bench build/demo --out build/bench-demo
      atp-export bench build/demo --keep-ratios 1 0.25 --repeats 3 --backend ort --out build/bench-quick
""")

CALIBRATE_EPILOG = _fmt("""
    examples:
      atp-export calibrate demo --data multi-object --out build/calib-demo --limit 200
      atp-export calibrate demo --data easy-vqa --out build/calib-easy --limit 100 --scorers atp qat --budgets 0.99 0.95
      atp-export onnx demo --out build/demo-cal --scorer atp --extra-scorers qat --calibration build/calib-demo
      atp-export calibrate demo-smollm2 --bits 4.4 --group-size 64 --out build/calib-smollm2   # mixed int4/int8 plan
""")

INSPECT_EPILOG = _fmt("""
    examples:
      atp-export inspect build/demo
      atp-export inspect build/demo --json
""")


def _keep_or_auto(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or 'auto', got {text!r}") from None


def _add_keep_args(p: argparse.ArgumentParser, what: str, allow_auto: bool = False) -> None:
    g = p.add_mutually_exclusive_group()
    if allow_auto:
        g.add_argument("--keep", type=_keep_or_auto, metavar="K|auto",
                       help=f"visual tokens to keep {what} (1..N), or auto: K per image in the graph from the score mass, "
                            "bounded by the calibration artifact's k_min/k_max (defaults without one; keep is then the "
                            "per-request upper bound)")
    else:
        g.add_argument("--keep", type=int, metavar="K", help=f"visual tokens to keep {what} (1..N)")
    g.add_argument("--keep-ratio", type=float, metavar="R", help=f"fraction of visual tokens to keep {what}, in (0, 1]")


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of ``atp-export``."""
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(prog="atp-export", description="Prune, quantize and export vision-language models for edge GPUs.",
                                epilog=MAIN_EPILOG, formatter_class=raw)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    o = sub.add_parser("onnx", help="export a checkpoint to an ONNX bundle", epilog=ONNX_EPILOG, formatter_class=raw,
                       description="Export a VLM to an ONNX bundle: vision graph with an in-graph top-K token gate, decoder graph with KV cache.")
    o.add_argument("checkpoint", metavar="CHECKPOINT", help="local Hugging Face model folder, or a built-in: demo, demo-smollm2")
    o.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory to write (atomically)")
    _add_keep_args(o, "by default", allow_auto=True)
    o.add_argument("--scorer", default="cls", metavar="NAME", help="token retention scorer (default: cls; `atp-export list` shows all)")
    o.add_argument("--extra-scorers", nargs="+", default=[], metavar="NAME",
                   help="also export vision graphs for these scorers (selectable per request, compared by eval)")
    o.add_argument("--calibration", metavar="ARTIFACT", default=None,
                   help="calibration artifact of this model (atp-export calibrate): blend weights of the scorers, "
                        "recommended keep ratio")
    o.add_argument("--budget", type=float, default=None, metavar="A",
                   help="accuracy budget of the calibration artifact (e.g. 0.95) for the default keep ratio and --keep auto "
                        "(default: the strictest it has)")
    o.add_argument("--clip-model", metavar="NAME", default=None,
                   help="open_clip model name (e.g. ViT-L-14-336): `atp` measures text relevance in CLIP space "
                        "(needs the clip extra); without it, in the language model's embedding space")
    o.add_argument("--clip-weights", metavar="FILE", default=None, help="local open_clip checkpoint for --clip-model")
    q = o.add_argument_group("quantization (decoder)")
    q.add_argument("--weights", default="fp32", choices=["fp32", "fp16", "int8", "int4", "mixed"],
                   help="decoder weight precision (default fp32); mixed = int8/int4 per output feature from --calibration")
    q.add_argument("--group-size", type=int, default=32, metavar="G", help="int4 group size along the input features (default 32)")
    q.add_argument("--asymmetric", action="store_true", help="int4 with zero points (default: symmetric)")
    q.add_argument("--kv-cache", default="float32", choices=["float32", "int8"], help="KV-cache precision (default float32)")
    q.add_argument("--quant-target", default="ort", choices=["ort", "qdq"],
                   help="ort: MatMulNBits (ONNX Runtime); qdq: standard DequantizeLinear (TensorRT)")
    o.add_argument("--opset", type=int, default=21, help="ONNX opset (default: 21)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    o.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch check after export")

    r = sub.add_parser("run", help="answer a question about an image with a bundle", epilog=RUN_EPILOG, formatter_class=raw,
                       description="Generate text from an image and a prompt (ONNX Runtime on CPU by default).")
    r.add_argument("bundle", metavar="BUNDLE")
    r.add_argument("--image", required=True, metavar="IMG", help="image file (PNG, JPEG, ...)")
    r.add_argument("--prompt", required=True, metavar="TEXT", help="question or instruction")
    _add_keep_args(r, "for this request")
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

    i = sub.add_parser("inspect", help="print a bundle's manifest (and verify its checksums)", epilog=INSPECT_EPILOG,
                       formatter_class=raw)
    i.add_argument("bundle", metavar="BUNDLE")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.add_argument("--no-verify", action="store_true", help="skip the sha256 check")

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

    c = sub.add_parser("calibrate", help="fit scorer blend weights and recommended keep ratios on calibration data",
                       epilog=CALIBRATE_EPILOG, formatter_class=raw,
                       description="Answer calibration questions with all visual tokens and with K kept by each scorer setting "
                       "(PyTorch); keep the blend weights that agree most with the dense answers and the smallest keep ratio "
                       "per accuracy budget. Writes an artifact directory (calibration.json + safetensors) for "
                       "`atp-export onnx --calibration`. Interrupted runs resume from ARTIFACT.partial/.")
    c.add_argument("checkpoint", metavar="CHECKPOINT", help="local Hugging Face model folder, or a built-in: demo, demo-smollm2")
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

    _add_engine_parser(sub, raw)

    sub.add_parser("list", help="list registered architectures, scorers and backends",
                   epilog="example:\n  atp-export list", formatter_class=raw)
    return p


def _quiet_transformers() -> None:
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - transformers missing is reported where it is needed
        pass


def cmd_onnx(args) -> int:
    from atp.config import ExportConfig, PruningConfig
    from atp.errors import require

    for module in ("torch", "transformers", "onnx"):
        require(module, "export")

    from atp.config import QuantConfig

    quant = QuantConfig(weights=args.weights, group_size=args.group_size, symmetric=not args.asymmetric, kv=args.kv_cache,
                        calibration=args.calibration if args.weights == "mixed" else None, target=args.quant_target)
    cfg = ExportConfig(opset=args.opset, quantization=quant, pruning=PruningConfig(scorer=args.scorer, keep=args.keep, keep_ratio=args.keep_ratio,
                                                               extra_scorers=tuple(args.extra_scorers)))
    from atp.registry import SCORERS

    for name in cfg.pruning.scorers:
        SCORERS.get(name)  # fail on a bad name before loading anything
    _quiet_transformers()
    from atp.export.exporter import export_bundle

    adapter = _load_adapter(args.checkpoint)
    params, calibration, autos = {}, None, None
    if args.calibration:
        params, calibration, cfg = _apply_calibration(args, adapter, cfg)
        if cfg.pruning.auto_keep:
            from atp.calibration.auto_keep_fit import auto_keep_from

            autos = auto_keep_from(args.calibration, cfg.pruning.scorers, budget=_budget_key(args))
    clip = _load_clip(args)
    if args.calibration:
        from atp.calibration.artifact import CalibrationArtifact
        from atp.calibration.calibrate import check_text_space

        check_text_space(CalibrationArtifact.load(args.calibration), cfg.pruning.scorers, clip)
    manifest = export_bundle(adapter, args.out, cfg, overwrite=args.overwrite, validate=not args.no_validate,
                             scorer_params=params, calibration=calibration, clip=clip, auto_keep=autos)
    total = sum(f["bytes"] for f in manifest["files"].values())
    print(f"wrote {args.out}: {manifest['pruning']['num_visual_tokens']} visual tokens (default keep "
          f"{manifest['pruning']['default_keep']}), {len(manifest['files'])} files, {total / 1e6:.1f} MB")
    return 0


def _load_clip(args):
    """The open_clip model of ``--clip-model``/``--clip-weights`` (None without them)."""
    if args.clip_model:
        from atp.export.clip import OpenClip

        return OpenClip.load(args.clip_model, args.clip_weights)
    if args.clip_weights:
        raise ConfigError("--clip-weights needs --clip-model (the open_clip architecture name)")
    return None


def _load_adapter(checkpoint: str):
    """A built-in (demo, demo-smollm2) or a local checkpoint folder, wrapped in its architecture adapter."""
    from atp.export.demo import BUILTINS

    if checkpoint in BUILTINS:
        return BUILTINS[checkpoint]()
    from atp.export.adapters import adapter_for_checkpoint

    return adapter_for_checkpoint(checkpoint).from_checkpoint(checkpoint)


def _budget_key(args, available=None) -> str | None:
    """``--budget`` as the artifact spells it (``0.95``), checked against ``available`` budgets when given."""
    if args.budget is None:
        return None
    key = f"{args.budget:g}"
    if available is not None and key not in available:
        from atp.errors import CalibrationError

        raise CalibrationError(f"the calibration artifact has no budget {key} (it has {', '.join(sorted(available))}); "
                               "calibrate with --budgets including it")
    return key


def _apply_calibration(args, adapter, cfg):
    """(scorer params, manifest record, config) from ``--calibration``; refuses another model's artifact."""
    from dataclasses import replace

    from atp.calibration.artifact import CalibrationArtifact, adapter_fingerprint
    from atp.calibration.calibrate import scorer_params_from

    fp = adapter_fingerprint(adapter)
    art = CalibrationArtifact.load(args.calibration)
    art.check_model(fp, what=f"{args.checkpoint}")
    params = {k: v for k, v in scorer_params_from(art).items() if k in cfg.pruning.scorers}
    retention = art.section("retention") or {}
    record = {"artifact": str(args.calibration), "fingerprint": fp, "created": art.meta.get("created"),
              "data": retention.get("data"), "n_samples": retention.get("n_samples"), "scorer_params": params,
              "recommended_keep": {name: v.get("recommended_keep") for name, v in (retention.get("scorers") or {}).items()
                                   if name in cfg.pruning.scorers}}
    rec = record["recommended_keep"].get(cfg.pruning.scorer) or {}
    if args.keep is None and args.keep_ratio is None and rec and not cfg.pruning.auto_keep:
        strictest = _budget_key(args, rec) or max(rec, key=float)
        ratio = rec[strictest]["keep_ratio"]
        log.info("default keep ratio %g from the calibration artifact (agreement >= %s for %s)", ratio, strictest, cfg.pruning.scorer)
        cfg = replace(cfg, pruning=replace(cfg.pruning, keep_ratio=ratio))
        record["default_keep_from"] = f"budget {strictest}"
    for name, p in params.items():
        log.info("scorer %s: calibrated parameters %s", name, p)
    return params, record, cfg


def cmd_calibrate(args) -> int:
    from atp.errors import require

    if args.data is None and args.bits is None:
        raise ConfigError("nothing to calibrate: give --data (token retention) and/or --bits (mixed-precision weights)")
    for module in ("torch", "transformers", "safetensors"):
        require(module, "export")
    if args.bits is not None:
        from atp.calibration.mixed_precision import check_bits

        check_bits(args.bits)  # fail before loading anything
    _quiet_transformers()
    adapter = _load_adapter(args.checkpoint)
    if args.data is not None:
        from atp.calibration.calibrate import RetentionCalibConfig, run_calibrate

        cfg = RetentionCalibConfig(data=args.data, limit=args.limit, scorers=tuple(args.scorers), keep_ratios=tuple(args.keep_ratios),
                                   budgets=tuple(args.budgets), max_new_tokens=args.max_new_tokens)
        art = run_calibrate(adapter, cfg, args.out, overwrite=args.overwrite, resume=not args.no_resume,
                            clip=_load_clip(args))
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


def cmd_run(args) -> int:
    from atp.runtime import Session

    session = Session(args.bundle, backend=args.backend, threads=args.threads)
    res = session.generate(args.image, args.prompt, keep=args.keep, keep_ratio=args.keep_ratio,
                           max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                           top_k=args.top_k, seed=args.seed, raw_prompt=args.raw_prompt,
                           scorer=args.scorer)
    if args.json:
        print(json.dumps({"text": res.text, "token_ids": res.token_ids, "kept": res.kept, "kept_index": res.kept_index,
                          "timings": {k: round(v, 3) for k, v in res.timings.items()}}))
        return 0
    t = res.timings
    print(res.text)
    print(f"-- kept {res.kept}/{session.num_visual_tokens} visual tokens; prompt {res.prompt_tokens} tokens, "
          f"generated {len(res.token_ids)}", file=sys.stderr)
    print(f"-- timings (ms): vision {t['vision']:.1f}, prefill {t['prefill']:.1f}, time to first token {t['ttft']:.1f}, "
          f"decode {t['decode_per_token']:.1f}/token, total {t['total']:.1f}", file=sys.stderr)
    return 0


def cmd_inspect(args) -> int:
    from atp.bundle import read_manifest

    m = read_manifest(args.bundle, verify=not args.no_verify)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    model, pr = m["model"], m["pruning"]
    print(f"bundle      {args.bundle} (format {m['format_version']}, atp {m.get('atp_version')})")
    print(f"source      {m['source']['checkpoint']} [{m['source']['architecture']}]")
    print(f"model       {model['text_model_type']} {model['num_layers']} layers x {model['hidden_size']}, "
          f"vocab {model['vocab_size']}; vision {model['vision_model_type']}, {model['num_visual_tokens']} visual tokens")
    if m.get("precision"):
        from atp.bundle import precision_label

        print(f"precision   {precision_label(m)} (decoder weights, KV cache); vision fp32")
    print(f"pruning     scorer {pr['scorer']}, default keep {pr['default_keep']}/{pr['num_visual_tokens']} (K is a run-time input)")
    for graph, a in (pr.get("auto_keep") or {}).items():
        print(f"            {graph}: K per image (--keep auto): {a['fraction']:g} of the score mass, K in [{a['k_min']}, "
              f"{a['k_max']}] ({a['source']})")
    for name, g in m["graphs"].items():
        def sig(vs):
            return ", ".join(f"{v['name']}{v['shape']}" for v in vs[:4]) + (f", ... ({len(vs)} in all)" if len(vs) > 4 else "")
        print(f"graph       {name}: {g['file']}\n              in:  {sig(g['inputs'])}\n              out: {sig(g['outputs'])}")
    print(f"prompt      {json.dumps(m['prompt']['template'])}")
    print(f"files       {len(m['files'])}, {sum(f['bytes'] for f in m['files'].values()) / 1e6:.1f} MB, "
          f"{'sha256 verified' if not args.no_verify else 'not verified'}")
    return 0


def cmd_eval(args) -> int:
    from atp.runtime.evaluate import run_eval

    report = run_eval(args.bundle, args.data, args.out, split=args.split, keep_ratios=args.keep_ratios, scorers=args.scorers,
                      limit=args.limit, backend=args.backend, max_new_tokens=args.max_new_tokens)
    from atp.runtime.evaluate import markdown_table

    print(markdown_table(report["results"], f"{args.bundle} on {args.data} ({args.split})"))
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


ENGINE_EPILOG = _fmt("""
    examples:
      atp-export engine build/demo --target desktop                 # sm_86 + sm_89, TensorRT-RTX ahead of time
      atp-export engine build/demo --target ada --max-sequence 512 --max-context 1024
      atp-export engine build/demo --target orin --fp16 --plugins build/plugins/libatp_plugins.so   # on the Jetson

    Targets: orin (sm_87), ampere (sm_86), ada (sm_89), hopper (sm_90), blackwell (sm_120),
    desktop (sm_86 + sm_89). Every engine's profile covers the kept-token count K from 1 to N.
    Full TensorRT builds for the GPU it runs on; TensorRT-RTX builds ahead of time without a GPU
    for sm_75/80/86/89/120/121 (not Orin's sm_87 or Hopper's sm_90).
""")


def _add_engine_parser(sub, raw) -> None:
    g = sub.add_parser("engine", help="build TensorRT engines for a bundle", epilog=ENGINE_EPILOG, formatter_class=raw,
                       description="Build one TensorRT engine per graph of a bundle, with optimization profiles from its "
                       "manifest, into BUNDLE/engines/<target>/ (manifest updated).")
    g.add_argument("bundle", metavar="BUNDLE")
    g.add_argument("--target", required=True, metavar="NAME", help="orin, ampere, ada, hopper, blackwell or desktop")
    g.add_argument("--fp16", action="store_true", help="allow fp16 kernels (full TensorRT; TensorRT-RTX is strongly typed)")
    g.add_argument("--int8", action="store_true", help="allow int8 kernels (full TensorRT)")
    g.add_argument("--plugins", metavar="PATH", help="libatp_plugins.so, for graphs with atp plugin nodes")
    g.add_argument("--workspace", type=int, default=1024, metavar="MB", help="workspace memory limit (default: 1024)")
    g.add_argument("--max-batch", type=int, default=1, metavar="B", help="largest batch in the profiles (default: 1)")
    g.add_argument("--max-sequence", type=int, default=1024, metavar="T", help="largest prefill length (default: 1024)")
    g.add_argument("--max-context", type=int, default=2048, metavar="T", help="largest KV-cache length (default: 2048)")
    g.add_argument("--graphs", nargs="+", default=None, metavar="KEY", help="graphs to build (default: all)")
    g.add_argument("--timing-cache", metavar="PATH", help="timing cache file (full TensorRT; default under ~/.cache/atp)")


def cmd_engine(args) -> int:
    from atp.export.engine import EngineConfig, build_bundle_engines

    cfg = EngineConfig(target=args.target, fp16=args.fp16, int8=args.int8, workspace_mb=args.workspace,
                       max_batch=args.max_batch, max_sequence=args.max_sequence, max_context=args.max_context,
                       graphs=tuple(args.graphs) if args.graphs else None, plugins=args.plugins,
                       timing_cache=args.timing_cache)
    entry = build_bundle_engines(args.bundle, cfg)
    for g in entry["graphs"].values():
        print(f"{g['file']}: {', '.join(p['name'] for p in g['profiles'])}")
    print(f"built {len(entry['graphs'])} engine(s) with {entry['builder']} {entry['tensorrt_version']} for "
          f"{args.target} ({', '.join(entry['compute_capabilities'])})", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    from atp.registry import ARCHITECTURES, BACKENDS, SCORERS

    for reg in (ARCHITECTURES, SCORERS, BACKENDS):
        print(f"{reg.kind}s: {', '.join(reg.names())}")
    return 0


COMMANDS = {"onnx": cmd_onnx, "calibrate": cmd_calibrate, "run": cmd_run, "inspect": cmd_inspect, "eval": cmd_eval,
            "bench": cmd_bench, "engine": cmd_engine, "list": cmd_list}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``atp-export``; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    if not args.verbose:
        for noisy in ("httpx", "urllib3", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except AtpError as exc:
        if args.verbose:
            log.exception("failed")
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
