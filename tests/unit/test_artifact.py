"""Calibration artifact: round trip, generic sections with tensors, refusal of other models / versions / corruption."""

import json

import numpy as np
import pytest

from atp.calibration.artifact import CalibrationArtifact, model_fingerprint
from atp.errors import CalibrationError


def _fp(seed=0, shape=(4, 3), config=None):
    rng = np.random.default_rng(seed)
    return model_fingerprint(config or {"hidden_size": 3, "_name_or_path": f"/somewhere/{seed}"}, {"w": rng.random(shape).astype(np.float32),
                                                                                                 "b": np.zeros(3, np.float32)})


def test_fingerprint_tracks_weights_shapes_and_config_not_paths():
    base = _fp(0)
    assert base == model_fingerprint({"hidden_size": 3, "_name_or_path": "/elsewhere"},
                                     {"w": np.random.default_rng(0).random((4, 3)).astype(np.float32), "b": np.zeros(3, np.float32)})
    assert _fp(1) != base                                  # other weights
    assert _fp(0, shape=(3, 4)) != base                    # same values, other shape
    assert _fp(0, config={"hidden_size": 4}) != base       # other config
    assert len(base) == 64


def test_round_trip_with_sections_and_tensors(tmp_path):
    fp = _fp(0)
    art = CalibrationArtifact(fp, "tiny")
    curves = np.arange(12, dtype=np.float32).reshape(3, 4)
    art.set_section("retention", {"scorers": {"atp": {"params": {"alpha": 0.75}}}}, {"atp.agreement": curves})
    art.set_section("quantization", {"plan": {"layers": 2}}, {"scales": np.ones((2, 5), np.float16)})
    art.save(tmp_path / "a")
    doc = json.loads((tmp_path / "a" / "calibration.json").read_text())
    assert doc["format"] == "atp-calibration" and doc["version"] == 1 and doc["model"] == {"fingerprint": fp, "name": "tiny"}
    assert sorted(doc["files"]) == ["quantization.safetensors", "retention.safetensors"]
    back = CalibrationArtifact.load(tmp_path / "a", expect_fingerprint=fp)
    assert back.section("retention") == art.section("retention")
    assert back.section("quantization") == {"plan": {"layers": 2}}
    np.testing.assert_array_equal(back.tensors("retention")["atp.agreement"], curves)
    assert back.tensors("quantization")["scales"].dtype == np.float16


def test_unset_sections_are_null(tmp_path):
    CalibrationArtifact(_fp(0), "tiny").save(tmp_path / "a")
    doc = json.loads((tmp_path / "a" / "calibration.json").read_text())
    assert doc["retention"] is None and doc["quantization"] is None and doc["files"] == {}
    assert CalibrationArtifact.load(tmp_path / "a").section("quantization") is None


def test_refuses_other_model(tmp_path):
    CalibrationArtifact(_fp(0), "tiny").save(tmp_path / "a")
    with pytest.raises(CalibrationError, match="made for another model"):
        CalibrationArtifact.load(tmp_path / "a", expect_fingerprint=_fp(1))


@pytest.mark.parametrize("field,value,needle", [("version", 2, "version 2 is not supported"),
                                                ("format", "something", "not an atp calibration artifact")])
def test_refuses_unknown_format_or_version(tmp_path, field, value, needle):
    CalibrationArtifact(_fp(0), "tiny").save(tmp_path / "a")
    f = tmp_path / "a" / "calibration.json"
    doc = json.loads(f.read_text())
    doc[field] = value
    f.write_text(json.dumps(doc))
    with pytest.raises(CalibrationError, match=needle):
        CalibrationArtifact.load(tmp_path / "a")


def test_refuses_corrupt_tensors_and_missing_json(tmp_path):
    art = CalibrationArtifact(_fp(0), "tiny")
    art.set_section("retention", {}, {"x": np.ones(3, np.float32)})
    art.save(tmp_path / "a")
    with open(tmp_path / "a" / "retention.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CalibrationError, match="does not match its sha256"):
        CalibrationArtifact.load(tmp_path / "a")
    with pytest.raises(CalibrationError, match="calibration.json is missing"):
        CalibrationArtifact.load(tmp_path)


def test_save_is_atomic_and_refuses_overwrite(tmp_path, monkeypatch):
    art = CalibrationArtifact(_fp(0), "tiny")
    art.save(tmp_path / "a")
    with pytest.raises(CalibrationError, match="already exists"):
        art.save(tmp_path / "a")

    import safetensors.numpy

    def fail(tensors, path):  # a write that dies half-way: a partial file, then an error
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    art2 = CalibrationArtifact(_fp(1), "tiny")
    art2.set_section("retention", {}, {"x": np.ones(2, np.float32)})
    monkeypatch.setattr(safetensors.numpy, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        art2.save(tmp_path / "b")
    with pytest.raises(OSError, match="disk full"):
        art2.save(tmp_path / "a", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert CalibrationArtifact.load(tmp_path / "a").fingerprint == _fp(0)  # the old one is intact
    monkeypatch.undo()
    art2.save(tmp_path / "a", overwrite=True)
    assert CalibrationArtifact.load(tmp_path / "a").fingerprint == _fp(1)


def test_bad_sections_are_refused():
    art = CalibrationArtifact(_fp(0), "tiny")
    for name in ("model", "files", "not a name"):
        with pytest.raises(CalibrationError, match="invalid artifact section name"):
            art.set_section(name, {})
    with pytest.raises(CalibrationError, match="not JSON-serialisable"):
        art.set_section("retention", {"x": object()})
    with pytest.raises(CalibrationError, match="fingerprint"):
        CalibrationArtifact("abc", "tiny")
    with pytest.raises(CalibrationError, match="numeric"):
        art.set_section("retention", {}, {"x": np.array([object()])})


def test_corrupt_safetensors_is_a_calibration_error(tmp_path):
    """A tensor file whose bytes were replaced (and its sha256 updated to match) is a CalibrationError naming it."""
    import json

    import numpy as np

    from atp.bundle import sha256_file
    from atp.calibration.artifact import CalibrationArtifact
    from atp.errors import CalibrationError

    art = CalibrationArtifact(_fp(), "tiny")
    art.set_section("retention", {"n": 1}, {"x": np.zeros(3, np.float32)})
    out = art.save(tmp_path / "art")
    doc = json.loads((out / "calibration.json").read_text())
    (fname,) = doc["files"]
    (out / fname).write_bytes(b"\x00" * 40)
    doc["files"][fname]["sha256"] = sha256_file(out / fname)
    (out / "calibration.json").write_text(json.dumps(doc))
    with pytest.raises(CalibrationError, match="not a readable safetensors file"):
        CalibrationArtifact.load(out)
