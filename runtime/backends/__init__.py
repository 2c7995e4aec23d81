"""Graph execution backends, registered in ``atp.registry.BACKENDS``.

A backend loads a bundle's vision and decoder graphs and runs them on numpy arrays:
``run_vision(pixel_values, keep) -> (image_embeds, kept_index)`` and
``run_decoder(feeds) -> dict of outputs``.
"""

import importlib

_MODULES = ("ort",)

for _m in _MODULES:
    importlib.import_module(f"{__name__}.{_m}")
