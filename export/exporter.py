"""Checkpoint -> bundle: the graphs, the embedding table, tokenizer, manifest.

The bundle is staged in a temporary directory and renamed into place only when
every step (including the ORT-vs-PyTorch validation) succeeded.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

import numpy as np
import onnx
import torch
import transformers

import atp
from atp.bundle import finalize_manifest, staged_bundle
from atp.config import ExportConfig, resolve_keep
from atp.errors import AtpError, ConfigError
from atp.export.onnx_utils import describe_io, export_module, external_files
from atp.export.towers.base import SALIENCY_KINDS
from atp.registry import SCORERS

log = logging.getLogger(__name__)

DECODER_FILE = "decoder.onnx"
PREFILL_LOGITS_RTOL = 0.02  # int8 prefill vs its fake-quant reference: ORT's activation codes may round one step off
QUANT_VISION_MIN_OVERLAP = 0.75  # int8 vision graphs vs their fake-quant reference, mean over the example batch
EMBED_FILE = "embed_tokens.npy"
TOKENIZER_DIR = "tokenizer"


def _vision_example(adapter, scorer=None, batch: int = 2, clip=None, keep: int | None = None):
    g = torch.Generator().manual_seed(1)
    vin = adapter.vision_inputs(batch)
    batch = vin.images
    keep = torch.tensor(keep or max(1, (vin.tokens or adapter.num_visual_tokens) // 2), dtype=torch.int64)
    d = adapter.model_info()["hidden_size"]
    out = [*vin.example, keep]
    if scorer is not None and scorer.needs_text:
        clip_space = scorer.text_space == "clip"
        out.append(torch.randn(batch, clip.embed_dim if clip_space else d, generator=g) * (1.0 if clip_space else 0.02))
    if scorer is not None and scorer.needs_prompt:  # sizes >= 2 so the exporter keeps them dynamic
        out += [torch.randn(batch, 3, d, generator=g) * 0.02, torch.randn(batch, 4, d, generator=g) * 0.02]
    return tuple(out)


def _decoder_example(adapter, batch: int = 2, seq: int = 3, past: int = 2, kv_dtype: str = "float32"):
    from atp.calibration.kv import quantize_kv_torch

    info = adapter.model_info()
    g = torch.Generator().manual_seed(0)
    embeds = torch.randn(batch, seq, info["hidden_size"], generator=g) * 0.02
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq, dtype=torch.int64).expand(batch, -1).contiguous()
    if adapter.positions().axes == 3:  # M-RoPE: [3, B, S], the axes apart so the graph cannot fold them
        pos = torch.stack([pos, pos + 1, pos + 2])
    extra = []
    if info.get("deepstack_levels"):  # DeepStack: [L, B, S, D] added after the first L decoder layers
        extra = [torch.randn(info["deepstack_levels"], batch, seq, info["hidden_size"], generator=g) * 0.02]
    kv = [torch.randn(batch, info["num_kv_heads"], past, info["head_dim"], generator=g) for _ in range(2 * info["num_layers"])]
    if kv_dtype == "int8":
        kv = [t for x in kv for t in quantize_kv_torch(x)]
    return (embeds, mask, pos, *extra, *kv)


def decoder_input_names(adapter, past: list[str]) -> list[str]:
    """A decoder graph's input names, in order (``deepstack_embeds`` for DeepStack language models)."""
    extra = ["deepstack_embeds"] if adapter.model_info().get("deepstack_levels") else []
    return ["inputs_embeds", "attention_mask", "position_ids", *extra, *past]


def kv_names(num_layers: int, kv_dtype: str = "float32") -> tuple[list[str], list[str]]:
    """(past input names, present output names) in genai order: key, value per layer (int8: key,
    key_scale, value, value_scale)."""
    parts = ("key", "key_scale", "value", "value_scale") if kv_dtype == "int8" else ("key", "value")
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in parts]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in parts]
    return past, present


def vision_graph_key(scorer: str, default: str) -> str:
    """Manifest key of a scorer's vision graph: ``vision`` for the default, ``vision.<name>`` otherwise."""
    return "vision" if scorer == default else f"vision.{scorer}"


def _export_vision(adapter, scorer, staging: Path, cfg: ExportConfig, file: str, clip=None, auto=None) -> dict:
    if scorer.text_space == "clip":
        from atp.export.clip import no_mha_fastpath

        with no_mha_fastpath():
            return _export_vision_graph(adapter, scorer, staging, cfg, file, clip, auto)
    return _export_vision_graph(adapter, scorer, staging, cfg, file, clip, auto)


def _export_vision_graph(adapter, scorer, staging: Path, cfg: ExportConfig, file: str, clip=None, auto=None) -> dict:
    module = adapter.vision_module(scorer, clip=clip, auto_keep=auto)
    merging = scorer.merges_tokens
    needs_prompt = scorer.needs_prompt
    vin = adapter.vision_inputs()
    inputs = [*vin.names, "keep"] + (["text_embeds"] if scorer.needs_text else []) + \
        (["prompt_prefix", "prompt_suffix"] if needs_prompt else [])
    io = export_module(
        module,
        _vision_example(adapter, scorer, clip=clip, keep=auto.k_max if auto is not None else None),
        staging / file,
        input_names=inputs,
        output_names=["image_embeds", "kept_index"] + (["kept_count"] if auto is not None else []) +
                     (["deepstack_embeds"] if getattr(module, "deepstack_levels", 0) else []),
        dynamic_axes={**vin.dynamic_axes, "text_embeds": {0: "batch"}, "image_embeds": {0: "batch", 1: "keep"},
                      "deepstack_embeds": {1: "batch", 2: "keep"},
                      "prompt_prefix": {0: "batch", 1: "prefix_length"}, "prompt_suffix": {0: "batch", 1: "suffix_length"},
                      "kept_index": {0: "batch", 1: "dominant" if merging else "keep"}, "kept_count": {0: "batch"}},
        opset=cfg.opset,
        external_data_threshold=cfg.external_data_threshold,
        fixed_output_dims={"image_embeds": {2: int(adapter.model_info()["hidden_size"])},  # the padding mask hides it
                           "deepstack_embeds": {0: int(getattr(module, "deepstack_levels", 0)), 3: int(adapter.model_info()["hidden_size"])}},
    )
    graph = {"file": file, **describe_io(io), "keep_input": "keep", "kept_index_order": "ascending",
             "tower": {"type": type(module.tower).__name__, "saliency": module.saliency_kind,
                       "saliency_definition": SALIENCY_KINDS[module.saliency_kind]},
             "gate_position": module.gate_position}
    if getattr(module, "deepstack_levels", 0):
        graph["deepstack"] = {"levels": module.deepstack_levels, "output": "deepstack_embeds [L, 1, K, D]",
                              "rule": "level l's features of the same kept tokens; the decoder adds level l after its "
                                      "layer l at the kept tokens' places (decoder input deepstack_embeds [L, B, S, D])"}
    if auto is not None:
        graph["keep_input"] = "keep (upper bound on K for the request; the runtime passes k_max unless told otherwise)"
        graph["auto_keep"] = {**auto.to_dict(), "output": "kept_count",
                              "padding": "rows padded to the batch's largest K: kept_index -1, image_embeds zero rows; "
                                         "row b's tokens are its first kept_count[b]",
                              "tensorrt_plugin": "not rewritten (the TopKGate plugin covers the fixed-K gate); standard ops"}
    if scorer.needs_text and scorer.text_space == "clip":
        graph["text_embeds"] = {"space": "clip", "text_graph": "text", "clip_model": clip.name,
                                "definition": "L2-normalised CLIP text embedding of the prompt (text graph, clip tokenizer)",
                                "image_side": "separate open_clip image tower on the same pixels; patch tokens ln_post @ proj, "
                                              "resampled to the VLM patch grid",
                                "cost": "one extra open_clip image tower pass per image; one text graph run per prompt"}
    elif scorer.needs_text:
        graph["text_embeds"] = {"space": "lm",
                                "definition": "mean of the prompt's token embeddings (no special tokens, no template)"}
    if needs_prompt:
        graph["prompt_sequence"] = {"inputs": ["prompt_prefix", "prompt_suffix"],
                                    "definition": "token embeddings of the templated prompt before / after the image placeholder",
                                    "cost": scorer.cost(adapter.model_info()["num_layers"])}
    if hasattr(scorer, "contextual_tokens"):
        graph["contextual_tokens"] = scorer.contextual_tokens
    if merging:
        graph["contextual_merge"] = {
            "changes_outputs": True,
            "rows": "image_embeds = K - c dominant tokens (original, ascending) then c contextual tokens (c from "
                    "contextual_tokens, at most K - 1); kept_index lists the K - c dominant tokens only",
            "merge": "rest = tokens not dominant, ascending; step = max(1, |rest| // c); targets = rest[0::step][:c]; every "
                     "other rest token joins the target with the highest key cosine (feature layer keys, mean over heads); "
                     "contextual token = mean of its target and the tokens that joined it (VisionZip)",
            "note": "merged tokens are not original tokens: outputs differ from any token subset"}
    return graph


def decoder_axes(past: list[str], present: list[str], position_axes: int = 1) -> dict:
    """Dynamic axes of a decoder graph (the decoder and the int8 prefill graph share them); ``position_axes``: rows
    of ``position_ids`` (3: M-RoPE ``[3, B, S]``)."""
    pos = {0: "batch", 1: "sequence"} if position_axes == 1 else {1: "batch", 2: "sequence"}
    axes = {"inputs_embeds": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
            "position_ids": pos, "deepstack_embeds": {1: "batch", 2: "sequence"}, "logits": {0: "batch"}}
    axes.update({n: {0: "batch", 2: "past_sequence"} for n in past})
    axes.update({n: {0: "batch", 2: "total_sequence"} for n in present})
    return axes


def _export_decoder(adapter, staging: Path, cfg: ExportConfig, module=None, plan=None) -> dict:
    n_layers = adapter.model_info()["num_layers"]
    q = cfg.quantization
    past, present = kv_names(n_layers, q.kv)
    axes = decoder_axes(past, present, adapter.positions().axes)
    if q.decoder_graph == "fused":
        from atp.export.decoder_graph import save_fused_decoder

        io = save_fused_decoder(module if module is not None else adapter.decoder_module(kv_dtype=q.kv), staging / DECODER_FILE,
                                cfg.opset, cfg.external_data_threshold)
    else:
        io = export_module(
            module if module is not None else adapter.decoder_module(kv_dtype=q.kv),
            _decoder_example(adapter, kv_dtype=q.kv),
            staging / DECODER_FILE,
            input_names=decoder_input_names(adapter, past),
            output_names=["logits", *present],
            dynamic_axes=axes,
            opset=cfg.opset,
            external_data_threshold=cfg.external_data_threshold,
            fixed_output_dims={"logits": {1: 1}},
        )
    weights = {"precision": q.weights}
    if q.weights != "fp32":
        from atp.export.quantize import layer_weights_of, rewrite_file

        layer_weights = layer_weights_of(module) if module is not None else None
        weights.update(rewrite_file(staging / DECODER_FILE, plan, q.weights, q.target, layer_weights))
        io = onnx.load(str(staging / DECODER_FILE), load_external_data=False)
    return {
        "file": DECODER_FILE,
        "external_data": external_files(staging / DECODER_FILE),
        **describe_io(io),
        "mode": "prefill+decode",
        "graph": q.decoder_graph,
        "logits": "last_position",
        "kv_layout": "[batch, kv_heads, sequence, head_dim]",
        "kv_dtype": q.kv,
        "kv_quantization": ({"scheme": "symmetric int8 per (batch, head, token) over head_dim, scale = max|x| / 127",
                             "scale_inputs": "past_key_values.{i}.key_scale / value_scale [batch, kv_heads, sequence, 1] float32"}
                            if q.kv == "int8" else None),
        "weights": weights,
    }


def _export_text(clip, staging: Path, cfg: ExportConfig) -> dict:
    """The CLIP text encoder graph (run once per prompt) and its tokenizer."""
    from atp.export.clip import CLIP_TOKENIZER_DIR, TEXT_GRAPH_FILE, no_mha_fastpath

    ids = torch.zeros(2, clip.context_length, dtype=torch.int64)
    ids[:, 0], ids[:, 1], ids[:, 2] = clip.tokenizer.encoder["<start_of_text>"], 320, clip.tokenizer.encoder["<end_of_text>"]
    with no_mha_fastpath():
        io = _export_text_graph(clip, ids, staging, cfg)
    tok = clip.save_tokenizer(staging / CLIP_TOKENIZER_DIR)
    return {"file": TEXT_GRAPH_FILE, **describe_io(io), "space": "clip", "clip_model": clip.name, "tokenizer": tok,
            "output": "L2-normalised"}


def _export_text_graph(clip, ids, staging: Path, cfg: ExportConfig):
    from atp.export.clip import TEXT_GRAPH_FILE, ClipTextEncoder

    return export_module(ClipTextEncoder(clip.model).eval(), (ids,), staging / TEXT_GRAPH_FILE, input_names=["input_ids"],
                       output_names=["text_embeds"], dynamic_axes={"input_ids": {0: "batch"}, "text_embeds": {0: "batch"}},
                         opset=cfg.opset, external_data_threshold=cfg.external_data_threshold)


def _validate(adapter, scorers: dict, graphs: dict, staging: Path, clip=None, decoder_ref=None,
              kv_dtype: str = "float32", auto_keep: dict | None = None, vision_refs: dict | None = None) -> dict:
    """Run every graph in ONNX Runtime on example inputs and compare with PyTorch."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    report = {}
    for key, scorer in scorers.items():
        auto = (auto_keep or {}).get(key)
        example = _vision_example(adapter, scorer, clip=clip, keep=auto.k_max if auto is not None else None)
        with torch.no_grad():
            vm = (vision_refs or {}).get(key)  # int8 vision: the fake-quant reference
            ref = (vm if vm is not None else adapter.vision_module(scorer, clip=clip, auto_keep=auto))(*example)
        ref_embeds, ref_idx = ref[0], ref[1]
        sess = ort.InferenceSession(str(staging / graphs[key]["file"]), so, providers=["CPUExecutionProvider"])
        names = [i["name"] for i in graphs[key]["inputs"]]
        got = sess.run(None, dict(zip(names, (a.numpy() for a in example))))
        embeds, idx = got[0], got[1]
        same = idx.shape == tuple(ref_idx.shape) and all(set(a) == set(b) for a, b in zip(idx.tolist(), ref_idx.tolist()))
        report[key] = {"max_abs_diff": float(np.abs(embeds - ref_embeds.numpy()).max()) if same else None, "same_kept_index": same}
        if same and "deepstack_embeds" in [o["name"] for o in graphs[key]["outputs"]]:
            diff = float(np.abs(got[-1] - ref[-1].numpy()).max())
            report[key]["deepstack_max_abs_diff"] = diff
            if diff > 1e-3:
                raise AtpError(f"validation failed: the DeepStack outputs of {key} differ from PyTorch ({report[key]})")
        if vm is not None and not same and idx.shape == tuple(ref_idx.shape):
            # int8 graphs: ORT rounds a few activation codes one step off the fake-quant reference (its own float
            # order), which can swap near-tied tokens; most of the kept set must still agree
            overlap = float(np.mean([len(set(a) & set(b)) / max(1, len(b)) for a, b in zip(idx.tolist(), ref_idx.tolist())]))
            report[key]["kept_index_overlap"] = overlap
            same = overlap >= QUANT_VISION_MIN_OVERLAP
        if auto is not None:
            report[key]["kept_count"] = got[2].tolist()
            same = same and got[2].tolist() == ref[2].tolist()
            report[key]["same_kept_count"] = same
        if not same:
            raise AtpError(f"validation failed: ONNX Runtime kept other tokens than PyTorch in {key} ({report[key]})")
    if "text" in graphs:
        from atp.export.clip import ClipTextEncoder

        tok = clip.hf_tokenizer()
        rows = [tok.encode(p).ids for p in ("what color is the shape?", "is there a red circle")]
        ids = torch.tensor([r + [0] * (clip.context_length - len(r)) for r in rows], dtype=torch.int64)
        with torch.no_grad():
            ref_t = ClipTextEncoder(clip.model)(ids).numpy()
        got = ort.InferenceSession(str(staging / graphs["text"]["file"]), so, providers=["CPUExecutionProvider"]).run(
            None, {"input_ids": ids.numpy()})[0]
        report["text"] = {"max_abs_diff": float(np.abs(got - ref_t).max())}
        if report["text"]["max_abs_diff"] > 1e-3:
            raise AtpError(f"validation failed: the CLIP text graph differs from PyTorch ({report['text']})")
    # GroupQueryAttention (fused graph) takes a multi-token step over a past cache at batch 1 only
    args = _decoder_example(adapter, batch=1 if graphs["decoder"].get("graph") == "fused" else 2, kv_dtype=kv_dtype)
    with torch.no_grad():
        ref = (decoder_ref if decoder_ref is not None else adapter.decoder_module(kv_dtype=kv_dtype))(*args)
    sess = ort.InferenceSession(str(staging / DECODER_FILE), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    outs = sess.run(None, dict(zip(names, (a.numpy() for a in args))))
    report["decoder"] = {
        "reference": "PyTorch fake-quant (weights quantize-dequantized)" if decoder_ref is not None else "PyTorch",
        "logits_max_abs_diff": float(np.abs(outs[0] - ref[0].numpy()).max()),
        "logits_scale": float(np.abs(ref[0].numpy()).max()),
        "present_max_abs_diff": float(max(np.abs(o.astype(np.float32) - r.float().numpy()).max() for o, r in zip(outs[1:], ref[1:]))),
    }
    return report


def _weights_label(q, plan) -> str:
    if q.weights == "mixed":
        return f"mixed-{plan.average_bits():.2f}b-g{plan.group_size}{'' if plan.symmetric else '-asym'}"
    if q.weights == "int4":
        return f"int4-g{q.group_size}{'' if q.symmetric else '-asym'}"
    return q.weights


def export_bundle(adapter, out: str | Path, config: ExportConfig | None = None, overwrite: bool = False,
                  validate: bool = True, scorer_params: dict[str, dict] | None = None, calibration: dict | None = None,
                  clip=None, auto_keep: dict | None = None) -> dict:
    """Export ``adapter``'s model into a bundle directory at ``out``.

    Args:
        adapter: A loaded architecture adapter (e.g. ``LlavaAdapter.from_checkpoint(path)``).
        out: Bundle directory to create.
        config: Opset and default pruning.
        overwrite: Replace an existing bundle at ``out``.
        validate: Compare ONNX Runtime with PyTorch on example inputs and record the differences.
        scorer_params: ``scorer -> constructor kwargs`` (blend weights from a calibration artifact).
        calibration: What to record about the calibration artifact in the manifest (``pruning.calibration``).
        clip: A user-supplied open_clip model (:class:`atp.export.clip.OpenClip`): scorers that support it
            (``atp``) measure text relevance in CLIP space and the bundle gets the ``text`` graph; without it
            they fall back to the LM embedding space. The manifest records the space per graph.
        auto_keep: ``scorer -> AutoKeep`` (:mod:`atp.calibration.auto_keep`, e.g. from a calibration artifact) for
            ``keep="auto"``; scorers missing here get :meth:`AutoKeep.defaults` (the manifest says which).

    Returns:
        The written manifest.
    """
    config = config or ExportConfig()
    n = adapter.num_visual_tokens
    default = config.pruning.scorer
    autos = None
    if config.pruning.auto_keep:
        from atp.calibration.auto_keep import AutoKeep

        autos = {}
        for name in config.pruning.scorers:
            cls = SCORERS.get(name)
            if not cls.auto_keep_supported:
                why = ("merges tokens (its K is dominant + contextual tokens)" if cls.merges_tokens
                       else "returns a pick order, not a score distribution")
                raise ConfigError(f"scorer {name!r} {why}: it cannot pick K per image (--keep auto); use cls, atp, qat, "
                                  "visionzip, fastv or random, or a fixed --keep")
            auto = (auto_keep or {}).get(name) or AutoKeep.defaults(n)
            auto.check(n)
            autos[vision_graph_key(name, default)] = auto
        default_keep = autos[vision_graph_key(default, default)].k_max
    else:
        default_keep = resolve_keep(n, config.pruning.keep, config.pruning.keep_ratio)
    scorer_params = scorer_params or {}
    params = {name: dict(scorer_params.get(name, {})) for name in config.pruning.scorers}
    if clip is not None:
        for name in config.pruning.scorers:
            if SCORERS.get(name).supports_clip:
                params[name]["text_space"] = "clip"
    try:
        scorers = {vision_graph_key(name, default): SCORERS.get(name)(**params[name]).eval() for name in config.pruning.scorers}
    except (TypeError, ValueError) as exc:
        raise AtpError(f"bad scorer parameters {params}: {exc}") from None
    steps = ["vision graph(s)", "decoder graph", "embeddings + tokenizer", "validation" if validate else None]
    steps = [s for s in steps if s]

    def step(i, what):
        log.info("[%d/%d] %s", i, len(steps), what)

    module, reference, plan = None, None, None
    q = config.quantization
    if q.weights in ("int8", "int4", "mixed"):
        from atp.export.quantize import prepare_quantized_decoder

        module, reference, plan = prepare_quantized_decoder(adapter, q, reference=False)  # the reference comes later
    with staged_bundle(Path(out), overwrite=overwrite) as staging:
        step(1, f"exporting the vision graph ({n} visual tokens, scorers {', '.join(config.pruning.scorers)}, opset {config.opset})")
        graphs = {key: _export_vision(adapter, scorer, staging, config, file=f"{key}.onnx", clip=clip,
                                      auto=(autos or {}).get(key)) for key, scorer in scorers.items()}
        vision_refs = {}
        if q.vision != "fp32":
            from atp.export.quantize_vision import fake_quant_vision, rewrite_vision_file

            for key, scorer in scorers.items():
                vm = adapter.vision_module(scorer, clip=clip, auto_keep=(autos or {}).get(key))
                graphs[key]["weights"] = rewrite_vision_file(staging / graphs[key]["file"], vm, q.vision)
                vision_refs[key] = fake_quant_vision(vm, graphs[key]["weights"]["quantized"], q.vision)
        if clip is not None:
            graphs["text"] = _export_text(clip, staging, config)
        step(2, "exporting the decoder graph (prefill + decode, KV cache)")
        decoder = _export_decoder(adapter, staging, config, module, plan)
        if module is not None:  # the exported copy becomes the fake-quant reference: no second copy of the LM
            from atp.export.quantize import into_reference

            reference, module = (into_reference(module, plan, q) if validate else None), None
        prefill_ref = None
        if q.prefill == "int8":
            from atp.export.prefill import PREFILL_KEY, export_prefill

            graphs[PREFILL_KEY], prefill_ref = export_prefill(adapter, staging, config)
        step(3, "writing the embedding table and tokenizer")
        table = adapter.embedding_table()
        np.save(staging / EMBED_FILE, table)
        for name, arr in adapter.extra_arrays().items():
            np.save(staging / f"{name}.npy", np.ascontiguousarray(arr, dtype=np.float32))
        (staging / TOKENIZER_DIR).mkdir()
        adapter.save_tokenizer(staging / TOKENIZER_DIR)
        manifest = {
            "atp_version": atp.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": {"checkpoint": adapter.source, "architecture": adapter.name},
            "model": adapter.model_info(),
            "graphs": {**graphs, "decoder": decoder},
            "embeddings": {"file": EMBED_FILE, "dtype": str(table.dtype), "shape": list(table.shape)},
            "limits": {"max_sequence": int(getattr(adapter.text_config, "max_position_embeddings", 0) or 0),
                       "rule": "prompt (visual tokens included) + generated tokens; 0 = unlimited"},
            "pruning": {**config.pruning.to_dict(), "num_visual_tokens": n, "default_keep": default_keep,
                        "scorers": {name: vision_graph_key(name, default) for name in config.pruning.scorers},
                        "scorer_params": params,
                        "gate": "in-graph TopK; keep is a runtime input (1..N)",
                        "keep_mode": "fixed"},
            "token_layout": adapter.token_layout().to_dict(),
            "positions": adapter.positions().to_dict(),
            "preprocessing": adapter.preprocessing(),
            "prompt": {"template": adapter.prompt_template(), "image_token": adapter.image_token,
                       "image_token_id": adapter.image_token_id},
            "tokenizer": {"dir": TOKENIZER_DIR, "file": f"{TOKENIZER_DIR}/tokenizer.json"},
            "quantization": q.to_dict(),
            "precision": {"weights": _weights_label(q, plan), "kv": q.kv,
                          "graphs": {**{k: {"weights": q.vision if k in scorers else "int8-dynamic" if k == "decoder_prefill"
                                             else "fp32"} for k in graphs},
                                     "decoder": {"weights": _weights_label(q, plan), "kv": q.kv}}},
            "export": {"opset": config.opset, "torch": torch.__version__, "transformers": transformers.__version__,
                       "onnx": onnx.__version__},
        }
        if autos is not None:
            manifest["pruning"].update(keep_mode="auto", gate="in-graph K per image from the score mass (kept_count output); "
                                       "keep is a runtime input: the request's upper bound (default k_max)",
                                       auto_keep={k: a.to_dict() for k, a in autos.items()})
        if calibration is not None:
            manifest["pruning"]["calibration"] = calibration
        if validate:
            step(4, "validating ONNX Runtime against PyTorch")
            manifest["validation"] = _validate(adapter, scorers, {**graphs, "decoder": decoder}, staging, clip=clip,
                                              decoder_ref=reference, kv_dtype=q.kv, auto_keep=autos, vision_refs=vision_refs)
            if prefill_ref is not None:
                from atp.export.prefill import PREFILL_KEY, validate_prefill

                rep = manifest["validation"][PREFILL_KEY] = validate_prefill(adapter, staging, graphs[PREFILL_KEY], prefill_ref)
                if rep["logits_max_abs_diff"] > PREFILL_LOGITS_RTOL * rep["logits_scale"] + 1e-4:
                    raise AtpError(f"validation failed: the int8 prefill graph differs from its PyTorch reference ({rep})")
            log.info("validation: %s", manifest["validation"])
        manifest = finalize_manifest(staging, manifest)
    log.info("bundle written to %s", out)
    return manifest
