"""``atp-export calibrate ... --bits B``, the quantization side: salience + bit allocation into an artifact.

The plan is the ``quantization`` section of a calibration artifact (``calibration.json`` +
``quantization.safetensors``). :mod:`atp.calibration.artifact` (format, fingerprint, checksums) is
used when present; otherwise a compatible minimal writer/reader here keeps this path working alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from atp.calibration.mixed_precision import QuantPlan, allocate, check_bits, model_shapes
from atp.calibration.salience import collect_stats, compute_salience, layer_sensitivity
from atp.errors import CalibrationError

log = logging.getLogger(__name__)

SECTION = "quantization"


def _fingerprint(model) -> str:
    try:
        from atp.calibration.artifact import model_fingerprint
    except ImportError:  # the artifact module lives on another branch until merged
        model_fingerprint = _model_fingerprint
    return model_fingerprint(model.config.to_dict(), model.state_dict())


def _model_fingerprint(config, state_dict) -> str:
    """Same algorithm as atp.calibration.artifact.model_fingerprint (config minus volatile keys + every tensor)."""
    volatile = {"_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype", "_attn_implementation",
                "_attn_implementation_autoset", "attn_implementation"}

    def clean(o):
        if isinstance(o, dict):
            return {str(k): clean(v) for k, v in sorted(o.items(), key=lambda kv: str(kv[0])) if k not in volatile}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    h = hashlib.sha256()
    h.update(json.dumps(clean(dict(config)), sort_keys=True, default=str).encode())
    for name in sorted(state_dict):
        arr = state_dict[name].detach().cpu().contiguous().numpy()
        h.update(f"\0{name}\0{arr.dtype}\0{list(arr.shape)}\0".encode())
        h.update(hashlib.sha256(arr.tobytes()).digest())
    return h.hexdigest()


def calibrate_quantization(model, token_ids: list[int], bits: float, group_size: int = 32, symmetric: bool = True,
                           method: str = "fisher", seq_len: int = 512) -> QuantPlan:
    """Salience from calibration tokens, then a mixed int8/int4 plan at ``bits`` average bits.

    Args:
        model: Causal LM or LLaVA (text-only calibration).
        token_ids: Calibration token stream (cut into ``seq_len`` windows).
        bits: Average weight bits in [4, 8].

    Raises:
        ConfigError: bits out of range, group size not dividing a layer's inputs.
        CalibrationError: empty calibration data.
    """
    import torch

    bits = check_bits(bits)
    shapes = model_shapes(model)
    from atp.calibration.quant_reference import check_group_size

    for n, (_, k) in shapes.items():
        check_group_size(group_size, k, f" of {n}")
    if len(token_ids) < 2:
        raise CalibrationError("calibration data is empty: give at least 2 tokens of text")
    windows = [token_ids[i:i + seq_len] for i in range(0, len(token_ids), seq_len)]
    windows = [w for w in windows if len(w) >= 2]
    log.info("salience (%s) over %d tokens in %d windows", method, len(token_ids), len(windows))
    stats = collect_stats(model, (torch.tensor([w]) for w in windows), method)
    sal = compute_salience(model, stats, group_size, symmetric)
    plan = allocate(sal, shapes, bits, group_size, symmetric, method)
    top = sorted(layer_sensitivity(sal).items(), key=lambda kv: -kv[1])[:5]
    log.info("most sensitive layers: %s", ", ".join(f"{n} {v:.3g}" for n, v in top))
    return plan


def save_plan(out: str | Path, plan: QuantPlan, model, model_name: str, overwrite: bool = False,
              extra: dict | None = None, add_to_existing: bool = False) -> Path:
    """Write a calibration artifact with ``plan`` as its quantization section, or (``add_to_existing``)
    set that section in the artifact already at ``out`` (made for the same model)."""
    data, tensors = plan.to_section()
    if extra:
        data.update(extra)
    fp = _fingerprint(model)
    try:
        from atp.calibration.artifact import CalibrationArtifact
    except ImportError:
        return _save_minimal(Path(out), data, tensors, fp, model_name, overwrite or add_to_existing)
    out = Path(out)
    if add_to_existing and out.exists():
        art = CalibrationArtifact.load(out, expect_fingerprint=fp)
        overwrite = True
    else:
        art = CalibrationArtifact(fp, model_name)
    art.set_section(SECTION, data, tensors)
    return art.save(out, overwrite=overwrite)


def run_calibrate_quantization(adapter, out: str | Path, bits: float, group_size: int = 32, symmetric: bool = True,
                               method: str = "fisher", text: str | None = None, tokens: int = 16384, seq_len: int = 512,
                               overwrite: bool = False, add_to_existing: bool = False) -> QuantPlan:
    """``atp-export calibrate ... --bits B``: calibrate on the ``calibration`` split of ``text`` (a file) or of
    the fortunes corpus and write the plan into the artifact at ``out``."""
    from atp.calibration.text_corpus import corpus_texts, token_stream

    bits = check_bits(bits)
    if tokens < 2:
        raise CalibrationError(f"--calib-tokens must be >= 2, got {tokens}")
    out = Path(out)
    if out.exists() and not (overwrite or add_to_existing):
        raise CalibrationError(f"{out} already exists; pass --overwrite or choose another --out")
    ids = token_stream(adapter.tokenizer, corpus_texts("calibration", text), tokens)
    plan = calibrate_quantization(adapter.model, ids, bits, group_size, symmetric, method, seq_len)
    source = text or "Debian package fortunes (calibration split)"
    save_plan(out, plan, adapter.model, adapter.source, overwrite=overwrite,
              extra={"data": {"source": source, "tokens": len(ids), "seq_len": seq_len}}, add_to_existing=add_to_existing)
    return plan


def _save_minimal(out: Path, data: dict, tensors: dict, fp: str, model_name: str, overwrite: bool) -> Path:
    from safetensors.numpy import save_file

    from atp.atomic import staged_directory
    from atp.bundle import sha256_file

    with staged_directory(out, overwrite, CalibrationError, marker="calibration.json") as staging:
        fname = f"{SECTION}.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(staging / fname))
        doc = {"format": "atp-calibration", "version": 1, "model": {"fingerprint": fp, "name": model_name},
               "retention": None, SECTION: data,
               "files": {fname: {"section": SECTION, "sha256": sha256_file(staging / fname), "bytes": (staging / fname).stat().st_size}}}
        (staging / "calibration.json").write_text(json.dumps(doc, indent=1) + "\n")
    return out


def load_plan(path: str | Path, model_or_adapter) -> QuantPlan:
    """The quantization plan of an artifact, checked against the model it is applied to.

    Raises:
        CalibrationError: missing/corrupt artifact, no quantization section, or another model.
    """
    model = getattr(model_or_adapter, "model", model_or_adapter)
    fp = _fingerprint(model)
    path = Path(path)
    try:
        from atp.calibration.artifact import CalibrationArtifact
    except ImportError:
        CalibrationArtifact = None
    if CalibrationArtifact is not None:
        art = CalibrationArtifact.load(path, expect_fingerprint=fp)
        data, tensors = art.section(SECTION), art.tensors(SECTION)
    else:
        data, tensors = _load_minimal(path, fp)
    if data is None:
        raise CalibrationError(f"calibration artifact {path} has no quantization plan; run `atp-export calibrate ... --bits B`")
    return QuantPlan.from_section(data, tensors)


def _load_minimal(path: Path, fp: str) -> tuple[dict | None, dict]:
    from safetensors.numpy import load_file

    from atp.bundle import sha256_file

    j = path / "calibration.json"
    if not j.is_file():
        raise CalibrationError(f"{path} is not a calibration artifact (calibration.json missing)")
    try:
        doc = json.loads(j.read_text())
    except json.JSONDecodeError as exc:
        raise CalibrationError(f"{j} is not valid JSON ({exc})") from None
    if doc.get("format") != "atp-calibration" or doc.get("version") != 1:
        raise CalibrationError(f"{path}: unknown calibration artifact format {doc.get('format')!r} version {doc.get('version')!r}")
    theirs = (doc.get("model") or {}).get("fingerprint", "")
    if theirs != fp:
        raise CalibrationError(f"calibration artifact {path} was made for another model ({(doc.get('model') or {}).get('name')}, "
                               f"fingerprint {str(theirs)[:12]}...), not this one ({fp[:12]}...); run `atp-export calibrate` on this model")
    fname = f"{SECTION}.safetensors"
    tensors = {}
    if (path / fname).is_file():
        meta = doc.get("files", {}).get(fname, {})
        if meta.get("sha256") != sha256_file(path / fname):
            raise CalibrationError(f"{path}/{fname}: checksum mismatch; the artifact was modified, re-run calibration")
        tensors = load_file(str(path / fname))
    return doc.get(SECTION), tensors
