"""Atomic directory writes: stage in a temporary sibling directory, then rename into place.

Bundles, calibration artifacts and quantization plans are directories that readers must
never see half-written; they all go through :func:`staged_directory`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from atp.errors import AtpError


@contextlib.contextmanager
def staged_directory(out: str | Path, overwrite: bool = False, error: type[AtpError] = AtpError) -> Iterator[Path]:
    """Yield an empty staging directory next to ``out``; on success it replaces ``out``.

    The previous ``out`` (with ``overwrite``) stays in place until the rename and is removed
    after it; on any exception (KeyboardInterrupt included) the staging directory is removed
    and ``out`` is left untouched.

    Args:
        out: the directory to write.
        overwrite: replace an existing ``out``.
        error: the :class:`AtpError` subclass raised when ``out`` exists and ``overwrite`` is False.

    Raises:
        AtpError: (as ``error``) ``out`` exists and ``overwrite`` is False.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise error(f"{out} already exists; pass --overwrite or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        yield staging
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
