"""The per-image keep count (``--keep auto``): PyTorch gate == numpy definition, bounds, padding, config checks."""

import numpy as np
import pytest
import torch

from atp.calibration.auto_keep import AutoKeep, auto_counts, auto_keep_reference, mass_counts
from atp.errors import ConfigError
from atp.export.gate import auto_topk_ascending, gather_padded, topk_ascending


def _cases():
    rng = np.random.default_rng(0)
    for i in range(40):
        n = int(rng.integers(2, 40))
        b = int(rng.integers(1, 4))
        kind = i % 4
        if kind == 0:
            s = rng.random((b, n))
        elif kind == 1:
            s = rng.exponential(size=(b, n)) ** 3  # heavy-tailed, like CLS attention
        elif kind == 2:
            s = np.round(rng.random((b, n)) * 4) / 4  # many ties
        else:
            s = rng.normal(size=(b, n))
            s[0] = 0.5  # a flat row: no mass
        yield s.astype(np.float32), float(rng.choice([0.3, 0.5, 0.8, 0.9, 1.0])), n


def test_gate_equals_the_numpy_definition():
    for s, fraction, n in _cases():
        k_min = int(np.random.default_rng(n).integers(1, n + 1))
        k_max = int(np.random.default_rng(n + 1).integers(k_min, n + 1))
        for keep in (n, max(1, n // 2)):
            auto = AutoKeep(fraction, k_min, k_max)
            want_k, want_sets = auto_keep_reference(s, fraction, k_min, k_max, keep)
            idx, counts = auto_topk_ascending(torch.from_numpy(s), torch.tensor(keep), auto)
            assert counts.tolist() == want_k
            assert idx.shape == (s.shape[0], max(want_k))
            for row, k, want in zip(idx.tolist(), want_k, want_sets):
                assert row[:k] == sorted(want) and all(v == -1 for v in row[k:])  # ascending, then padding
            assert all(min(k_max, keep) >= k >= min(k_min, keep) for k in want_k)


def test_flat_scores_keep_k_max_and_mass_is_shift_scale_invariant():
    s = torch.full((2, 10), 0.25)
    assert mass_counts(s, 0.5).tolist() == [10, 10]
    assert auto_counts(s, AutoKeep(0.5, 2, 7), 10).tolist() == [7, 7]
    x = torch.rand(3, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(mass_counts(x, 0.8), mass_counts(x * 3.0 + 11.0, 0.8))


def test_sharper_scores_need_fewer_tokens():
    flat = torch.linspace(0, 1, 64)[None]
    peaked = flat ** 8
    assert int(mass_counts(peaked, 0.9)[0]) < int(mass_counts(flat, 0.9)[0])
    # scores i/63, i = 0..63, total mass 32: the top K carry K(127 - K)/126, >= 28.8 first at K = 44 (43 * 84 < 3628.8)
    assert int(mass_counts(flat, 0.9)[0]) == 44


def test_fixed_gate_agrees_at_the_chosen_k():
    x = torch.randn(1, 30, generator=torch.Generator().manual_seed(3))
    idx, counts = auto_topk_ascending(x, torch.tensor(30), AutoKeep(0.7, 1, 30))
    assert torch.equal(idx, topk_ascending(x, torch.tensor(int(counts[0]))))


def test_padded_gather_zeroes_padding():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    idx = torch.tensor([[0, 3, 4], [1, -1, -1]])
    out = gather_padded(tokens, idx)
    assert torch.equal(out[0], tokens[0, [0, 3, 4]]) and torch.equal(out[1, 0], tokens[1, 1])
    assert torch.count_nonzero(out[1, 1:]) == 0


@pytest.mark.parametrize("bad", [dict(fraction=0.0, k_min=1, k_max=4), dict(fraction=1.5, k_min=1, k_max=4),
                                 dict(fraction=0.5, k_min=0, k_max=4), dict(fraction=0.5, k_min=5, k_max=4),
                                 dict(fraction=0.5, k_min=1.5, k_max=4)])
def test_bad_parameters_are_config_errors(bad):
    with pytest.raises(ConfigError, match="auto keep"):
        AutoKeep(**bad)


def test_defaults_and_model_size_check():
    d = AutoKeep.defaults(576)
    assert (d.fraction, d.k_min, d.k_max) == (0.9, 36, 576) and "no calibration artifact" in d.source
    with pytest.raises(ConfigError, match="exceeds the 16 visual tokens"):
        d.check(16)
    assert "normalisation" in d.to_dict()


def test_pruning_config_accepts_auto_only_alone():
    from atp.config import PruningConfig, resolve_keep

    assert PruningConfig(keep="auto").auto_keep and not PruningConfig(keep=4).auto_keep
    with pytest.raises(ConfigError, match="either keep 'auto' or keep_ratio"):
        PruningConfig(keep="auto", keep_ratio=0.5)
    with pytest.raises(ConfigError):
        PruningConfig(keep="some")
    with pytest.raises(ConfigError):
        resolve_keep(16, keep="auto")
