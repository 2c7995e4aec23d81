"""The exported greedy selection loop (idp, divprune) equals the plain greedy definition."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from atp.calibration.retention.selection import greedy_select, greedy_select_reference
from atp.export.onnx_utils import export_module


class _Select(torch.nn.Module):
    def __init__(self, lam):
        super().__init__()
        self.lam = lam

    def forward(self, first, importance, similarity, keep):
        return greedy_select(first, importance, similarity, keep, self.lam)


@pytest.fixture(scope="module", params=[0.0, 0.6, 1.0])
def select_onnx(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("sel") / "select.onnx"
    args = (torch.randn(2, 12), torch.randn(2, 12), torch.randn(2, 12, 12), torch.tensor(5))
    export_module(_Select(request.param), args, path, ["first", "importance", "similarity", "keep"], ["scores"],
                  {"first": {0: "b", 1: "n"}, "importance": {0: "b", 1: "n"}, "similarity": {0: "b", 1: "n", 2: "m"},
                   "scores": {0: "b", 1: "n"}}, opset=21, external_data_threshold=1 << 30)
    return request.param, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _cases(rng):
    for n in (7, 16, 40):
        x = rng.normal(size=(3, n, 8)).astype(np.float32)
        x[:, 1] = x[:, 0]  # duplicate tokens
        x[:, 3] = x[:, 0]
        xn = x / np.linalg.norm(x, axis=-1, keepdims=True)
        sim = (xn @ xn.transpose(0, 2, 1)).astype(np.float32)
        imp = rng.random((3, n)).astype(np.float32)
        imp[:, 2] = imp[:, 5] = imp.max(axis=1)  # tied importances
        yield imp, imp, sim
        yield -sim.mean(axis=-1), np.zeros_like(imp), sim
        yield np.round(imp * 4) / 4, np.round(imp * 4) / 4, np.round(sim * 2) / 2  # many ties


def test_exported_loop_equals_greedy_reference(select_onnx):
    lam, sess = select_onnx
    for first, imp, sim in _cases(np.random.default_rng(0)):
        n = first.shape[1]
        for k in sorted({1, 2, n // 4 or 1, n // 2, n}):
            scores = sess.run(None, {"first": first, "importance": imp, "similarity": sim, "keep": np.array(k, np.int64)})[0]
            picked = [set(np.nonzero(row >= 0)[0].tolist()) for row in scores]
            assert picked == greedy_select_reference(first, imp, sim, k, lam), (lam, n, k)
            eager = greedy_select(torch.from_numpy(first), torch.from_numpy(imp), torch.from_numpy(sim), torch.tensor(k), lam)
            np.testing.assert_array_equal(eager.numpy(), scores)
