import pytest

from atp.errors import AtpError, ConfigError
from atp.registry import ARCHITECTURES, BACKENDS, Registry


def test_duplicate_name_is_an_error():
    reg = Registry("thing")
    reg.register("a")(object)
    with pytest.raises(AtpError, match="duplicate thing name 'a'"):
        reg.register("a")(int)


def test_unknown_name_lists_known():
    with pytest.raises(ConfigError, match="registered: ort, ort-cuda"):
        BACKENDS.get("tensorrt-magic")
    assert "llava" in ARCHITECTURES.names()
