"""Architecture adapters, one file each, registered in ``atp.registry.ARCHITECTURES``.

Every module of this package (but ``base``) is imported, so a new architecture is a new file: no list to edit.
:func:`adapter_for_checkpoint` reads ``config.json`` and picks the adapter whose ``model_types`` lists the
checkpoint's ``model_type``.
"""

from __future__ import annotations

import json
from pathlib import Path

from atp.errors import CheckpointError
from atp.registry import ARCHITECTURES, import_submodules

import_submodules(__name__, __path__, skip=("base",))


def adapter_for_checkpoint(path: str | Path):
    """The adapter class for a local Hugging Face checkpoint folder.

    Raises:
        CheckpointError: missing folder or config.json, unreadable config, or a model_type
            no registered adapter supports.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist (give a local Hugging Face model folder, or 'demo')")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path} is not a Hugging Face checkpoint: config.json is missing")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({exc})") from None
    model_type = cfg.get("model_type")
    for name in ARCHITECTURES.names():
        adapter = ARCHITECTURES.get(name)
        if model_type in adapter.model_types:
            return adapter
    supported = sorted(t for n in ARCHITECTURES.names() for t in ARCHITECTURES.get(n).model_types)
    raise CheckpointError(
        f"unsupported architecture: {path} has model_type {model_type!r} "
        f"(architectures {cfg.get('architectures')}); atp exports: {', '.join(supported)}"
    )
