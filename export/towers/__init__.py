"""Vision towers, one file each, registered in ``atp.registry.TOWERS`` by the Hugging Face ``model_type`` of the
vision config they read (``clip_vision_model``, ``siglip_vision_model``, ...).

A tower runs the encoder up to the layer the architecture reads and returns a :class:`~atp.export.towers.base.TowerOutput`:
the feature tokens, the patch grid, a saliency (CLS attention where the tower has a CLS token, a CLS-free stand-in
where it has none) and the key metric VisionZip's merge uses. The gate (``atp.export.vision``) never looks inside.
"""

from __future__ import annotations

from atp.export.towers.base import Tower, TowerOutput, tower_class, tower_for
from atp.registry import import_submodules

import_submodules(__name__, __path__, skip=("base",))

__all__ = ["Tower", "TowerOutput", "tower_class", "tower_for"]
