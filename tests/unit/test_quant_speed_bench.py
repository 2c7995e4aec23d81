"""``bench/quant_speed.py``'s variant names (numbers, not timing)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("quant_speed", ROOT / "bench" / "quant_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_variant_names():
    parse = _bench().parse
    assert parse("int4-g64+atpcpu") == {"name": "int4-g64+atpcpu", "weights": "int4", "bits": None, "group": 64,
                                        "kv": "float32", "graph": "fused", "atpcpu": True}
    v = parse("mixed-4.4-g32+kv8+atpcpu")
    assert (v["weights"], v["bits"], v["group"], v["kv"], v["graph"], v["atpcpu"]) == ("mixed", 4.4, 32, "int8", "traced", True)
    assert parse("fp32@traced")["graph"] == "traced" and not parse("fp32")["atpcpu"]
    with pytest.raises(SystemExit, match="unknown variant flag"):
        parse("int4+fast")
