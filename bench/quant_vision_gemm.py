"""Vision-tower GEMM speed on ONNX Runtime CPU: fp32 MatMul vs int8-weight MatMulNBits (bits=8, accuracy_level=4,
what ``--vision-weights int8`` writes) vs DynamicQuantizeMatMul (per-tensor uint8 activations, per-channel int8
weights) vs, with ``--atpcpu``, the same MatMulNBits on atp's MatMulInt8 (plugins/ort_cpu), at ViT-B/14-336 shapes
(577 tokens), side by side in one run (one live session at a time: idle sessions' spinning threads slow the next).

Usage::

    python bench/quant_vision_gemm.py --repeats 20 [--atpcpu]
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
    ap.add_argument("--atpcpu", action="store_true", help="also atp's MatMulInt8 on the MatMulNBits graph (built on first use)")
    args = ap.parse_args(argv)
    import onnx
    import onnxruntime as ort

    kernels = None
    if args.atpcpu:
        from atp.plugins import ort_cpu

        kernels = ort_cpu.find("auto") or ort_cpu.load(ort_cpu.build())

    def session(model: bytes, custom: bool):
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.log_severity_level = 3
        if custom:
            from atp.plugins.ort_cpu import swap_matmulnbits

            so.register_custom_ops_library(str(kernels.path))
            m = onnx.ModelProto()
            m.ParseFromString(model)
            swap_matmulnbits(m)
            model = m.SerializeToString()
        return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])

    variants = [False, True, "dqmm"] + (["atp"] if kernels else [])
    print(f"# vision GEMMs, {args.tokens} tokens, ORT {ort.__version__} CPU, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.1f}; medians of {args.repeats} per variant over 4 rounds, one live session at a time")
    print("| GEMM (K -> N) | fp32 ms | int8 MatMulNBits ms | x | int8 DynamicQuantizeMatMul ms | x |"
          + (" int8 MatMulInt8 (atp) ms | x |" if kernels else "") + "\n|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if kernels else ""))
    for k, n in ((768, 768), (768, 3072), (3072, 768)):
        x = np.random.default_rng(1).standard_normal((args.tokens, k)).astype(np.float32)
        t = {q: [] for q in variants}
        for _ in range(4):
            for q in variants:
                sess = session(graph(k, n, True if q == "atp" else q), q == "atp")
                sess.run(None, {"x": x})
                for _ in range(max(1, args.repeats // 4)):
                    t0 = time.perf_counter()
                    sess.run(None, {"x": x})
                    t[q].append(time.perf_counter() - t0)
                del sess
        ms = [statistics.median(t[q]) * 1e3 for q in variants]
        row = f"| {k} -> {n} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[0] / ms[1]:.2f} | {ms[2]:.2f} | {ms[0] / ms[2]:.2f} |"
        if kernels:
            row += f" {ms[3]:.2f} | {ms[0] / ms[3]:.2f} |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
