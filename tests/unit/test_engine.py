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
    from atp.engines import check_keep, engine_for_device

    assert engine_for_device(m, 89)[0] == "desktop"
    check_keep(entry, "vision", n)
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
    assert not (bundle / "engines").exists()
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


def _qdq_weights(model, bits: int, block: int = 16):
    """Weight-only QDQ as a quantizer emits it: every MatMul with a constant [Kin, Nout] weight reads
    DequantizeLinear(int8 per output channel | int4 blocks of ``block`` along Kin). Returns the new model."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    new_inits, nodes, done = [], [], 0
    for node in model.graph.node:
        w_name = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        if w_name in inits and len(inits[w_name].dims) == 2 and inits[w_name].dims[0] % block == 0:
            w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
            if bits == 8:
                scale = np.maximum(np.abs(w).max(axis=0), 1e-8) / 127.0  # [Nout], axis 1
                q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
                qt, st, attrs = numpy_helper.from_array(q, w_name + "_q"), numpy_helper.from_array(scale, w_name + "_s"), {"axis": 1}
            else:
                kin, nout = w.shape
                blocks = w.reshape(kin // block, block, nout)
                scale = np.maximum(np.abs(blocks).max(axis=1), 1e-8) / 7.0  # [Kin/block, Nout]
                q = np.clip(np.rint(blocks / scale[:, None, :]), -8, 7).astype(np.int8).reshape(kin, nout)
                qt = helper.make_tensor(w_name + "_q", TensorProto.INT4, q.shape, q.flatten().tolist())
                st, attrs = numpy_helper.from_array(scale, w_name + "_s"), {"axis": 0, "block_size": block}
            new_inits += [qt, st]
            nodes.append(helper.make_node("DequantizeLinear", [qt.name, st.name], [w_name + "_dq"], **attrs))
            node.input[1] = w_name + "_dq"
            done += 1
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(new_inits)  # fp32 originals stay for any other consumer (e.g. an Identity)
    onnx.checker.check_model(model)
    assert done > 0
    return model


@pytest.fixture(params=[pytest.param(16, marks=pytest.mark.slow), pytest.param(8, marks=pytest.mark.slow), 4],
                ids=["fp16", "int8-per-channel", "int4-block"])
def qdq_bundle(request, tiny_bundle, tmp_path):
    """The tiny bundle with weight-only QDQ graphs (the quantizer's output format), checked against the fp32 graphs in ORT."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from atp.bundle import finalize_manifest

    dst = tmp_path / f"qdq{request.param}"
    shutil.copytree(tiny_bundle, dst)
    for f in ("vision.onnx", "decoder.onnx"):
        if request.param == 16:  # fp16 tensors inside, fp32 graph I/O (TensorRT-RTX is strongly typed: this is its fp16)
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(dst / f)), keep_io_types=True)
        else:
            model = _qdq_weights(onnx.load(str(dst / f)), request.param)
        onnx.save(model, str(dst / f))
    px = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    feeds = {"pixel_values": px, "keep": np.array(8, np.int64)}
    ref = ort.InferenceSession(str(tiny_bundle / "vision.onnx")).run(None, feeds)
    got = ort.InferenceSession(str(dst / "vision.onnx")).run(None, feeds)
    rel = np.abs(got[0] - ref[0]).max() / np.abs(ref[0]).max()
    assert rel < {16: 0.01, 8: 0.05, 4: 0.5}[request.param], rel  # a lower-precision version of the same model
    m = read_manifest(dst, verify=False)
    finalize_manifest(dst, {k: v for k, v in m.items() if k not in ("files", "format_version")})
    return dst, request.param


@pytest.mark.trt
def test_build_qdq_engines(qdq_bundle):
    """fp16, int8 per-channel QDQ and int4 block QDQ graphs (vision with the gate + decoder) build with TensorRT-RTX."""
    bundle, bits = qdq_bundle
    entry = E.build_bundle_engines(bundle, E.EngineConfig(target="ada", max_sequence=32, max_context=64), builder=_rtx())
    m = read_manifest(bundle, verify=True)
    assert set(entry["graphs"]) == {"vision", "decoder"}
    for g in entry["graphs"].values():
        assert (bundle / g["file"]).stat().st_size > 10_000 and g["file"] in m["files"]
    assert entry["graphs"]["vision"]["profiles"][0]["values"]["keep"]["max"] == [m["pruning"]["num_visual_tokens"]]


def _manifest_with_engines():
    prof = {"name": "vision", "shapes": {}, "values": {"keep": {"min": [1], "opt": [8], "max": [16]}}}
    return {"engines": {"desktop": {"compute_capabilities": ["sm_86", "sm_89"], "graphs": {"vision": {"profiles": [prof]}}},
                        "hopper": {"compute_capabilities": ["sm_90"], "graphs": {}}}}


def test_engine_for_device_and_clear_errors():
    from atp.engines import check_keep, engine_for_device
    from atp.errors import BundleError, InputError

    m = _manifest_with_engines()
    assert engine_for_device(m, 89)[0] == "desktop" and engine_for_device(m, 90)[0] == "hopper"
    with pytest.raises(BundleError, match=r"built for another GPU \(desktop: sm_86, sm_89; hopper: sm_90\).*sm_87"):
        engine_for_device(m, 87)
    with pytest.raises(BundleError, match="no engines for target 'orin'"):
        engine_for_device(m, 87, target="orin")
    with pytest.raises(BundleError, match="no TensorRT engines"):
        engine_for_device({}, 87)
    entry = m["engines"]["desktop"]
    for k in (1, 16):
        check_keep(entry, "vision", k)
    for k in (0, 17):
        with pytest.raises(InputError, match=f"keep={k} is outside the vision engine's profile"):
            check_keep(entry, "vision", k)


@pytest.mark.trt
def test_rtx_with_plugins_is_refused_not_aborted(bundle, tmp_path):
    lib = tmp_path / "libatp_plugins.so"
    lib.write_bytes(b"")
    with pytest.raises(ConfigError, match="TensorRT-RTX cannot build graphs with atp plugin nodes"):
        E.build_bundle_engines(bundle, E.EngineConfig(target="ada", plugins=str(lib)), builder=_rtx())


def test_full_tensorrt_targets_the_local_gpu(monkeypatch):
    """Full TensorRT (faked: no GPU here) accepts a target that includes the local GPU and refuses others."""
    full = E.Builder(trt=None, name="tensorrt", version="10.14")
    monkeypatch.setattr(E, "local_compute_capability", lambda: 89)
    E.check_target(full, E.TARGETS["desktop"])
    E.check_target(full, E.TARGETS["ada"])
    with pytest.raises(ConfigError, match="orin needs sm_87.*GPU it runs on.*sm_89"):
        E.check_target(full, E.TARGETS["orin"])
    monkeypatch.setattr(E, "local_compute_capability", lambda: None)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        E.check_target(full, E.TARGETS["ada"])


def test_engine_help_examples_parse(capsys):
    import shlex

    from atp import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["engine", "--help"])
    assert exc.value.code == 0 and "example" in capsys.readouterr().out
    cmds = [ln.strip().split("  #")[0] for ln in cli.ENGINE_EPILOG.splitlines() if ln.strip().startswith("atp-export ")]
    assert len(cmds) == 3
    for cmd in cmds:
        args = cli.build_parser().parse_args(shlex.split(cmd)[1:])
        assert args.target in E.TARGETS


@pytest.mark.trt
@pytest.mark.parametrize("arch", ["next", "onevision", "idefics3"])
def test_anyres_vision_graph_builds_with_view_and_token_profiles(tmp_path, arch):
    """LLaVA-NeXT / OneVision: the vision graph's views and token_index (OneVision: token_index and token_weight
    [M, 4]) vary per image; the profile spans 1..tiles views and 1..N tokens from the manifest's token layout, and
    TensorRT-RTX builds it."""
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from tests.tiny import build_tiny_idefics3, build_tiny_llava_next, build_tiny_llava_onevision

    build = {"next": build_tiny_llava_next, "onevision": build_tiny_llava_onevision, "idefics3": build_tiny_idefics3}[arch]
    ckpt = build(tmp_path / "ckpt")
    bundle = tmp_path / arch
    export_bundle(adapter_for_checkpoint(ckpt).from_checkpoint(ckpt), bundle, validate=False)
    m = read_manifest(bundle)
    (prof,) = E.graph_profiles(m, "vision", E.EngineConfig(target="desktop"))
    tiles, n = m["token_layout"]["tiles"], m["pruning"]["num_visual_tokens"]
    assert prof["shapes"]["pixel_values"]["min"][0] == 1 and prof["shapes"]["pixel_values"]["max"][0] == tiles
    taps = [] if arch == "next" else [4]
    if arch == "idefics3":  # every view's tokens: no layout input
        assert set(prof["shapes"]) == {"pixel_values"}
    else:
        assert prof["shapes"]["token_index"] == {"min": [1, *taps], "opt": [n, *taps], "max": [n, *taps]}
    if taps and arch != "idefics3":
        assert prof["shapes"]["token_weight"] == prof["shapes"]["token_index"]
    entry = E.build_bundle_engines(bundle, E.EngineConfig(target="desktop", graphs=("vision",)), builder=_rtx())
    assert (bundle / entry["graphs"]["vision"]["file"]).stat().st_size > 10_000


@pytest.mark.trt
@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_dynamic_resolution_vision_graph_builds_with_patch_profiles(tmp_path, family):
    """Qwen2.5-VL: pixel_values [P, C*T*p*p], patch_pos [P, 2], window_inverse [P] and window_index [W, L] vary with
    the image; the profile spans
    one merged token's patches up to the pixel bound's N (min / opt / max), and TensorRT-RTX builds the graph."""
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from tests.tiny import build_tiny_qwen2_5_vl, build_tiny_qwen3_vl

    ckpt = {"qwen2.5-vl": build_tiny_qwen2_5_vl, "qwen3-vl": build_tiny_qwen3_vl}[family](tmp_path / "ckpt")
    bundle = tmp_path / "qwen"
    export_bundle(adapter_for_checkpoint(ckpt).from_checkpoint(ckpt), bundle, validate=False)
    m = read_manifest(bundle)
    (prof,) = E.graph_profiles(m, "vision", E.EngineConfig(target="desktop"))
    n, dim = m["pruning"]["num_visual_tokens"], m["preprocessing"]["dynamic"]
    patch_dim = 3 * dim["temporal"] * dim["patch"] ** 2
    opt = 4 * max(n // 2, m["pruning"]["default_keep"])
    assert prof["shapes"]["pixel_values"] == {"min": [4, patch_dim], "opt": [opt, patch_dim], "max": [4 * n, patch_dim]}
    assert prof["shapes"]["patch_pos"]["max"] == [4 * n, 2]
    if family == "qwen2.5-vl":  # windows
        length = dim["window"] ** 2 * 4
        assert prof["shapes"]["window_inverse"]["max"] == [4 * n]
        assert prof["shapes"]["window_index"] == {"min": [1, length], "opt": [max(1, n // 8), length], "max": [n, length]}
    else:  # the learned position table's taps
        assert prof["shapes"]["pos_index"]["max"] == prof["shapes"]["pos_weight"]["max"] == [4 * n, 4]
    assert prof["values"]["keep"] == {"min": [1], "opt": [m["pruning"]["default_keep"]], "max": [n]}
    entry = E.build_bundle_engines(bundle, E.EngineConfig(target="desktop", graphs=("vision",)), builder=_rtx())
    assert (bundle / entry["graphs"]["vision"]["file"]).stat().st_size > 10_000
