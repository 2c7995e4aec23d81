"""Scorer arithmetic on random tensors: blends reduce to their parts, quantization terms react to bits."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from atp.calibration.retention.atp_hybrid import AtpHybridScorer
from atp.calibration.retention.base import VisionContext, minmax, text_similarity
from atp.calibration.retention.cls_attention import ClsAttentionScorer
from atp.calibration.retention.quant_aware import QuantAwareScorer, fake_quant_groupwise, fake_quant_tensorwise, token_terms


def _ctx(seed=0, b=2, n=24, d=64, dl=32):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, n, d, generator=g)
    feats[:, 3, :2] *= 20  # a token with outlier channels
    cls = torch.rand(b, n, generator=g)
    proj = torch.nn.Linear(d, dl)
    return VisionContext(features=feats, saliency=lambda: cls, project=proj, keep=torch.tensor(5),
                         text_embeds=torch.randn(b, dl, generator=g))


def _topk(scores, k):
    return [set(r) for r in scores.topk(k, dim=-1).indices.tolist()]


def test_atp_alpha_extremes_are_its_parts():
    ctx = _ctx()
    assert _topk(AtpHybridScorer(alpha=1.0)(ctx), 6) == _topk(ClsAttentionScorer()(ctx), 6)
    assert _topk(AtpHybridScorer(alpha=0.0)(ctx), 6) == _topk(text_similarity(ctx), 6)
    mixed = AtpHybridScorer(alpha=0.5)(ctx)
    torch.testing.assert_close(mixed, 0.5 * minmax(ctx.saliency()) + 0.5 * minmax(text_similarity(ctx)))
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


def test_tensorwise_fake_quant_matches_numpy_reference():
    x = torch.randn(2, 7, 64)
    x[0, 2] *= 30  # a strong token sets the shared scale: the weak ones lose precision
    for bits in (4, 8):
        q = fake_quant_tensorwise(x, bits, 16).numpy()
        xn = x.numpy().reshape(2, 7, 4, 16)
        qmax = 2 ** (bits - 1) - 1
        scale = np.maximum(np.abs(xn).max(axis=(1, 3), keepdims=True), 1e-8) / qmax
        ref = (np.clip(np.round(xn / scale), -qmax - 1, qmax) * scale).reshape(2, 7, 64)
        np.testing.assert_allclose(q, ref, rtol=0, atol=1e-6)
    err, _ = token_terms(x, 4, 16, "tensor")
    assert int(err[0].argmin()) == 2  # the strong token is reproduced best
    assert torch.allclose(token_terms(x, 4, 16, "token")[0][0, 2], token_terms(x / 30, 4, 16, "token")[0][0, 2], atol=1e-5)


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
    # the semantic term is atp's text-conditioned hybrid: with w_sem = 1 qat is atp at the same alpha
    ctx = _ctx()
    for alpha in (0.0, 0.5, 1.0):
        torch.testing.assert_close(QuantAwareScorer(weights=(0, 0, 1), alpha=alpha)(ctx), AtpHybridScorer(alpha=alpha)(ctx))
    assert _topk(QuantAwareScorer(weights=(0, 0, 1), alpha=1.0)(ctx), 5) == _topk(ClsAttentionScorer()(ctx), 5)
    # and the prompt moves qat's kept set
    ctx_a, ctx_b = ctx, _ctx()
    ctx_b.project = ctx_a.project
    ctx_b.text_embeds = torch.randn(ctx_b.text_embeds.shape, generator=torch.Generator().manual_seed(7))
    assert _topk(QuantAwareScorer()(ctx_a), 5) != _topk(QuantAwareScorer()(ctx_b), 5)


def test_qat_blend_is_the_signed_weighted_sum():
    ctx = _ctx()
    w = (-0.25, 0.25, 0.5)
    err, out = token_terms(ctx.features, 4, 32, "tensor")
    ref = w[0] * minmax(err) + w[1] * minmax(out) + w[2] * (0.5 * minmax(ctx.saliency()) + 0.5 * minmax(text_similarity(ctx)))
    torch.testing.assert_close(QuantAwareScorer(weights=w)(ctx), ref)
    torch.testing.assert_close(QuantAwareScorer(weights=(-1, 1, 2))(ctx), ref)  # L1-normalised
    # a blend without a text term takes no prompt (the vision graph gets no text_embeds input)
    assert QuantAwareScorer().needs_text and not QuantAwareScorer(weights=(0.5, 0.5, 0)).needs_text
    no_text = replace(ctx, text_embeds=None)
    torch.testing.assert_close(QuantAwareScorer(weights=(0.25, 0.25, 0.5), alpha=1.0)(no_text),
                               0.25 * minmax(err) + 0.25 * minmax(out) + 0.5 * minmax(ctx.saliency()))
    tok = QuantAwareScorer(weights=w, granularity="token")(ctx)
    err_t, _ = token_terms(ctx.features, 4, 32, "token")
    torch.testing.assert_close(tok, ref + w[0] * (minmax(err_t) - minmax(err)))
    for bad in ({"bits": 3}, {"weights": (0, 0, 0)}, {"alpha": 2.0}, {"text_space": "bert"}, {"group_size": 0},
                {"granularity": "row"}):
        with pytest.raises(ValueError):
            QuantAwareScorer(**bad)
