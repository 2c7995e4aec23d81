"""Vision-tower GEMM speed on ONNX Runtime CPU: fp32 MatMul vs int8-weight MatMulNBits (bits=8, accuracy_level=4,
what ``--vision-weights int8`` writes) vs DynamicQuantizeMatMul (per-tensor uint8 activations, per-channel int8
weights), at ViT-B/14-336 shapes (577 tokens), side by side in one run.

Usage::

    python bench/quant_vision_gemm.py --repeats 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def graph(k: int, n: int, int8):
    from onnx import TensorProto, helper, numpy_helper

    from atp.calibration.quant_reference import int8_as_blocks, quantize_int8, to_matmulnbits

    w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32) * 0.02
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])
    if int8 == "dqmm":  # per-tensor dynamic uint8 activations x per-channel int8 weights (ORT quantize_dynamic's fused op)
        q, sc = quantize_int8(w)  # stored as uint8 + zero point 128: the u8s8 AVX2 kernel saturates int16 pair sums
        inits = [numpy_helper.from_array((q.T.astype(np.int16) + 128).astype(np.uint8), "B"),
                 numpy_helper.from_array(sc.astype(np.float32), "S"), numpy_helper.from_array(np.full(n, 128, np.uint8), "Z")]
        node = helper.make_node("DynamicQuantizeMatMul", ["x", "B", "S", "Z"], ["y"], domain="com.microsoft")
    elif int8:
        t = to_matmulnbits(*int8_as_blocks(*quantize_int8(w), 32), None, 8, 32)
        inits = [numpy_helper.from_array(t["B"], "B"), numpy_helper.from_array(t["scales"], "S")]
        node = helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=k, N=n, bits=8,
                                block_size=32, accuracy_level=4)
    else:
        inits = [numpy_helper.from_array(w.T.copy(), "W")]
        node = helper.make_node("MatMul", ["x", "W"], ["y"])
    m = helper.make_model(helper.make_graph([node], "g", [x], [y], inits),
                          opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    return m.SerializeToString()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=577)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.log_severity_level = 3
    x = {}
    print(f"# vision GEMMs, {args.tokens} tokens, ORT {ort.__version__} CPU, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}; medians of {args.repeats}, round-robin")
    print("| GEMM (K -> N) | fp32 ms | int8 MatMulNBits ms | x | int8 DynamicQuantizeMatMul ms | x |\n|---|---:|---:|---:|---:|---:|")
    for k, n in ((768, 768), (768, 3072), (3072, 768)):
        sess = {q: ort.InferenceSession(graph(k, n, q), so, providers=["CPUExecutionProvider"]) for q in (False, True, "dqmm")}
        x = np.random.default_rng(1).standard_normal((args.tokens, k)).astype(np.float32)
        t = {q: [] for q in sess}
        for s in sess.values():
            s.run(None, {"x": x})
        for _ in range(args.repeats):
            for q, s in sess.items():
                t0 = time.perf_counter()
                s.run(None, {"x": x})
                t[q].append(time.perf_counter() - t0)
        a, b, c = (statistics.median(t[q]) * 1e3 for q in (False, True, "dqmm"))
        print(f"| {k} -> {n} | {a:.2f} | {b:.2f} | {a / b:.2f} | {c:.2f} | {a / c:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
