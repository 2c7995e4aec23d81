"""``qat`` on a fake-quantized model: its kept tokens are reproduced better than ``cls``'s at the same K.

The tiny seeded LLaVA's vision tower and projector are fake-quantized (weights symmetric group-wise,
group 32 along the input dimension; activations per token at every Linear input). Reconstruction error
of a kept set = ||E_q - E_fp|| / ||E_fp|| over the kept tokens, E_q from the quantized model (the scorer
runs inside it), E_fp the same tokens from the fp32 model; mean over 20 seeded images.
(``bench/qat_reconstruction.py`` measures the same on the trained demo VLM.)
"""

import copy

import numpy as np
import pytest
import torch

from atp.calibration.retention.cls_attention import ClsAttentionScorer
from atp.calibration.retention.quant_aware import QuantAwareScorer, fake_quantized_vision

N = 16


@pytest.fixture(scope="module")
def adapter(tiny_ckpt):
    from atp.export.adapters import adapter_for_checkpoint

    return adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)


def _prompts(adapter, images, seed=0):
    """``[images, D]`` prompt embeddings as the runtime makes them: the mean of a few token embeddings."""
    table = adapter.model.get_input_embeddings().weight.detach()
    g = torch.Generator().manual_seed(seed)
    return torch.stack([table[torch.randint(0, table.shape[0], (5,), generator=g)].mean(0) for _ in range(images)])


def _run(module, scorer, px, k, text):
    return module(px, torch.tensor(k), *([text] if scorer.needs_text else []))


def _reconstruction_error(adapter, qadapter, scorer, k, images=20):
    from atp.export.gate import gather_tokens

    px = torch.cat([torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in range(images)])
    with torch.no_grad():
        fp = adapter.vision_module(ClsAttentionScorer()).context(px, torch.tensor(N)).projected()
        eq, idx = _run(qadapter.vision_module(scorer.eval()), scorer, px, k, _prompts(adapter, images))
    ef = gather_tokens(fp, idx)
    return float(((eq - ef).flatten(1).norm(dim=1) / ef.flatten(1).norm(dim=1)).mean()), idx


@pytest.mark.parametrize("wbits,abits", [(4, 8), (8, 8), (4, 4)])
def test_qat_keeps_better_reproduced_tokens_than_cls(adapter, wbits, abits):
    q = copy.copy(adapter)
    q.model = fake_quantized_vision(adapter.model, wbits, abits)
    k = N // 4
    err_cls, idx_cls = _reconstruction_error(adapter, q, ClsAttentionScorer(), k)
    err_qat, idx_qat = _reconstruction_error(adapter, q, QuantAwareScorer(bits=abits), k)
    assert not torch.equal(idx_cls, idx_qat)  # a different kept set, not a tie
    assert err_qat < err_cls, (wbits, abits, err_qat, err_cls)
    quant_gap = _reconstruction_error(adapter, adapter, ClsAttentionScorer(), k)[0]
    assert quant_gap < 1e-6 < err_cls  # the metric sees quantization and nothing else
    # the error term alone ranks reconstruction: keeping the lowest simulated error beats keeping the highest
    err_low = _reconstruction_error(adapter, q, QuantAwareScorer(bits=abits, weights=(-1, 0, 0)), k)[0]
    err_high = _reconstruction_error(adapter, q, QuantAwareScorer(bits=abits, weights=(1, 0, 0)), k)[0]
    assert err_low < err_cls < err_high, (err_low, err_cls, err_high)


def test_qat_kept_sets_change_with_bits_and_group_size(adapter):
    """The quantization term is computed for the configured bits / group size: the kept sets move with them."""
    px = torch.cat([torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(100 + s)) for s in range(8)])
    kept = {}
    for bits, group in ((4, 32), (8, 32), (4, 8)):
        with torch.no_grad():
            scorer = QuantAwareScorer(bits=bits, group_size=group, weights=(1, 0, 0)).eval()
            _, idx = _run(adapter.vision_module(scorer), scorer, px, 4, _prompts(adapter, 8))
        kept[(bits, group)] = [set(r) for r in idx.tolist()]
    assert kept[(4, 32)] != kept[(8, 32)]
    assert kept[(4, 32)] != kept[(4, 8)]
    scores = [np.asarray(QuantAwareScorer(bits=b, group_size=g)(
        adapter.vision_module(ClsAttentionScorer()).context(px, torch.tensor(4), _prompts(adapter, 8))).detach()) for b, g in ((4, 32), (8, 32))]
    assert np.abs(scores[0] - scores[1]).max() > 1e-2
