"""Token-retention scorers, one per file, registered in ``atp.registry.SCORERS``.

Importing this package registers every scorer module listed in ``_MODULES``.
"""

import importlib

_MODULES = ("cls_attention", "random_baseline", "atp_hybrid", "idp_mmr", "divprune", "quant_aware", "visionzip", "fastv")

for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")
