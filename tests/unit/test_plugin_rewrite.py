"""Graph rewrite: the in-graph gate becomes one atp::TopKGate node (per contract.yaml), and the rewritten
graph, evaluated with reference.py as the plugin, equals the original graph in ONNX Runtime (same kept
indices; tokens within 1e-4)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("onnx_graphsurgeon")

from atp.errors import AtpError  # noqa: E402
from atp.export.plugin_rewrite import RewriteError, rewrite_topk_gate  # noqa: E402
from atp.plugins import contract  # noqa: E402


def _plugin_op():
    from onnx.reference.op_run import OpRun

    from atp.plugins.topk_gate.reference import topk_gate

    class TopKGate(OpRun):
        op_domain = "atp"

        def _run(self, scores, tokens, keep, plugin_version=None, plugin_namespace=None):
            k = int(np.asarray(keep).reshape(-1)[0])
            kept, index = topk_gate(scores, tokens, k)
            return kept, index.astype(np.int32), np.array(k, np.int64)

    return TopKGate


@pytest.fixture(scope="module")
def rewritten(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "vision.onnx"))
    return model, *rewrite_topk_gate(model)


def test_rewrite_follows_contract(rewritten):
    original, model, n = rewritten
    c = contract("topk_gate")
    assert n == 1
    nodes = [x for x in model.graph.node if x.op_type == c["name"]]
    assert len(nodes) == 1
    node = nodes[0]
    assert node.domain == c["onnx_domain"] and len(node.input) == len(c["inputs"]) and len(node.output) == len(c["outputs"])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs == {"plugin_version": c["version"].encode(), "plugin_namespace": c["namespace"].encode()}
    assert node.input[2] == "keep"
    assert not [x for x in model.graph.node if x.op_type in ("TopK", "GatherElements")]
    assert [o.name for o in model.graph.output] == [o.name for o in original.graph.output]
    assert any(op.domain == "atp" for op in model.opset_import)


def test_rewritten_graph_matches_ort(rewritten, tiny_bundle):
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    _, model, _ = rewritten
    ref = ReferenceEvaluator(model, new_ops=[_plugin_op()])
    sess = ort.InferenceSession(str(tiny_bundle / "vision.onnx"), providers=["CPUExecutionProvider"])
    px = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    n = 16
    for k in (1, 5, n):
        feeds = {"pixel_values": px, "keep": np.array(k, np.int64)}
        want, got = sess.run(None, feeds), ref.run(None, feeds)
        np.testing.assert_array_equal(got[1], want[1])
        assert got[1].dtype == np.int64
        np.testing.assert_allclose(got[0], want[0], atol=1e-4, rtol=1e-4)


def test_graph_without_gate_is_refused(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "decoder.onnx"))
    with pytest.raises(RewriteError, match="no top-K gate subgraph"):
        rewrite_topk_gate(model)
    assert issubclass(RewriteError, AtpError)


def _mixed_qdq_model(kin=128, n8=16, n4=48, g=32, unsigned=False, seed=0):
    """A QDQ graph with one mixed layer as the quantizer's qdq target writes it, followed by a Relu."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    q8 = rng.integers(-127, 128, (kin, n8)).astype(np.int8)
    s8 = rng.uniform(0.001, 0.01, n8).astype(np.float32)
    lo, hi = (0, 16) if unsigned else (-8, 8)
    q4 = rng.integers(lo, hi, (kin, n4))
    s4 = rng.uniform(0.01, 0.1, (kin // g, n4)).astype(np.float32)
    inits = [numpy_helper.from_array(q8, "q8"), numpy_helper.from_array(s8, "s8"),
             helper.make_tensor("q4", TensorProto.UINT4 if unsigned else TensorProto.INT4, q4.shape, q4.flatten().tolist()),
             numpy_helper.from_array(s4, "s4")]
    dq4_in = ["q4", "s4"]
    if unsigned:
        z4 = rng.integers(0, 16, (kin // g, n4))
        inits.append(helper.make_tensor("z4", TensorProto.UINT4, z4.shape, z4.flatten().tolist()))
        dq4_in.append("z4")
    nodes = [helper.make_node("DequantizeLinear", ["q8", "s8"], ["w8"], axis=1),
             helper.make_node("DequantizeLinear", dq4_in, ["w4"], axis=0, block_size=g),
             helper.make_node("MatMul", ["x", "w8"], ["y8"]), helper.make_node("MatMul", ["x", "w4"], ["y4"]),
             helper.make_node("Concat", ["y8", "y4"], ["y"], axis=-1), helper.make_node("Relu", ["y"], ["out"])]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", kin])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["M", n8 + n4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def _mixed_op():
    from onnx.reference.op_run import OpRun

    from atp.plugins.mixed_gemm import reference

    class MixedGemm(OpRun):
        op_domain = "atp"

        def _run(self, x, w8, s8, w4, s4, z4=None, group_size=None, has_zero_points=None, plugin_version=None,
                 plugin_namespace=None):
            lay = {"w8": w8, "s8": s8, "w4": w4.view(np.uint8), "s4": s4, "group": group_size,
                   "z4": None if z4 is None else z4.view(np.uint8)}
            MixedGemm.last_layout = lay
            return (reference.mixed_gemm(x.astype(np.float32), lay, "fp16" if x.shape[0] <= 8 else "int8").astype(np.float16),)

    return MixedGemm


@pytest.mark.parametrize("unsigned", [False, True], ids=["int4-symmetric", "uint4-zero-points"])
def test_mixed_gemm_rewrite(unsigned):
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    from atp.export.plugin_rewrite import rewrite_mixed_gemm
    from atp.plugins.mixed_gemm.reference import dequantize

    model = _mixed_qdq_model(unsigned=unsigned)
    new, n = rewrite_mixed_gemm(model)
    c = contract("mixed_gemm")
    assert n == 1
    (node,) = [x for x in new.graph.node if x.op_type == "MixedGemm"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert node.domain == c["onnx_domain"] and attrs["group_size"] == 32 and attrs["has_zero_points"] == int(unsigned)
    assert set(attrs) == {a["name"] for a in c["attributes"]} | {"plugin_version", "plugin_namespace"}
    assert len(node.input) == len(c["inputs"]) - (0 if unsigned else 1)
    assert not [x for x in new.graph.node if x.op_type in ("MatMul", "DequantizeLinear", "Concat")]
    op = _mixed_op()
    ref = ReferenceEvaluator(new, new_ops=[op])
    so = ort.SessionOptions()  # unoptimized: ORT's QDQ fusions quantize activations themselves (~0.5% off)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    w_dq = ReferenceEvaluator(model).run(["w8", "w4"], {"x": np.zeros((1, 128), np.float32)})
    for m in (1, 8, 40):
        x = np.random.default_rng(m).standard_normal((m, 128)).astype(np.float32)
        want = sess.run(None, {"x": x})[0]
        got = ref.run(None, {"x": x})[0]
        # the packed layout encodes exactly the graph's dequantized weights
        np.testing.assert_array_equal(dequantize(op.last_layout), np.concatenate([w_dq[0].T, w_dq[1].T]))
        tol = 5e-3 if m <= 8 else 5e-2  # fp16 GEMV path; per-token int8 activations on the prefill path
        assert np.abs(got - want).max() <= tol * np.abs(want).max()


def test_mixed_gemm_rewrite_leaves_other_graphs(tiny_bundle):
    from atp.export.plugin_rewrite import rewrite_mixed_gemm

    model = onnx.load(str(tiny_bundle / "decoder.onnx"))
    assert rewrite_mixed_gemm(model)[1] == 0


def test_rewrite_file_applies_what_matches(tiny_bundle, tmp_path):
    from atp.export.plugin_rewrite import rewrite_file

    assert rewrite_file(tiny_bundle / "vision.onnx", tmp_path / "v.onnx") == {"TopKGate": 1, "MixedGemm": 0}
    onnx.save(_mixed_qdq_model(), str(tmp_path / "m.onnx"))
    assert rewrite_file(tmp_path / "m.onnx", tmp_path / "m2.onnx") == {"TopKGate": 0, "MixedGemm": 1}
    assert [n.op_type for n in onnx.load(str(tmp_path / "m2.onnx")).graph.node].count("MixedGemm") == 1



def test_gate_over_the_plugin_limit_is_refused(tiny_bundle, monkeypatch):
    """More visual tokens than TopKGate's max_n (contract.yaml) is a clear ConfigError before an engine build with
    plugins, not a build or run failure on the device. The tiny bundle has 16 tokens: lower the limit to 8 to see it."""
    import atp.plugins as plugins
    from atp.bundle import read_manifest
    from atp.errors import ConfigError
    from atp.export.engine import check_plugin_limits

    manifest = read_manifest(tiny_bundle)
    check_plugin_limits(manifest)  # 16 <= 4096
    real = plugins.contract
    monkeypatch.setattr(plugins, "contract", lambda name: {**real(name), "limits": {"max_n": 8}})
    with pytest.raises(ConfigError, match="gates 16 visual tokens per image, more than the TopKGate plugin's limit of 8"):
        check_plugin_limits(manifest)
