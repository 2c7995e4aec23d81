"""Scorer arithmetic on random tensors: blends reduce to their parts, quantization terms react to bits."""

import numpy as np
import pytest
import torch

from atp.calibration.retention.atp_hybrid import AtpHybridScorer
from atp.calibration.retention.base import VisionContext, minmax, text_similarity
from atp.calibration.retention.cls_attention import ClsAttentionScorer
from atp.calibration.retention.quant_aware import QuantAwareScorer, fake_quant_groupwise, token_terms


def _ctx(seed=0, b=2, n=24, d=64, dl=32):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, n, d, generator=g)
    feats[:, 3, :2] *= 20  # a token with outlier channels
    cls = torch.rand(b, n, generator=g)
    proj = torch.nn.Linear(d, dl)
    return VisionContext(features=feats, cls_attention=lambda: cls, project=proj, keep=torch.tensor(5),
                         text_embeds=torch.randn(b, dl, generator=g))


def _topk(scores, k):
    return [set(r) for r in scores.topk(k, dim=-1).indices.tolist()]


def test_atp_alpha_extremes_are_its_parts():
    ctx = _ctx()
    assert _topk(AtpHybridScorer(alpha=1.0)(ctx), 6) == _topk(ClsAttentionScorer()(ctx), 6)
    assert _topk(AtpHybridScorer(alpha=0.0)(ctx), 6) == _topk(text_similarity(ctx), 6)
    mixed = AtpHybridScorer(alpha=0.5)(ctx)
    torch.testing.assert_close(mixed, 0.5 * minmax(ctx.cls_attention()) + 0.5 * minmax(text_similarity(ctx)))
    with pytest.raises(ValueError):
        AtpHybridScorer(alpha=1.5)


def test_fake_quant_matches_numpy_reference():
    x = torch.randn(3, 5, 64)
    for bits in (4, 8):
        q = fake_quant_groupwise(x, bits, 32).numpy()
        xn = x.numpy().reshape(3, 5, 2, 32)
        qmax = 2 ** (bits - 1) - 1
        scale = np.maximum(np.abs(xn).max(-1, keepdims=True), 1e-8) / qmax
        ref = (np.clip(np.round(xn / scale), -qmax - 1, qmax) * scale).reshape(3, 5, 64)
        np.testing.assert_allclose(q, ref, rtol=0, atol=1e-6)


def test_qat_terms_react_to_bits_and_group_size():
    x = _ctx().features
    e4, out = token_terms(x, 4, 32)
    e8, _ = token_terms(x, 8, 32)
    e4_64, _ = token_terms(x, 4, 64)
    assert (e8 < e4).all() and e4.mean() > 5 * e8.mean()
    assert not torch.allclose(e4, e4_64)
    assert out.argmax(dim=-1).tolist() == [3, 3]
    s4, s8 = QuantAwareScorer(bits=4, weights=(1, 0, 0))(_ctx()), QuantAwareScorer(bits=8, weights=(1, 0, 0))(_ctx())
    assert not torch.allclose(s4, s8)
    pure_sem = QuantAwareScorer(weights=(0, 0, 1))(_ctx())
    assert _topk(pure_sem, 5) == _topk(ClsAttentionScorer()(_ctx()), 5)
