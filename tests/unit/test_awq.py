"""AWQ-style input-channel scaling (atp.calibration.awq): folding keeps the fp32 function, the search never
raises the calibration error above RTN, and it helps on channels with outlier activations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from atp.errors import CalibrationError


def test_search_prefers_scaling_with_outlier_channels():
    from atp.calibration.awq import search_scales

    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 128)).astype(np.float32)
    x[:, :4] *= 30.0  # a few salient input channels, as in real LLM activations
    w = rng.standard_normal((64, 128)).astype(np.float32) * 0.05
    s, alpha, errs = search_scales(x, w, group_size=32)
    assert alpha > 0 and errs[alpha] < 0.8 * errs[0.0], errs
    assert s.shape == (128,) and s[:4].min() > s[4:].max()


def test_folding_keeps_function_and_never_worsens_calibration_error(tiny_ckpt):
    from atp.calibration.awq import apply_awq_scaling, collect_inputs
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import _decoder_example

    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    ids = torch.from_numpy(np.random.default_rng(0).integers(4, 290, (2, 96)))
    inputs = collect_inputs(adapter.model, [ids[:1], ids[1:]], max_rows=128)
    decoder = adapter.decoder_module()
    scaled = copy.deepcopy(decoder)
    report = apply_awq_scaling(scaled, inputs, group_size=32)
    n_layers = adapter.model_info()["num_layers"]
    assert len(report) == 3 * n_layers
    for r in report.values():
        assert r["error"] <= r["rtn_error"] + 1e-12
    args = _decoder_example(adapter)
    with torch.no_grad():
        a, b = decoder(*args), scaled(*args)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-4, rtol=0)
    # every group with alpha > 0 really changed its weights (and its preceding op compensates, checked above)
    from atp.calibration.salience import decoder_linears

    before, after = decoder_linears(decoder), decoder_linears(scaled)
    changed = {n.rsplit(".", 1)[0] for n in before if not torch.equal(before[n].weight, after[n].weight)}
    scaled_groups = {k.split(":")[0] for k, r in report.items() if r["alpha"] > 0}
    assert scaled_groups <= changed
    with pytest.raises(CalibrationError, match="empty"):
        collect_inputs(adapter.model, [])
