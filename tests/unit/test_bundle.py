import json
import shutil

import pytest

from atp.bundle import FORMAT_VERSION, finalize_manifest, read_manifest, staged_bundle
from atp.errors import BundleError


def _write(out, payload=b"weights"):
    with staged_bundle(out) as staging:
        (staging / "graph.onnx").write_bytes(payload)
        (staging / "tok").mkdir()
        (staging / "tok" / "tokenizer.json").write_text("{}")
        finalize_manifest(staging, {"graphs": {}})


def test_roundtrip_and_checksums(tmp_path):
    _write(tmp_path / "b")
    m = read_manifest(tmp_path / "b", schema=False)
    assert m["format_version"] == FORMAT_VERSION
    assert set(m["files"]) == {"graph.onnx", "tok/tokenizer.json"}
    assert m["files"]["graph.onnx"]["bytes"] == 7


def test_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_bundle(tmp_path / "b") as staging:
            (staging / "graph.onnx").write_bytes(b"x")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_existing_bundle_needs_overwrite(tmp_path):
    _write(tmp_path / "b")
    with pytest.raises(BundleError, match="already exists"):
        _write(tmp_path / "b")
    with staged_bundle(tmp_path / "b", overwrite=True) as staging:
        (staging / "new.onnx").write_bytes(b"new")
        finalize_manifest(staging, {})
    assert set(read_manifest(tmp_path / "b", schema=False)["files"]) == {"new.onnx"}
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


@pytest.mark.parametrize("tamper,msg", [
    (lambda b: (b / "graph.onnx").write_bytes(b"weightz"), "checksum mismatch for graph.onnx"),
    (lambda b: (b / "graph.onnx").write_bytes(b"weights!"), "wrong size"),
    (lambda b: (b / "tok" / "tokenizer.json").unlink(), "tok/tokenizer.json is missing"),
    (lambda b: (b / "manifest.json").write_text("{nope"), "not valid JSON"),
    (lambda b: (b / "manifest.json").unlink(), "manifest.json is missing"),
])
def test_tampered_bundle_is_refused(tmp_path, tamper, msg):
    _write(tmp_path / "b")
    tamper(tmp_path / "b")
    with pytest.raises(BundleError, match=msg):
        read_manifest(tmp_path / "b", schema=False)


def test_unknown_version_is_refused(tmp_path):
    _write(tmp_path / "b")
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    m["format_version"] = 99
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="format version 99"):
        read_manifest(tmp_path / "b", verify=False, schema=False)


def _edit(bundle, fn):
    m = json.loads((bundle / "manifest.json").read_text())
    fn(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("edit,msg", [
    (lambda m, outside: m["files"].update({"../outside.txt": outside}), "leaves the bundle"),
    (lambda m, outside: m["files"].update({"/etc/hostname": outside}), "unsafe path"),
    (lambda m, outside: m.update(graphs={"decoder": {"file": "../outside.txt"}}), "leaves the bundle"),
    (lambda m, outside: m.update(graphs={"decoder": {"file": "unlisted.onnx"}}), "does not list with a checksum"),
    (lambda m, outside: m["files"].update({"tok/tokenizer.json": "not an object"}), "is not an object"),
])
def test_verification_confines_every_path(tmp_path, edit, msg):
    """Issue 20: a files entry outside the bundle (even with its real sha256), a graph outside it or not listed, a
    malformed entry: all refused by verification."""
    from atp.bundle import sha256_file

    _write(tmp_path / "b")
    (tmp_path / "outside.txt").write_text("secret")
    (tmp_path / "b" / "unlisted.onnx").write_bytes(b"x")
    outside = {"sha256": sha256_file(tmp_path / "outside.txt"), "bytes": 6}
    _edit(tmp_path / "b", lambda m: edit(m, outside))
    with pytest.raises(BundleError, match=msg):
        read_manifest(tmp_path / "b", schema=False)


def test_symlinks_in_a_bundle_are_refused(tmp_path):
    import os

    _write(tmp_path / "b")
    (tmp_path / "real.onnx").write_bytes(b"weights")
    os.replace(tmp_path / "b" / "graph.onnx", tmp_path / "moved.onnx")
    os.symlink(tmp_path / "real.onnx", tmp_path / "b" / "graph.onnx")  # same bytes, same checksum
    with pytest.raises(BundleError, match="symlink"):
        read_manifest(tmp_path / "b", schema=False)


def test_deeply_nested_manifest_is_a_clear_error(tmp_path):
    _write(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nests JSON too deeply"):
        read_manifest(tmp_path / "b", verify=False, schema=False)


def test_object_npy_and_escape_sequences(tiny_bundle, tmp_path, capsys):
    """An object (pickled) embedding table is refused, not unpickled; inspect prints manifest strings with terminal
    escape sequences escaped."""
    import numpy as np

    from atp.bundle import finalize_manifest
    from atp.cli import main
    from atp.runtime import Session

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    np.save(b / "embed_tokens.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    m = json.loads((b / "manifest.json").read_text())
    m["prompt"]["template"] = "\x1b[31mUSER:\x1b[0m <image>\n{prompt} ASSISTANT:"
    m["source"]["checkpoint"] = "/models/\x1b]0;owned\x07evil"  # printed as is before: a terminal title change
    (b / "manifest.json").unlink()
    finalize_manifest(b, {k: v for k, v in m.items() if k not in ("files", "format_version")})
    with pytest.raises(BundleError, match="not a numeric .npy array"):
        Session(b)
    assert main(["inspect", str(b)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "USER" in out and "owned" in out, out
