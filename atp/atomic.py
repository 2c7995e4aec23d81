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
def staged_directory(out: str | Path, overwrite: bool = False, error: type[AtpError] = AtpError,
                     marker: str | None = None) -> Iterator[Path]:
    """Yield an empty staging directory next to ``out``; on success it replaces ``out``.

    The previous ``out`` (with ``overwrite``) stays in place until the rename and is removed
    after it; on any exception (KeyboardInterrupt included) the staging directory is removed
    and ``out`` is left untouched. ``overwrite`` replaces only what this kind of writer made: an empty
    directory, or one holding ``marker`` (``manifest.json`` for bundles); never a file, a symlink or someone's
    other directory.

    Args:
        out: the directory to write.
        overwrite: replace an existing ``out``.
        error: the :class:`AtpError` subclass raised when ``out`` exists and ``overwrite`` is False.
        marker: the file that identifies a directory this writer may replace.

    Raises:
        AtpError: (as ``error``) ``out`` exists and ``overwrite`` is False, or ``out`` is not something it may replace.
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise error(f"{out} already exists; pass --overwrite or choose another --out")
        if out.is_symlink() or not out.is_dir():
            raise error(f"{out} is not a directory; --overwrite replaces only a directory this tool wrote (remove it "
                        "yourself or choose another --out)")
        if any(out.iterdir()) and marker and not (out / marker).is_file():
            raise error(f"{out} is a directory without {marker}: not one this tool wrote, so --overwrite leaves it alone "
                        "(choose another --out)")
    if out.parent.exists() and not out.parent.is_dir():
        raise error(f"cannot write {out}: {out.parent} is not a directory")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    except OSError as exc:
        raise error(f"cannot write {out}: {exc.strerror or exc}") from None
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
