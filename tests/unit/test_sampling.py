import numpy as np
import pytest

from atp.errors import ConfigError
from atp.runtime.sampling import Sampler, SamplingConfig


def test_greedy_and_degenerate_sampling_agree():
    logits = np.random.default_rng(0).normal(size=500).astype(np.float32)
    best = int(np.argmax(logits))
    assert Sampler(SamplingConfig())(logits) == best
    assert all(Sampler(SamplingConfig(temperature=1.0, top_k=1, seed=s))(logits) == best for s in range(5))
    assert all(Sampler(SamplingConfig(temperature=1.0, top_p=1e-6, seed=s))(logits) == best for s in range(5))


def test_seeded_sampling_is_reproducible_and_filters():
    logits = np.random.default_rng(1).normal(size=50).astype(np.float32)
    a = [Sampler(SamplingConfig(temperature=1.0, seed=7))(logits) for _ in range(3)]
    draws = Sampler(SamplingConfig(temperature=2.0, top_k=5, seed=3))
    picks = {draws(logits) for _ in range(200)}
    assert len(set(a)) == 1
    assert picks <= set(np.argsort(-logits)[:5].tolist()) and len(picks) > 1


@pytest.mark.parametrize("kw", [{"temperature": -1}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}])
def test_bad_settings(kw):
    with pytest.raises(ConfigError):
        SamplingConfig(**kw)


def test_bad_sampling_settings_are_named():
    """Issue 20: nan temperature and a negative seed are ConfigErrors; a top_k past the vocabulary keeps every token
    (as the C++ sampler does) instead of failing inside numpy."""
    import numpy as np
    import pytest

    from atp.errors import ConfigError
    from atp.runtime.sampling import Sampler, SamplingConfig

    with pytest.raises(ConfigError, match="finite"):
        SamplingConfig(temperature=float("nan"))
    with pytest.raises(ConfigError, match="seed"):
        SamplingConfig(temperature=1.0, seed=-1)
    logits = np.array([0.0, 5.0, 1.0])
    a = Sampler(SamplingConfig(temperature=1.0, top_k=10**9, seed=3))
    b = Sampler(SamplingConfig(temperature=1.0, top_k=0, seed=3))
    assert [a(logits) for _ in range(20)] == [b(logits) for _ in range(20)]
