"""Bundle format: a directory with ``manifest.json``, graphs, tokenizer and tables.

Bundles are written atomically (staged in a temporary sibling directory, then
renamed) and carry the sha256 of every file, so readers can refuse a corrupt or
tampered bundle with a clear message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Iterator

from atp.atomic import staged_directory
from atp.errors import BundleError
from atp.manifest import FORMAT_VERSION, READABLE_VERSIONS, parse

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


MAX_MANIFEST_BYTES = 64 * 10**6


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _bundle_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


@contextlib.contextmanager
def staged_bundle(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Stage a bundle in a temporary sibling directory and move it into place on success.

    Yields the staging directory; the caller writes files there and a partial manifest
    into ``staging / "manifest.json"`` (see :func:`finalize_manifest`). On any exception the
    staging directory is removed and ``out`` is left untouched.

    Raises:
        BundleError: ``out`` exists and ``overwrite`` is False.
    """
    with staged_directory(out, overwrite, BundleError, marker=MANIFEST_NAME) as staging:
        yield staging
        if not (staging / MANIFEST_NAME).exists():
            raise BundleError("internal: bundle staged without a manifest")


def finalize_manifest(staging: Path, manifest: dict) -> dict:
    """Add format version and per-file sha256 to ``manifest`` and write it into ``staging``."""
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["files"] = {
        p.relative_to(staging).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in _bundle_files(staging)
    }
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def read_manifest(bundle: Path, verify: bool = True, schema: bool = True) -> dict:
    """Read and check a bundle's manifest.

    Args:
        bundle: Bundle directory.
        verify: Also check every file's size and sha256 against the manifest.
        schema: Also check the fields runtimes read (:func:`atp.manifest.parse`); off only for tools that handle
            the file layer alone.

    Raises:
        BundleError: missing bundle or manifest, unparsable JSON, unknown format version,
            missing, extra-modified or tampered files.
    """
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} does not exist or is not a directory")
    mpath = bundle / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(f"{bundle} is not an atp bundle: {MANIFEST_NAME} is missing")
    if mpath.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{mpath} is {mpath.stat().st_size / 1e6:.0f} MB; a manifest is at most "
                          f"{MAX_MANIFEST_BYTES // 10**6} MB: re-export the bundle")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{mpath} is not valid JSON ({exc}); re-export the bundle") from None
    except RecursionError:
        raise BundleError(f"{mpath} nests JSON too deeply to be a manifest; re-export the bundle") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath} does not hold a JSON object; re-export the bundle")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise BundleError(
            f"bundle {bundle} has manifest format version {version!r}; this atp reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: re-export it with this atp, or use the atp release that wrote it"
        )
    if schema:
        try:
            parse(manifest)
        except BundleError as exc:
            raise BundleError(f"bundle {bundle}: {exc}") from None
    if verify:
        verify_files(bundle, manifest)
    return manifest


def confined(bundle: Path, rel: object) -> Path:
    """``bundle / rel`` for a path a manifest names, or a BundleError: it must be relative, stay inside the bundle
    (no ``..``, no absolute path) and cross no symlink (the file and every folder on the way are real)."""
    if not isinstance(rel, str) or not rel or rel.startswith(("/", "\\")) or "\\" in rel or "\0" in rel:
        raise BundleError(f"bundle {bundle}: the manifest names an unsafe path {rel!r} (paths are relative to the bundle)")
    parts = Path(rel).parts
    if any(p in ("..", "") for p in parts) or Path(rel).is_absolute():
        raise BundleError(f"bundle {bundle}: the manifest names an unsafe path {rel!r} (it leaves the bundle)")
    path = bundle
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise BundleError(f"bundle {bundle}: {rel} goes through a symlink; bundles hold real files only")
    return path


def manifest_paths(manifest: dict) -> list[str]:
    """Every file a runtime loads by a manifest path: graphs (+ external data), embeddings, tokenizer, token-layout
    arrays. Each must be listed (and so verified) in ``files``."""
    out = []
    for g in (manifest.get("graphs") or {}).values():
        if isinstance(g, dict):
            out += [g.get("file"), *(g.get("external_data") or [])]
            tok = g.get("tokenizer")
            if isinstance(tok, dict) and tok.get("file"):
                out.append(tok["file"])
    for key in ("embeddings", "tokenizer"):
        if isinstance(manifest.get(key), dict):
            out.append(manifest[key].get("file"))
    newline = (manifest.get("token_layout") or {}).get("newline") if isinstance(manifest.get("token_layout"), dict) else None
    if newline:
        out.append(newline)
    return [p for p in out if p is not None]


def verify_files(bundle: Path, manifest: dict) -> None:
    """Check size and sha256 of every file the manifest lists, that each listed path stays inside the bundle without
    symlinks, and that every file a runtime loads is one of them."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{bundle}/{MANIFEST_NAME} lists no files; re-export the bundle")
    for rel, meta in files.items():
        path = confined(bundle, rel)
        if not isinstance(meta, dict):
            raise BundleError(f"bundle {bundle}: the manifest's entry for {rel} is not an object; re-export the bundle")
        if not path.is_file():
            raise BundleError(f"bundle {bundle} is incomplete: {rel} is missing")
        if path.stat().st_size != meta.get("bytes"):
            raise BundleError(f"bundle {bundle}: {rel} has the wrong size (checksum mismatch); the file was modified or truncated")
        if sha256_file(path) != meta.get("sha256"):
            raise BundleError(f"bundle {bundle}: checksum mismatch for {rel}; the file was modified after export")
    for rel in manifest_paths(manifest):
        confined(bundle, rel)
        if rel not in files:
            raise BundleError(f"bundle {bundle}: the manifest loads {rel}, which it does not list with a checksum; "
                              "re-export the bundle")


def precision_label(manifest: dict) -> str:
    """Short precision of a bundle for report columns, e.g. ``fp32``, ``int4-g32``, ``mixed-4.40b-g64 kv-int8``."""
    p = manifest.get("precision") or {}
    label = p.get("weights", "fp32")
    if p.get("kv", "float32") != "float32":
        label += f" kv-{p['kv']}"
    return label


def kv_bytes_per_token(manifest: dict) -> int:
    """KV-cache bytes one token adds (keys + values, every layer, int8 scales included)."""
    info = manifest["model"]
    per = info["num_kv_heads"] * info["head_dim"]
    if (manifest.get("precision") or {}).get("kv") == "int8":
        return 2 * info["num_layers"] * (per + 4 * info["num_kv_heads"])
    return 2 * info["num_layers"] * per * 4
