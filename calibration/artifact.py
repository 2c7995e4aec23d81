"""Calibration artifact: what ``atp-export calibrate`` learns about one model, read by ``atp-export onnx``.

An artifact is a directory::

    ARTIFACT/
      calibration.json          {"format": "atp-calibration", "version": 1,
                                 "model": {"fingerprint": <sha256>, "name": ...},
                                 "created": ..., "atp_version": ...,
                                 "retention": {...} | null, "quantization": {...} | null,
                                 "files": {"<section>.safetensors": {"sha256", "bytes"}}}
      <section>.safetensors     optional tensors of a section (numpy arrays, no torch needed)

It is generic: each top-level *section* (``retention``, ``quantization``, ...) is a plain JSON
dict owned by the code that calibrates it, plus an optional set of named tensors stored in
``<section>.safetensors``. Writers stage the directory and rename it into place; readers check
the format name, version, model fingerprint and file checksums, and refuse anything else with a
clear :class:`~atp.errors.CalibrationError`.

The model fingerprint is a sha256 over the model's config (minus paths and library versions),
then every state-dict entry's name, dtype, shape and a sha256 of its bytes: the same weights
loaded from another folder match, a retrained or resized model does not.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import atp
from atp.atomic import staged_directory
from atp.bundle import sha256_file
from atp.errors import CalibrationError

log = logging.getLogger(__name__)

FORMAT = "atp-calibration"
VERSION = 1
JSON_NAME = "calibration.json"
#: Sections every artifact of this version has (``null`` when not calibrated).
KNOWN_SECTIONS = ("retention", "quantization")
_RESERVED = {"format", "version", "model", "created", "atp_version", "files"}
# config keys that say where or with what a model was saved, not what it is
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype", "_attn_implementation",
                         "_attn_implementation_autoset", "attn_implementation"}


def _clean_config(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _clean_config(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))
                if k not in _VOLATILE_CONFIG_KEYS}
    if isinstance(obj, (list, tuple)):
        return [_clean_config(v) for v in obj]
    return obj


def model_fingerprint(config: Mapping, state_dict: Mapping) -> str:
    """sha256 identifying a model: its config and every weight's name, dtype, shape and bytes.

    Args:
        config: The model config as a dict (``model.config.to_dict()``); paths and library
            versions are ignored.
        state_dict: ``name -> tensor`` (torch tensors or numpy arrays).

    Returns:
        Hex digest.
    """
    h = hashlib.sha256()
    h.update(json.dumps(_clean_config(dict(config)), sort_keys=True, default=str).encode())
    for name in sorted(state_dict):
        t = state_dict[name]
        arr = t.detach().cpu().contiguous().numpy() if hasattr(t, "detach") else np.ascontiguousarray(t)
        h.update(f"\0{name}\0{arr.dtype}\0{list(arr.shape)}\0".encode())
        h.update(hashlib.sha256(arr.tobytes()).digest())
    return h.hexdigest()


def adapter_fingerprint(adapter) -> str:
    """:func:`model_fingerprint` of an architecture adapter's model (e.g. ``LlavaAdapter``)."""
    return model_fingerprint(adapter.model.config.to_dict(), adapter.model.state_dict())


class CalibrationArtifact:
    """An in-memory calibration artifact: model identity + named sections (+ tensors per section).

    Args:
        fingerprint: :func:`model_fingerprint` of the model it was made for.
        model_name: Human-readable source of the model (checkpoint path or built-in name).
        sections: Initial sections (``name -> dict or None``).

    Example:
        >>> art = CalibrationArtifact(fp, "demo")
        >>> art.set_section("retention", {"scorers": {"atp": {"alpha": 0.75}}})
        >>> art.save("build/calib-demo")
        >>> CalibrationArtifact.load("build/calib-demo", expect_fingerprint=fp).section("retention")
    """

    def __init__(self, fingerprint: str, model_name: str, sections: Mapping[str, dict | None] | None = None):
        if not isinstance(fingerprint, str) or len(fingerprint) != 64:
            raise CalibrationError(f"model fingerprint must be a sha256 hex digest, got {fingerprint!r}")
        self.fingerprint = fingerprint
        self.model_name = str(model_name)
        self.sections: dict[str, dict | None] = dict.fromkeys(KNOWN_SECTIONS)
        self._tensors: dict[str, dict[str, np.ndarray]] = {}
        self.meta: dict[str, Any] = {}
        for name, data in (sections or {}).items():
            self.set_section(name, data)

    # ------------------------------------------------------------------ sections
    def set_section(self, name: str, data: dict | None, tensors: Mapping[str, Any] | None = None) -> None:
        """Set (replace) a section: a JSON-serialisable dict (or None) and optional named tensors.

        Raises:
            CalibrationError: a reserved name, data that is not a dict, or non-JSON content.
        """
        if not isinstance(name, str) or not name.isidentifier() or name in _RESERVED:
            raise CalibrationError(f"invalid artifact section name {name!r}")
        if data is not None:
            if not isinstance(data, dict):
                raise CalibrationError(f"section {name!r} must be a dict or None, got {type(data).__name__}")
            try:
                json.dumps(data)
            except (TypeError, ValueError) as exc:
                raise CalibrationError(f"section {name!r} is not JSON-serialisable: {exc}") from None
        self.sections[name] = data
        if tensors:
            arrays = {str(k): (v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)) for k, v in tensors.items()}
            for k, v in arrays.items():
                if v.dtype.kind not in "biufc":
                    raise CalibrationError(f"tensor {k!r} of section {name!r} must be numeric, got dtype {v.dtype}")
            self._tensors[name] = arrays
        else:
            self._tensors.pop(name, None)

    def section(self, name: str) -> dict | None:
        """A section's dict, or None when it was not calibrated."""
        return self.sections.get(name)

    def tensors(self, name: str) -> dict[str, np.ndarray]:
        """A section's named tensors (empty when it has none)."""
        return dict(self._tensors.get(name, {}))

    def check_model(self, fingerprint: str, what: str = "this model") -> None:
        """Raise a :class:`CalibrationError` unless the artifact was made for ``fingerprint``."""
        if fingerprint != self.fingerprint:
            raise CalibrationError(
                f"calibration artifact was made for another model ({self.model_name}, fingerprint {self.fingerprint[:12]}...), "
                f"not for {what} (fingerprint {fingerprint[:12]}...); run `atp-export calibrate` on this model")

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION,
                "model": {"fingerprint": self.fingerprint, "name": self.model_name},
                **self.meta, **self.sections}

    # ------------------------------------------------------------------ disk
    def save(self, out: str | Path, overwrite: bool = False) -> Path:
        """Write the artifact directory atomically (staged in a sibling temp dir, then renamed).

        Raises:
            CalibrationError: ``out`` exists and ``overwrite`` is False.
        """
        from safetensors.numpy import save_file

        out = Path(out)
        with staged_directory(out, overwrite, CalibrationError, marker="calibration.json") as staging:
            files = {}
            for name, tensors in sorted(self._tensors.items()):
                fname = f"{name}.safetensors"
                save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(staging / fname))
                files[fname] = {"section": name, "sha256": sha256_file(staging / fname), "bytes": (staging / fname).stat().st_size}
            doc = self.to_json()
            doc.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            doc.setdefault("atp_version", atp.__version__)
            doc["files"] = files
            (staging / JSON_NAME).write_text(json.dumps(doc, indent=1) + "\n")
            for f in staging.iterdir():
                f.chmod(0o644)
            staging.chmod(0o755)
        log.info("calibration artifact written to %s", out)
        return out

    @classmethod
    def load(cls, path: str | Path, expect_fingerprint: str | None = None) -> "CalibrationArtifact":
        """Read and verify an artifact directory.

        Args:
            path: The directory written by :meth:`save`.
            expect_fingerprint: When given, refuse an artifact made for another model.

        Raises:
            CalibrationError: missing or unreadable files, another format or version, a checksum
                mismatch, or (with ``expect_fingerprint``) another model.
        """
        path = Path(path)
        jfile = path / JSON_NAME
        if not jfile.is_file():
            raise CalibrationError(f"{path} is not a calibration artifact: {JSON_NAME} is missing "
                                   "(make one with `atp-export calibrate`)")
        try:
            doc = json.loads(jfile.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{jfile} is not readable JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise CalibrationError(f"{jfile} is not an atp calibration artifact (format {doc.get('format') if isinstance(doc, dict) else None!r})")
        if doc.get("version") != VERSION:
            raise CalibrationError(f"{path}: calibration artifact version {doc.get('version')!r} is not supported by atp "
                                   f"{atp.__version__} (it reads version {VERSION}); re-run `atp-export calibrate`")
        model = doc.get("model") or {}
        try:
            art = cls(model.get("fingerprint"), model.get("name", "?"))
        except CalibrationError:
            raise CalibrationError(f"{jfile}: model fingerprint missing or malformed") from None
        art.meta = {k: doc[k] for k in ("created", "atp_version") if k in doc}
        for key, value in doc.items():
            if key not in _RESERVED:
                art.set_section(key, value)
        from safetensors.numpy import load_file

        for fname, info in (doc.get("files") or {}).items():
            f = path / fname
            if not f.is_file():
                raise CalibrationError(f"{path}: {fname} is missing (listed in {JSON_NAME})")
            if sha256_file(f) != info.get("sha256"):
                raise CalibrationError(f"{path}: {fname} does not match its sha256 in {JSON_NAME} (corrupt or modified)")
            try:
                art._tensors[info.get("section", Path(fname).stem)] = load_file(str(f))
            except Exception as exc:  # safetensors raises its own SafetensorError and others on corrupt data
                raise CalibrationError(f"{path}: {fname} is not a readable safetensors file ({type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else ''}); recalibrate") from None
        if expect_fingerprint is not None:
            art.check_model(expect_fingerprint)
        return art
