"""VisionZip's contextual merge, vectorised for the graph, equals its step-by-step numpy definition."""

import numpy as np
import pytest
import torch

from atp.calibration.retention.visionzip import VisionZipMergeScorer, contextual_merge, contextual_merge_reference


def test_vectorised_merge_equals_reference():
    rng = np.random.default_rng(0)
    for case in range(30):
        n, d, dm = int(rng.integers(4, 40)), 6, 5
        b = 1 + case % 2
        feats = rng.normal(size=(b, n, d)).astype(np.float32)
        metric = rng.normal(size=(b, n, dm)).astype(np.float32)
        if case % 3 == 0:  # duplicated keys: ties in the similarity, the first target wins
            metric[:, n // 2:] = metric[:, : n - n // 2]
        k = int(rng.integers(2, n + 1))
        slots = int(rng.integers(1, 6))
        c = min(slots, k - 1)
        dom = np.stack([np.sort(rng.choice(n, k - c, replace=False)) for _ in range(b)])
        got = contextual_merge(torch.from_numpy(feats), torch.from_numpy(metric), torch.from_numpy(dom), torch.tensor(c), slots)
        assert got.shape == (b, slots, d)
        for i in range(b):
            want = contextual_merge_reference(feats[i], metric[i], dom[i].tolist(), c)
            np.testing.assert_allclose(got[i, :c].numpy(), want, atol=1e-5, rtol=0)
            assert not got[i, c:].any()


def test_split_follows_visionzip():
    s = VisionZipMergeScorer()
    for k, (dom, c) in {64: (54, 10), 128: (108, 20), 192: (162, 30), 6: (6, 0), 1: (1, 0)}.items():
        d, cc = s.split(torch.tensor(k))
        assert (int(d), int(cc)) == (dom, c)
    fixed = VisionZipMergeScorer(contextual=3)
    assert [tuple(map(int, fixed.split(torch.tensor(k)))) for k in (1, 2, 4, 16)] == [(1, 0), (1, 1), (1, 3), (13, 3)]
    with pytest.raises(ValueError, match="contextual"):
        VisionZipMergeScorer(contextual=0)


def test_merge_is_not_calibrated():
    from atp.calibration.calibrate import RetentionCalibConfig
    from atp.errors import ConfigError

    with pytest.raises(ConfigError, match="merges tokens"):
        RetentionCalibConfig(data="easy-vqa", scorers=("visionzip-merge",))
