"""``atp-export onnx``: export a checkpoint to an ONNX bundle (optionally with a calibration artifact)."""

from __future__ import annotations

import logging

from atp.cli._common import add_keep_args, fmt, load_adapter, load_clip, quiet_transformers

log = logging.getLogger("atp")

ONNX_EPILOG = fmt("""
    examples:
      atp-export onnx demo --out build/demo --preset cpu                       # int4 decoder + int8 vision: fastest on CPUs
      atp-export onnx demo-smollm2 --out build/demo-smollm2
      atp-export onnx ./llava-1.5-7b-hf --out build/llava --keep 144 --scorer cls
      atp-export onnx demo --out build/demo-ab --extra-scorers random         # A/B: pick the scorer per request
      atp-export onnx demo --out build/demo-auto --scorer atp --keep auto       # K per image, decided in the graph
      atp-export onnx ./my-llava --out build/my-llava --keep-ratio 0.25 --opset 21 --overwrite
      atp-export onnx demo-smollm2 --out build/smollm2-int4 --weights int4 --group-size 64 --kv-cache int8
      atp-export onnx demo-smollm2 --out build/smollm2-w44 --weights mixed --calibration build/calib-smollm2

    CHECKPOINT is a local Hugging Face folder (config.json, weights, processor and tokenizer
    files) of a registered architecture (see `atp-export list`), or a built-in: `demo` (the
    trained demo VLM), `demo-smollm2` (real SmolLM2-135M + untrained vision tower, 256 visual tokens)
    or `demo-smollm2-576` (the same at LLaVA-1.5's 336 px: 576 visual tokens). The keep count
    stored here is only the default: the vision graph takes K as a run-time input.
""")


QUANT_DEFAULTS = {"weights": "fp32", "group_size": 32, "decoder_graph": "traced", "vision_weights": "fp32",
                  "prefill_weights": "same"}
# measured: bench/results/preset_cpu.md (demo VQA paired against fp32, speed on the LLaVA-1.5-shaped model)
# not the int8 prefill graph: per-tensor activations cost SmolLM2 +79% perplexity (bench/results/quant_ppl_smollm2_w8a8.md)
PRESETS = {"cpu": {"weights": "int4", "group_size": 32, "decoder_graph": "fused", "vision_weights": "int8"}}


def add_onnx_parser(sub, raw) -> None:
    o = sub.add_parser("onnx", help="export a checkpoint to an ONNX bundle", epilog=ONNX_EPILOG, formatter_class=raw,
                       description="Export a VLM to an ONNX bundle: vision graph with an in-graph top-K token gate, decoder graph with KV cache.")
    o.add_argument("checkpoint", metavar="CHECKPOINT", help="local Hugging Face model folder, or a built-in: demo, demo-smollm2, demo-smollm2-576")
    o.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory to write (atomically)")
    add_keep_args(o, "by default", allow_auto=True)
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
    q.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="cpu: the fastest CPU configuration that keeps the demo's accuracy: int4 g32 fused decoder (atp's "
                        "CPU kernels at decode), W8A8 vision graph; flags given explicitly win")
    q.add_argument("--weights", default=None, choices=["fp32", "fp16", "int8", "int4", "mixed"],
                   help="decoder weight precision (default fp32); mixed = int8/int4 per output feature from --calibration")
    q.add_argument("--group-size", type=int, default=None, metavar="G", help="int4 group size along the input features (default 32)")
    q.add_argument("--asymmetric", action="store_true", help="int4 with zero points (default: symmetric)")
    q.add_argument("--kv-cache", default="float32", choices=["float32", "int8"], help="KV-cache precision (default float32)")
    q.add_argument("--quant-target", default="ort", choices=["ort", "qdq"],
                   help="ort: MatMulNBits (ONNX Runtime); qdq: standard DequantizeLinear (TensorRT)")
    q.add_argument("--decoder-graph", default=None, choices=["traced", "fused"],
                   help="fused: ONNX Runtime GroupQueryAttention/SkipSimplifiedLayerNorm graph, fast decode on ORT CPU "
                        "(ort target, float32 KV)")
    q.add_argument("--prefill-weights", default=None, choices=["same", "int8"],
                   help="int8 (experimental): a second decoder graph for the prompt, W8A8 with per-tensor activations "
                        "(DynamicQuantizeMatMul); SmolLM2 perplexity +79%%: not accurate for LLMs yet; decode steps keep "
                        "--weights (default same: one graph for both)")
    q.add_argument("--vision-weights", default=None, choices=["fp32", "int8", "int8-blocks"],
                   help="int8: vision tower + projector as W8A8 (int8 weights, uint8 activations per tensor: ONNX "
                        "Runtime's DynamicQuantizeMatMul, ~2x fp32 on CPUs); int8-blocks: MatMulNBits bits=8 (smaller "
                        "activations error, not faster); gate scores stay fp32")
    o.add_argument("--opset", type=int, default=21, help="ONNX opset (default: 21)")
    o.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    o.add_argument("--no-validate", action="store_true", help="skip the ONNX Runtime vs PyTorch check after export")


def resolve_preset(args) -> None:
    """Fill the quantization flags left unset from ``--preset`` (if any), then from the plain defaults."""
    for key, value in {**QUANT_DEFAULTS, **PRESETS.get(args.preset or "", {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def cmd_onnx(args) -> int:
    from atp.config import ExportConfig, PruningConfig
    from atp.errors import require

    for module in ("torch", "transformers", "onnx"):
        require(module, "export")
    resolve_preset(args)

    from atp.config import QuantConfig

    quant = QuantConfig(weights=args.weights, group_size=args.group_size, symmetric=not args.asymmetric, kv=args.kv_cache,
                        calibration=args.calibration if args.weights == "mixed" else None, target=args.quant_target,
                        decoder_graph=args.decoder_graph, vision=args.vision_weights, prefill=args.prefill_weights)
    cfg = ExportConfig(opset=args.opset, quantization=quant, pruning=PruningConfig(scorer=args.scorer, keep=args.keep, keep_ratio=args.keep_ratio,
                                                               extra_scorers=tuple(args.extra_scorers)))
    from atp.registry import SCORERS

    for name in cfg.pruning.scorers:
        SCORERS.get(name)  # fail on a bad name before loading anything
    quiet_transformers()
    from atp.export.exporter import export_bundle

    adapter = load_adapter(args.checkpoint)
    params, calibration, autos = {}, None, None
    if args.calibration:
        params, calibration, cfg = _apply_calibration(args, adapter, cfg)
        if cfg.pruning.auto_keep:
            from atp.calibration.auto_keep_fit import auto_keep_from

            autos = auto_keep_from(args.calibration, cfg.pruning.scorers, budget=_budget_key(args))
    clip = load_clip(args)
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
