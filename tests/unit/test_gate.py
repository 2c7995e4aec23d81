"""The in-graph top-K gate: one ONNX graph, every K, equal to the numpy reference."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from atp.export.gate import gather_tokens, reference_gate, topk_ascending
from atp.export.onnx_utils import export_module


class _Gate(torch.nn.Module):
    def forward(self, scores, tokens, keep):
        idx = topk_ascending(scores, keep)
        return gather_tokens(tokens, idx), idx


def numpy_gate(scores, tokens, k):
    idx = np.sort(np.argsort(-scores, axis=-1, kind="stable")[:, :k], axis=-1)
    return np.take_along_axis(tokens, idx[..., None], axis=1), idx


@pytest.fixture(scope="module")
def gate_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("gate") / "gate.onnx"
    args = (torch.randn(2, 20), torch.randn(2, 20, 8), torch.tensor(5))
    export_module(_Gate(), args, path, ["scores", "tokens", "keep"], ["kept", "kept_index"],
                  {"scores": {0: "b", 1: "n"}, "tokens": {0: "b", 1: "n", 2: "d"}, "kept": {0: "b", 1: "k"}, "kept_index": {0: "b", 1: "k"}},
                  opset=21, external_data_threshold=1 << 30)
    return path


def test_graph_has_runtime_k(gate_onnx):
    m = onnx.load(str(gate_onnx))
    keep = next(i for i in m.graph.input if i.name == "keep")
    assert keep.type.tensor_type.elem_type == onnx.TensorProto.INT64 and len(keep.type.tensor_type.shape.dim) == 0
    assert [n.op_type for n in m.graph.node].count("TopK") == 2
    out = {o.name: [d.dim_param for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    assert out["kept_index"] == ["b", "k"]


@pytest.mark.parametrize("batch,n,d", [(1, 16, 4), (2, 64, 8), (3, 577, 16)])
def test_every_k_matches_reference(gate_onnx, batch, n, d):
    sess = ort.InferenceSession(str(gate_onnx), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(n)
    scores = rng.normal(size=(batch, n)).astype(np.float32)
    tokens = rng.normal(size=(batch, n, d)).astype(np.float32)
    for k in sorted({1, 2, n // 4, n // 2, n - 1, n}):
        kept, idx = sess.run(None, {"scores": scores, "tokens": tokens, "keep": np.array(k, np.int64)})
        ref_kept, ref_idx = numpy_gate(scores, tokens, k)
        assert idx.shape == (batch, k) and idx.dtype == np.int64
        assert all(np.all(np.diff(row) > 0) for row in idx), "kept_index must be strictly ascending"
        assert [set(r) for r in idx.tolist()] == [set(r) for r in ref_idx.tolist()]
        np.testing.assert_array_equal(kept, ref_kept)
        t_kept, t_idx = reference_gate(torch.from_numpy(scores), torch.from_numpy(tokens), k)
        np.testing.assert_array_equal(t_idx.numpy(), idx)
