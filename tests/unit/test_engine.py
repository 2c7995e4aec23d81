"""TensorRT engine builder: profiles from the manifest, ahead-of-time builds with TensorRT-RTX, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest

from atp.bundle import read_manifest
from atp.errors import ConfigError, MissingDependencyError
from atp.export import engine as E


@pytest.fixture()
def bundle(tiny_bundle, tmp_path):
    """A private copy of the tiny bundle (engines are written into it)."""
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _rtx():
    try:
        return E.find_builder("tensorrt_rtx")
    except MissingDependencyError as exc:
        pytest.skip(f"tensorrt_rtx cannot be imported: {exc}")


def test_profiles_cover_every_keep_count(tiny_bundle):
    m = read_manifest(tiny_bundle)
    n = m["pruning"]["num_visual_tokens"]
    (vision,) = E.graph_profiles(m, "vision", E.EngineConfig(target="ada", max_batch=4))
    assert vision["values"]["keep"] == {"min": [1], "opt": [m["pruning"]["default_keep"]], "max": [n]}
    px = vision["shapes"]["pixel_values"]
    assert px["min"][0] == 1 and px["max"][0] == 4 and px["min"][1:] == px["max"][1:]
    prefill, decode = E.graph_profiles(m, "decoder", E.EngineConfig(target="ada", max_sequence=64, max_context=128))
    assert prefill["shapes"]["inputs_embeds"]["max"][1] == 64 and prefill["shapes"]["past_key_values.0.key"]["max"][2] == 0
    assert decode["shapes"]["inputs_embeds"]["max"][1] == 1
    assert decode["shapes"]["past_key_values.1.value"]["max"][2] == 128
    assert decode["shapes"]["attention_mask"]["max"][1] == 129


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown target 'xavier'.*orin"):
        E.EngineConfig(target="xavier")
    with pytest.raises(ConfigError, match="max-batch"):
        E.EngineConfig(target="orin", max_batch=0)


def test_no_builder_installed_is_a_clear_error():
    with pytest.raises(MissingDependencyError, match="no TensorRT builder is installed.*tensorrt-rtx"):
        E.find_builder("tensorrt_not_a_module")


@pytest.mark.trt
def test_build_vision_and_decoder_engines(bundle):
    builder = _rtx()
    before = read_manifest(bundle)
    entry = E.build_bundle_engines(bundle, E.EngineConfig(target="desktop", max_batch=2, max_sequence=64, max_context=96),
                                   builder=builder)
    m = read_manifest(bundle, verify=True)  # new files are listed with their sha256
    assert m["engines"]["desktop"] == json.loads(json.dumps(entry))
    assert entry["builder"] == "tensorrt_rtx" and entry["compute_capabilities"] == ["sm_86", "sm_89"]
    assert set(entry["graphs"]) == set(before["graphs"])
    n = before["pruning"]["num_visual_tokens"]
    for key, g in entry["graphs"].items():
        path = bundle / g["file"]
        assert path.is_file() and path.stat().st_size > 10_000 and g["file"] in m["files"]
        if key.startswith("vision"):
            keep = g["profiles"][0]["values"]["keep"]
            assert keep["min"] == [1] and keep["max"] == [n]
    assert [p["name"] for p in entry["graphs"]["decoder"]["profiles"]] == ["prefill", "decode"]
    assert not [p for p in (bundle / "engines").iterdir() if p.name.startswith(".")], "staging left behind"
    # rebuilding one graph replaces the target's engines and keeps the bundle verifiable
    E.build_bundle_engines(bundle, E.EngineConfig(target="desktop", graphs=("vision",)), builder=builder)
    m = read_manifest(bundle, verify=True)
    assert set(m["engines"]["desktop"]["graphs"]) == {"vision"}
    assert not (bundle / "engines/desktop/decoder.engine").exists()


@pytest.mark.trt
@pytest.mark.parametrize("target,arch", [("orin", "sm_87"), ("hopper", "sm_90")])
def test_rtx_refuses_archs_it_cannot_build(bundle, target, arch):
    with pytest.raises(ConfigError, match=f"{arch}.*TensorRT-RTX.*cannot build"):
        E.build_bundle_engines(bundle, E.EngineConfig(target=target), builder=_rtx())
    assert not (bundle / "engines").exists()


@pytest.mark.trt
def test_rtx_is_strongly_typed(bundle):
    with pytest.raises(ConfigError, match="strongly typed"):
        E.build_bundle_engines(bundle, E.EngineConfig(target="ada", fp16=True, graphs=("vision",)), builder=_rtx())


@pytest.mark.trt
def test_failed_build_leaves_bundle_untouched(bundle, monkeypatch):
    builder = _rtx()
    manifest = (bundle / "manifest.json").read_text()
    real = E.build_engine
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise E.EngineError("boom")
        return real(*a, **k)

    monkeypatch.setattr(E, "build_engine", flaky)
    with pytest.raises(E.EngineError, match="boom"):
        E.build_bundle_engines(bundle, E.EngineConfig(target="ada", max_sequence=32, max_context=32), builder=builder)
    assert (bundle / "manifest.json").read_text() == manifest
    assert list((bundle / "engines").iterdir()) == []
    read_manifest(bundle, verify=True)


@pytest.mark.trt
def test_cli_engine(bundle, capsys):
    from atp.cli import main

    _rtx()
    assert main(["engine", str(bundle), "--target", "orin"]) == 2
    assert "sm_87" in capsys.readouterr().err
    assert main(["engine", str(bundle), "--target", "ada", "--graphs", "vision"]) == 0
    out = capsys.readouterr()
    assert "engines/ada/vision.engine: vision" in out.out
    assert read_manifest(bundle)["engines"]["ada"]["compute_capabilities"] == ["sm_89"]
    assert main(["engine", str(bundle), "--target", "ada", "--graphs", "nope"]) == 2
    assert "no graph(s) ['nope']" in capsys.readouterr().err
