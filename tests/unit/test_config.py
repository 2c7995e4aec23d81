import pytest

from atp.config import ExportConfig, PruningConfig, resolve_keep
from atp.errors import ConfigError


@pytest.mark.parametrize("n,keep,ratio,expected", [
    (576, None, None, 576), (576, 1, None, 1), (576, 576, None, 576), (576, None, 0.25, 144),
    (576, None, 1.0, 576), (576, None, 0.001, 1), (10, None, 0.15, 2), (256, None, 0.125, 32),
])
def test_resolve_keep(n, keep, ratio, expected):
    assert resolve_keep(n, keep, ratio) == expected


@pytest.mark.parametrize("keep,ratio,msg", [
    (0, None, "keep must be >= 1"), (-3, None, "keep must be >= 1"), (577, None, "exceeds the 576"),
    (None, 0.0, r"\(0, 1\]"), (None, 1.5, r"\(0, 1\]"), (None, -0.1, r"\(0, 1\]"), (None, float("nan"), r"\(0, 1\]"),
    (4, 0.5, "not both"), (2.5, None, "integer"),
])
def test_resolve_keep_rejects(keep, ratio, msg):
    with pytest.raises(ConfigError, match=msg):
        resolve_keep(576, keep, ratio)


def test_configs_are_frozen_and_validated():
    cfg = PruningConfig(keep=64)
    with pytest.raises(AttributeError):
        cfg.keep = 3
    with pytest.raises(ConfigError):
        PruningConfig(keep_ratio=2.0)
    with pytest.raises(ConfigError, match="opset 12"):
        ExportConfig(opset=12)
    assert ExportConfig().to_dict()["pruning"]["scorer"] == "cls"
