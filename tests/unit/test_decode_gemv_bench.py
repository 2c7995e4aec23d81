"""``bench/decode_gemv.py``: its int4 graphs compute the GEMV they claim to time (numbers, not timing)."""

import numpy as np

from tests.benchmod import load_bench


def _bench():
    return load_bench("decode_gemv")


def test_int4_graph_matches_the_dequantized_reference():
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from atp.calibration.quant_reference import dequantize_int4, quantize_int4

    bench = _bench()
    n, k = 96, 128
    model, nbytes = bench.gemv_graph([(n, k)] * 2, "int4", 64, 0)
    assert nbytes == n * k // 2 + n * (k // 64) * 4  # packed nibbles + fp32 scales
    x = np.random.default_rng(3).standard_normal((1, k)).astype(np.float32)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    ys = sess.run(None, {f"x{k}": x})
    rng = np.random.default_rng(0)  # the weights the bench drew, in order
    for y in ys:
        w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
        ref = x @ dequantize_int4(quantize_int4(w, 64, True)).T
        np.testing.assert_allclose(y, ref, atol=1e-5, rtol=1e-4)  # accuracy_level 0: fp32 compute
    fp = onnx.load_from_string(bench.gemv_graph([(n, k)], "fp32", 0, 0)[0])
    np.testing.assert_array_equal(numpy_helper.to_array(fp.graph.initializer[0]).shape, (k, n))
    step = bench.step_shapes(layers=2)
    assert len(step) == 2 * 4 + 1 and step[-1] == (49152, 576)  # 2 layers x (qkv, o, gate_up, down) + lm_head


def test_every_decoder_shape_is_timed(capsys):
    bench = _bench()
    bench.SHAPES = {"small": (64, 128, 2), "head": (256, 128, 1)}
    assert bench.main(["--threads", "1", "--blocks", "64", "--levels", "4", "--copies", "2", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    rows = [r for r in out.splitlines() if r.startswith("| small") or r.startswith("| head")]
    assert len(rows) == 4  # fp32 + int4-g64-L4 per shape
    assert "| 1 | int4-g64-L4 |" in out and all(float(r.split("|")[4]) > 0 for r in rows)
