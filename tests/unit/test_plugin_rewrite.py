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
