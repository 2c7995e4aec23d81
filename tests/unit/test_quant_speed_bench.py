"""``bench/quant_speed.py``'s variant names (numbers, not timing)."""

import pytest

from tests.benchmod import load_bench


def _bench():
    return load_bench("quant_speed")


def test_variant_names():
    parse = _bench().parse
    assert parse("int4-g64+atpcpu") == {"name": "int4-g64+atpcpu", "weights": "int4", "bits": None, "group": 64,
                                        "kv": "float32", "graph": "fused", "atpcpu": True}
    v = parse("mixed-4.4-g32+kv8+atpcpu")
    assert (v["weights"], v["bits"], v["group"], v["kv"], v["graph"], v["atpcpu"]) == ("mixed", 4.4, 32, "int8", "traced", True)
    assert parse("fp32@traced")["graph"] == "traced" and not parse("fp32")["atpcpu"]
    with pytest.raises(SystemExit, match="unknown variant flag"):
        parse("int4+fast")
