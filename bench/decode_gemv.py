"""Decode-shaped GEMVs on ONNX Runtime CPU: fp32 MatMul vs int4 MatMulNBits per SmolLM2-135M layer shape.

One token (M = 1) through each of the fused decoder graph's GEMMs (q/k/v fused, o, gate/up fused, down, lm_head),
fp32 against int4 MatMulNBits (symmetric, per block size, accuracy_level 4 = int8 compute and 1 = fp32 compute),
at 1 and 2 intra-op threads, side by side in one run. Two measurements:

- per shape: a graph of ``--copies`` independent weight copies of one shape (lm_head once), one session run
  over all of them: microseconds per GEMV. Its weights (0.2-27 MB) can stay in the CPU's caches between runs,
  so these are warm-cache numbers;
- whole step: one graph with every GEMV of a decode step (30 layers x 4 GEMMs + lm_head, the decoder's full
  weight set, so weights stream from memory as in the decoder) and nothing else: milliseconds per token.
  Against the decoder's own step time (``bench/quant_speed.py``) this splits GEMV from everything else.

One session exists at a time (ORT's intra-op threads spin after a run: several live sessions on a
2-core machine steal each other's cores).

Usage::

    python bench/decode_gemv.py --out bench/results/decode_gemv.md
    python bench/decode_gemv.py --threads 2 --blocks 64 --repeats 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

#: (N, K) of SmolLM2-135M's decoder GEMMs as the fused graph runs them, and how many the decoder has.
SHAPES = {"qkv": (960, 576, 30), "o_proj": (576, 576, 30), "gate_up": (3072, 576, 30), "down_proj": (576, 1536, 30),
          "lm_head": (49152, 576, 1)}


def gemv_graph(shapes: list[tuple[int, int]], kind: str, block: int, level: int) -> tuple[bytes, int]:
    """(serialized model, weight bytes of the last GEMV): one independent GEMV ``x<K> [1, K] -> [1, N]`` per
    ``(N, K)`` in ``shapes``, each with its own seeded weights (fp32 ``MatMul`` or int4 ``MatMulNBits``)."""
    from onnx import TensorProto, helper, numpy_helper

    from atp.calibration.quant_reference import quantize_int4, to_matmulnbits

    rng = np.random.default_rng(0)
    nodes, inits, outs, nbytes = [], [], [], 0
    for c, (n, k) in enumerate(shapes):
        w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
        outs.append(helper.make_tensor_value_info(f"y{c}", TensorProto.FLOAT, [1, n]))
        if kind == "fp32":
            inits.append(numpy_helper.from_array(w.T.copy(), f"W{c}"))
            nodes.append(helper.make_node("MatMul", [f"x{k}", f"W{c}"], [f"y{c}"]))
            nbytes = w.nbytes
        else:
            w4 = quantize_int4(w, block, True)
            t = to_matmulnbits(w4.unsigned(), w4.scale, None, 4, block)
            inits += [numpy_helper.from_array(t["B"], f"B{c}"), numpy_helper.from_array(t["scales"], f"S{c}")]
            nodes.append(helper.make_node("MatMulNBits", [f"x{k}", f"B{c}", f"S{c}"], [f"y{c}"], domain="com.microsoft",
                                          K=k, N=n, bits=4, block_size=block, accuracy_level=level))
            nbytes = t["B"].nbytes + t["scales"].nbytes
    ins = [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [1, k]) for k in sorted({k for _, k in shapes})]
    m = helper.make_model(helper.make_graph(nodes, "gemvs", ins, outs, inits),
                          opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    return m.SerializeToString(), nbytes


def step_shapes(layers: int = 30) -> list[tuple[int, int]]:
    """Every GEMV of one decode step: ``layers`` x (qkv, o, gate_up, down), then lm_head."""
    per_layer = [(n, k) for n, k, count in SHAPES.values() if count > 1]
    return per_layer * layers + [(n, k) for n, k, count in SHAPES.values() if count == 1]


def on_atp_kernels(model: bytes) -> bytes:
    """The same graph with its MatMulNBits nodes swapped for atp's MatMulInt4 (:mod:`atp.plugins.ort_cpu`)."""
    import onnx

    from atp.plugins.ort_cpu import swap_matmulnbits

    m = onnx.ModelProto()
    m.ParseFromString(model)
    swap_matmulnbits(m)
    return m.SerializeToString()


def time_gemv(model: bytes, copies: int, threads: int, repeats: int, kernels=None) -> float:
    """Median microseconds per GEMV of a :func:`gemv_graph` holding ``copies`` GEMVs (``kernels``: an
    :class:`~atp.plugins.ort_cpu.OrtCpuKernels` to register, for swapped graphs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if kernels is not None:
        so.register_custom_ops_library(str(kernels.path))
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feed = {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in sess.get_inputs()}
    for _ in range(5):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return statistics.median(times) / copies * 1e6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--levels", type=int, nargs="+", default=[4, 1])
    ap.add_argument("--copies", type=int, default=30, help="independent weight copies per layer shape (lm_head: 1)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--atpcpu", action="store_true",
                    help="also time each accuracy_level-4 int4 variant on atp's MatMulInt4 op (`+atp` rows; built on first use)")
    ap.add_argument("--out", default=None, help="also write the table here (markdown)")
    args = ap.parse_args(argv)
    kernels = None
    if args.atpcpu:
        from atp.plugins import ort_cpu

        kernels = ort_cpu.find("auto") or ort_cpu.load(ort_cpu.build())
    from atp.runtime.benchmark import machine

    mc = machine()
    lines = ["# Decode GEMVs (M = 1): fp32 MatMul vs int4 MatMulNBits, SmolLM2-135M shapes (ONNX Runtime CPU)", "",
             f"- machine: {mc['cpu']}, {mc['logical_cores']} logical cores (load average {os.getloadavg()[0]:.1f}), "
             f"onnxruntime {mc['onnxruntime']}",
             f"- {args.copies} independent weight copies per layer shape (lm_head: 1), one run over all; medians of "
             f"{args.repeats}; int4 symmetric, `gB` = block size, `L4` = accuracy_level 4 (int8 compute), `L1` = fp32 compute; "
             "blocks that do not divide K are skipped; `+atp` = the same graph on atp's MatMulInt4 op (plugins/ort_cpu"
             f"{', ISA path ' + kernels.isa if kernels else ''})",
             f"- command: `python bench/decode_gemv.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             "| shape (N x K) | threads | variant | us / GEMV | GB/s of weights | x fp32 |", "|---|---:|---|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    totals: dict[tuple[int, str], float] = {}
    shapes_seen: dict[tuple[int, str], int] = {}
    for name, (n, k, count) in SHAPES.items():
        copies = args.copies if count > 1 else 1
        variants = [("fp32", 0, 0)] + [("int4", b, lv) for b in args.blocks if k % b == 0 for lv in args.levels]
        if kernels is not None:
            variants += [("int4+atp", b, 4) for b in args.blocks if k % b == 0 and 4 in args.levels]
        for threads in args.threads:
            base = None
            for kind, block, level in variants:
                model, nbytes = gemv_graph([(n, k)] * copies, kind.removesuffix("+atp"), block, level)
                atp = kind.endswith("+atp")
                us = time_gemv(on_atp_kernels(model) if atp else model, copies, threads, args.repeats, kernels if atp else None)
                label = "fp32" if kind == "fp32" else f"int4-g{block}-L{level}{'+atp' if atp else ''}"
                base = base or us
                totals[(threads, label)] = totals.get((threads, label), 0.0) + us * count
                shapes_seen[(threads, label)] = shapes_seen.get((threads, label), 0) + 1
                row = f"| {name} ({n} x {k}) | {threads} | {label} | {us:.1f} | {nbytes / us / 1e3:.1f} | {base / us:.2f} |"
                lines.append(row)
                print(row, flush=True)
    summary = ["", "Whole decode step, GEMVs only (one graph: 30 x (qkv, o, gate_up, down) + lm_head, the decoder's weights; "
               "variants whose block divides every K); `sum of shapes` adds the warm-cache rows above:", "",
               "| threads | variant | ms / token | x fp32 | sum of shapes, ms |", "|---:|---|---:|---:|---:|"]
    for threads in args.threads:
        base = None
        labels = ["fp32"] + [f"int4-g{b}-L{lv}" for b in args.blocks for lv in args.levels]
        labels += [f"int4-g{b}-L4+atp" for b in args.blocks] if kernels is not None else []
        for label in labels:
            if shapes_seen.get((threads, label)) != len(SHAPES):
                continue
            atp = label.endswith("+atp")
            kind, block, level = ("fp32", 0, 0) if label == "fp32" else ("int4", int(label.split("-g")[1].split("-")[0]),
                                                                        int(label.split("-L")[1][:1]))
            model = gemv_graph(step_shapes(), kind, block, level)[0]
            ms = time_gemv(on_atp_kernels(model) if atp else model, 1, threads, max(5, args.repeats // 3),
                           kernels if atp else None) / 1e3
            base = base or ms
            summary.append(f"| {threads} | {label} | {ms:.2f} | {base / ms:.2f} | {totals[(threads, label)] / 1e3:.2f} |")
            print(summary[-1], flush=True)
    lines += summary
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
