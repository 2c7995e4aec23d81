"""Quantized decoder export on the tiny LLaVA: ORT vs PyTorch fake-quant parity, greedy tokens, int8 KV,
mixed plans from calibration, gather-free MLP permutation, QDQ for TensorRT, clear errors."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from atp.config import ExportConfig, QuantConfig
from atp.errors import CalibrationError
from tests.conftest import random_image

# ORT MatMulNBits accuracy_level=4 quantizes activations to int8 per block inside the GEMM; the
# fake-quant reference does the same (apply_fake_quant(activations=True)). Stated tolerance on logits
# and KV (max abs diff; logits are O(5) here): 1e-4 for both accuracy_level 0 against the weight-only
# reference and level 4 against the W+A reference.
EXACT_ATOL = 1e-4
LM_HEAD_INT8_ATOL = 2e-2


@pytest.fixture(scope="module")
def adapter(tiny_ckpt):
    from atp.export.adapters import adapter_for_checkpoint

    return adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)


@pytest.fixture(scope="module")
def calib_tokens():
    return np.random.default_rng(0).integers(4, 290, 600).tolist()


@pytest.fixture(scope="module")
def mixed_artifact(adapter, calib_tokens, tmp_path_factory):
    from atp.calibration.quant_calibrate import calibrate_quantization, save_plan

    plan = calibrate_quantization(adapter.model, calib_tokens, bits=5.0, group_size=32, method="fisher", seq_len=128)
    return save_plan(tmp_path_factory.mktemp("calib") / "art", plan, adapter.model, "tiny")


def _export(adapter, tmp_path_factory, name, **quant):
    from atp.export.exporter import export_bundle

    out = tmp_path_factory.mktemp("qb") / name
    manifest = export_bundle(adapter, out, ExportConfig(quantization=QuantConfig(**quant)))
    return out, manifest


def _ort(path, level=None, optimize=True):
    import onnxruntime as ort

    model = onnx.load(str(path))
    if level is not None:
        for n in model.graph.node:
            for a in n.attribute:
                if n.op_type == "MatMulNBits" and a.name == "accuracy_level":
                    a.i = level
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:  # ORT would fuse DQ(int4) + MatMul into MatMulNBits with int8 activations
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _run(sess, args):
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, dict(zip(names, (a.numpy() for a in args))))


CASES = {
    "int4-sym-g32": dict(weights="int4", group_size=32),
    "int4-asym-g16": dict(weights="int4", group_size=16, symmetric=False),
    "int8": dict(weights="int8"),
}


@pytest.mark.parametrize("case", ["int4-sym-g32", pytest.param("int4-asym-g16", marks=pytest.mark.slow), "int8"])
def test_quantized_decoder_matches_fake_quant(adapter, tmp_path_factory, case):
    from atp.export.exporter import _decoder_example
    from atp.export.quantize import prepare_quantized_decoder

    q = QuantConfig(**CASES[case])
    bundle, manifest = _export(adapter, tmp_path_factory, case, **CASES[case])
    args = _decoder_example(adapter)
    for level, activations in ((0, False), (4, True)):
        _, reference, _ = prepare_quantized_decoder(adapter, q, activations=activations)
        with torch.no_grad():
            ref = [t.numpy() for t in reference(*args)]
        outs = _run(_ort(bundle / "decoder.onnx", level=level), args)
        for o, r in zip(outs, ref):
            np.testing.assert_allclose(o, r, atol=EXACT_ATOL, rtol=0)
    assert manifest["validation"]["decoder"]["logits_max_abs_diff"] < EXACT_ATOL
    ops = {n.op_type for n in onnx.load(str(bundle / "decoder.onnx"), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops
    assert manifest["precision"]["graphs"]["decoder"]["weights"].startswith(q.weights)
    # weights really shrank
    fp32_bytes = sum(m.out_features * m.in_features * 4 for m in reference.modules() if isinstance(m, torch.nn.Linear))
    assert manifest["graphs"]["decoder"]["weights"]["weight_bytes"] < fp32_bytes * (0.4 if q.weights == "int4" else 0.45)


def _greedy_reference(module, embeds, steps, table, kv_dtype="float32"):
    """Greedy decode with the PyTorch decoder module (same loop as Session.generate)."""
    info = module
    n_layers, n_kv, hd = len(info.layers), info.num_kv_heads, info.head_dim
    if kv_dtype == "int8":
        past = [torch.zeros(1, n_kv, 0, d, dtype=t) for _ in range(n_layers) for d, t in
                ((hd, torch.int8), (1, torch.float32), (hd, torch.int8), (1, torch.float32))]
    else:
        past = [torch.zeros(1, n_kv, 0, hd) for _ in range(2 * n_layers)]
    x = torch.from_numpy(embeds)
    length = x.shape[1]
    out = []
    with torch.no_grad():
        pos = torch.arange(length)[None]
        for _ in range(steps):
            total = length + len(out)
            res = module(x, torch.ones(1, total, dtype=torch.int64), pos, *past)
            token = int(res[0][0, -1].argmax())
            out.append(token)
            past = list(res[1:])
            x = torch.from_numpy(np.asarray(table[[token]], np.float32))[None]
            pos = torch.tensor([[total]])
    return out


@pytest.mark.parametrize("case", ["int4-sym-g32", "mixed", "int4-fused", "mixed-fused", pytest.param("int8-kv", marks=pytest.mark.slow)])
def test_greedy_tokens_equal_fake_quant(adapter, tmp_path_factory, mixed_artifact, case):
    from atp.export.quantize import prepare_quantized_decoder
    from atp.runtime import Session

    quant = {"int4-sym-g32": dict(weights="int4", group_size=32), "int8-kv": dict(weights="fp32", kv="int8"),
             "mixed": dict(weights="mixed", calibration=str(mixed_artifact)),
             "int4-fused": dict(weights="int4", group_size=32, decoder_graph="fused"),
             "mixed-fused": dict(weights="mixed", calibration=str(mixed_artifact), decoder_graph="fused")}[case]
    q = QuantConfig(**quant)
    bundle, manifest = _export(adapter, tmp_path_factory, f"greedy-{case}", **quant)
    session = Session(bundle)
    assert session.kv_dtype == q.kv
    if q.weights == "fp32":
        reference = adapter.decoder_module(kv_dtype=q.kv)
    else:
        _, reference, _ = prepare_quantized_decoder(adapter, q)
    for seed in range(2):
        image = random_image(seed)
        res = session.generate(image, "what colour is the circle", max_new_tokens=8, ignore_eos=True)
        from atp.runtime.preprocess import preprocess

        embeds, _ = session.run_vision(preprocess(image, manifest["preprocessing"]), session.default_keep, "x")
        ids = session.prompt_ids("what colour is the circle")
        ref = _greedy_reference(reference, session.inputs_embeds(ids, embeds[0]), 8, session.embeddings, q.kv)
        assert res.token_ids == ref


def test_mixed_plan_export(adapter, tmp_path_factory, mixed_artifact):
    from atp.calibration.quant_calibrate import load_plan
    from atp.export.exporter import _decoder_example
    from atp.export.quantize import prepare_quantized_decoder

    plan = load_plan(mixed_artifact, adapter)
    assert abs(plan.average_bits() - 5.0) < 0.01
    q = QuantConfig(weights="mixed", calibration=str(mixed_artifact))
    bundle, manifest = _export(adapter, tmp_path_factory, "mixed", **q.to_dict())
    model = onnx.load(str(bundle / "decoder.onnx"), load_external_data=False)
    nodes = model.graph.node
    n8 = [n for n in nodes if n.op_type == "MatMulNBits" and any(a.name == "bits" and a.i == 8 for a in n.attribute)]
    assert n8, "no int8 GEMM part in the mixed graph"
    gathers = [n.name for n in nodes if n.op_type == "Gather" and n.name.endswith("/Gather") and not n.name.startswith("/")]
    report = manifest["graphs"]["decoder"]["weights"]
    # gate/up of mixed MLPs absorb their permutation into down_proj: no gather for them
    assert report["gather_free_mixed_layers"], "no MLP permutation was absorbed"
    assert not any("gate_proj" in g or "up_proj" in g for g in gathers)
    assert report["gathers"] == len(gathers)
    args = _decoder_example(adapter)
    for level, activations in ((0, False), (4, True)):
        _, reference, _ = prepare_quantized_decoder(adapter, q, activations=activations)
        with torch.no_grad():
            ref = reference(*args)[0].numpy()
        np.testing.assert_allclose(_run(_ort(bundle / "decoder.onnx", level=level), args)[0], ref, atol=EXACT_ATOL, rtol=0)
    # the permuted module computes the same function as the original one in fp32
    from atp.calibration.mixed_precision import permute_mlp_features

    module = copy.deepcopy(adapter.decoder_module())
    permute_mlp_features(module, plan)
    with torch.no_grad():
        a, b = module(*args)[0], adapter.decoder_module()(*args)[0]
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=0)


# (batch, new tokens, past tokens): prefill, a multi-token step over a cache (GroupQueryAttention: batch 1 only), decode
FUSED_SHAPES = ((2, 3, 0), (1, 3, 2), (2, 1, 4))


@pytest.mark.parametrize("case", ["fp32", "int4-sym-g32", "mixed", pytest.param("int8", marks=pytest.mark.slow)])
def test_fused_decoder_graph(adapter, tmp_path_factory, mixed_artifact, case):
    """--decoder-graph fused (GroupQueryAttention, SkipSimplifiedLayerNorm, q/k/v and gate/up fused into one
    MatMulNBits each) matches PyTorch (fp32) and the fake-quant reference at accuracy_level 0 (weights only)
    and 4 (W+A) within EXACT_ATOL on prefill, multi-token and decode steps; node count ~12x below the traced graph."""
    from atp.export.exporter import _decoder_example
    from atp.export.quantize import prepare_quantized_decoder

    quant = {"fp32": dict(weights="fp32"), "int4-sym-g32": dict(weights="int4", group_size=32), "int8": dict(weights="int8"),
             "mixed": dict(weights="mixed", calibration=str(mixed_artifact))}[case]
    q = QuantConfig(**quant, decoder_graph="fused")
    bundle, manifest = _export(adapter, tmp_path_factory, f"fused-{case}", **q.to_dict())
    assert manifest["graphs"]["decoder"]["graph"] == "fused"
    assert manifest["validation"]["decoder"]["logits_max_abs_diff"] < EXACT_ATOL
    nodes = onnx.load(str(bundle / "decoder.onnx"), load_external_data=False).graph.node
    n_layers = adapter.model_info()["num_layers"]
    ops = [n.op_type for n in nodes]
    assert ops.count("GroupQueryAttention") == n_layers
    assert len(nodes) <= (40 if case == "mixed" else 16) * n_layers + 12, f"{len(nodes)} nodes"  # traced: ~220 per layer
    if case in ("int4-sym-g32", "int8"):  # q/k/v packed into one GEMM (no Split), gate/up into one + Split
        assert ops.count("MatMulNBits") == 4 * n_layers + 1
        gqa = [n for n in nodes if n.op_type == "GroupQueryAttention"]
        assert all(n.input[1] == "" and n.input[2] == "" for n in gqa)
    levels = ((None, None),) if case == "fp32" else ((0, False), (4, True))
    for level, activations in levels:
        if case == "fp32":
            reference = adapter.decoder_module()
        else:
            _, reference, _ = prepare_quantized_decoder(adapter, q, activations=activations)
        sess = _ort(bundle / "decoder.onnx", level=level)
        for batch, seq, past in FUSED_SHAPES:
            args = _decoder_example(adapter, batch=batch, seq=seq, past=past)
            with torch.no_grad():
                ref = [t.numpy() for t in reference(*args)]
            for j, (o, r) in enumerate(zip(_run(sess, args), ref)):
                # ORT 1.32's 8-bit MatMulNBits at accuracy_level 4 on an AVX-512 VNNI Xeon: in batch-2 prefill the
                # lm_head row of the second sequence differed from the reference by 0.009 (logits ~3) while every
                # present.* output matched to 2e-6 and the AVX2 EPYC matched exactly; a kernel-path difference
                # in ORT, not in the graph, so logits get a stated looser bound there.
                atol = LM_HEAD_INT8_ATOL if (j == 0 and case == "int8" and level == 4) else EXACT_ATOL
                np.testing.assert_allclose(o, r, atol=atol, rtol=0)


def test_fused_graph_needs_ort_and_float_kv():
    from atp.errors import ConfigError

    with pytest.raises(ConfigError, match="fused decoder graph"):
        QuantConfig(weights="int4", kv="int8", decoder_graph="fused")
    with pytest.raises(ConfigError, match="fused decoder graph"):
        QuantConfig(weights="int4", target="qdq", decoder_graph="fused")
    with pytest.raises(ConfigError, match="decoder graph must be"):
        QuantConfig(decoder_graph="jit")


def test_int8_kv_cache(adapter, tmp_path_factory):
    from atp.export.exporter import _decoder_example

    bundle, manifest = _export(adapter, tmp_path_factory, "kv8", weights="fp32", kv="int8")
    g = manifest["graphs"]["decoder"]
    dtypes = {i["name"]: i["dtype"] for i in g["inputs"]}
    assert dtypes["past_key_values.0.key"] == "int8" and dtypes["past_key_values.0.key_scale"] == "float"
    assert manifest["precision"]["kv"] == "int8" and g["kv_dtype"] == "int8"
    args = _decoder_example(adapter, kv_dtype="int8")
    with torch.no_grad():
        ref = adapter.decoder_module(kv_dtype="int8")(*args)
        dense = adapter.decoder_module()(*_decoder_example(adapter))
    outs = _run(_ort(bundle / "decoder.onnx"), args)
    np.testing.assert_allclose(outs[0], ref[0].numpy(), atol=EXACT_ATOL, rtol=0)
    # cached int8 values equal except for rare rounding ties (<= 1 step)
    for o, r in zip(outs[1:], ref[1:]):
        assert o.dtype == r.numpy().dtype
        assert np.abs(o.astype(np.float32) - r.numpy().astype(np.float32)).max() <= 1.0 + 1e-6
    # int8 KV stays close to the fp32 cache (the example's past is random, so only a loose bound)
    assert np.abs(ref[0].numpy() - dense[0].numpy()).max() <= 0.05 * np.abs(dense[0].numpy()).max()


def test_calibration_errors(adapter, tiny_ckpt, tmp_path, mixed_artifact):
    from atp.calibration.quant_calibrate import calibrate_quantization, load_plan
    from atp.errors import ConfigError
    from atp.export.adapters import adapter_for_checkpoint
    from tests.tiny import build_tiny_llava

    with pytest.raises(CalibrationError, match="empty"):
        calibrate_quantization(adapter.model, [], bits=4.4)
    with pytest.raises(ConfigError, match="out of range"):
        calibrate_quantization(adapter.model, [1, 2, 3], bits=9)
    with pytest.raises(ConfigError, match="does not divide"):
        calibrate_quantization(adapter.model, [1, 2, 3], bits=4.4, group_size=128)
    other = build_tiny_llava(tmp_path / "other", seed=1)
    other_adapter = adapter_for_checkpoint(other).from_checkpoint(other)
    with pytest.raises(CalibrationError, match="another model"):
        load_plan(mixed_artifact, other_adapter)
    with pytest.raises(CalibrationError):
        load_plan(tmp_path, adapter)


@pytest.mark.trt
def test_qdq_graph_builds_in_tensorrt_rtx(adapter, tmp_path_factory, mixed_artifact):
    """TensorRT target: opset-21 QDQ (block int4, per-channel int8) runs in ORT like the fake-quant
    reference and parses + builds in TensorRT-RTX ahead of time (no GPU)."""
    trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx is not installed (pip install tensorrt-rtx-cu13)")
    from atp.export.exporter import _decoder_example
    from atp.export.quantize import prepare_quantized_decoder

    q = QuantConfig(weights="mixed", calibration=str(mixed_artifact), target="qdq")
    bundle, _ = _export(adapter, tmp_path_factory, "qdq", **q.to_dict())
    model = onnx.load(str(bundle / "decoder.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    assert "MatMulNBits" not in ops and ops.count("DequantizeLinear") >= 2
    _, reference, _ = prepare_quantized_decoder(adapter, q)
    args = _decoder_example(adapter)
    with torch.no_grad():
        ref = reference(*args)[0].numpy()
    np.testing.assert_allclose(_run(_ort(bundle / "decoder.onnx", optimize=False), args)[0], ref, atol=EXACT_ATOL, rtol=0)

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(bundle / "decoder.onnx")):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        pytest.fail(f"TensorRT-RTX cannot parse the QDQ decoder: {errors[:3]}")
    info = adapter.model_info()
    profile = builder.create_optimization_profile()
    hd, kvh, d = info["head_dim"], info["num_kv_heads"], info["hidden_size"]
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if t.name == "inputs_embeds":
            profile.set_shape(t.name, (1, 1, d), (1, 8, d), (1, 32, d))
        elif t.name in ("attention_mask",):
            profile.set_shape(t.name, (1, 1), (1, 16), (1, 64))
        elif t.name == "position_ids":
            profile.set_shape(t.name, (1, 1), (1, 8), (1, 32))
        else:
            profile.set_shape(t.name, (1, kvh, 0, hd), (1, kvh, 8, hd), (1, kvh, 32, hd))
    config = builder.create_builder_config()
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    assert engine is not None and engine.nbytes > 0


def test_cli_calibrate_bits_then_export_mixed(tiny_ckpt, tmp_path, capsys):
    import json

    from atp.cli import main
    from tests.tiny import CORPUS

    text = tmp_path / "calib.txt"
    text.write_text("\n\n".join(f"{s} {i}" for i in range(100) for s in CORPUS))
    art = tmp_path / "art"
    assert main(["calibrate", str(tiny_ckpt), "--bits", "4.5", "--text", str(text), "--calib-tokens", "300",
                 "--out", str(art)]) == 0
    doc = json.loads((art / "calibration.json").read_text())
    assert doc["quantization"]["summary"]["average_bits"] == pytest.approx(4.5, abs=0.01)
    out = tmp_path / "bundle"
    assert main(["onnx", str(tiny_ckpt), "--out", str(out), "--weights", "mixed", "--calibration", str(art),
                 "--kv-cache", "int8"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"]["kv"] == "int8" and manifest["precision"]["weights"].startswith("mixed-4.5")
    capsys.readouterr()
    # clear errors, exit code 2, no traceback
    assert main(["calibrate", str(tiny_ckpt), "--bits", "9", "--out", str(tmp_path / "x")]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["onnx", str(tiny_ckpt), "--out", str(tmp_path / "y"), "--weights", "int4", "--group-size", "128"]) == 2
    assert "does not divide" in capsys.readouterr().err
    assert main(["onnx", str(tiny_ckpt), "--out", str(tmp_path / "z"), "--weights", "mixed"]) == 2
    assert "calibration artifact" in capsys.readouterr().err
    assert main(["calibrate", str(tiny_ckpt), "--out", str(tmp_path / "w")]) == 2
    assert "nothing to calibrate" in capsys.readouterr().err


# int8 vision tower + projector: ORT vs the PyTorch fake-quant reference (int8 weights per output feature,
# int8 activations per 32-block like MatMulNBits accuracy_level=4). Embeddings are O(1-5) here. Stated tolerance:
# >= 90% of kept tokens within 1e-4 (max abs over the embedding), every token within 0.1: ORT computes the activation
# scale in its own float order, so an element sitting on a rounding boundary can land one int8 step away (seen: 1 token
# row of 64 off by 0.047 through the tower's later layers and the projector).
VISION_ATOL, VISION_FLIP_ATOL = 1e-4, 0.1


@pytest.mark.parametrize("form", ["int8", "int8-blocks"])
def test_int8_vision_graph(adapter, tmp_path_factory, tiny_bundle, form):
    """Both int8 vision forms: W8A8 dynamic (DynamicQuantizeLinear + MatMulInteger) and MatMulNBits bits=8, each
    against the PyTorch fake-quant reference of its own arithmetic (kept sets equal, embeddings within the stated
    tolerance) and against the fp32 graph (kept sets mostly equal)."""
    import onnxruntime as ort

    from atp.export.quantize_vision import fake_quant_vision
    from atp.registry import SCORERS

    bundle, manifest = _export(adapter, tmp_path_factory, f"vision-{form}", weights="fp32", vision=form)
    report = manifest["graphs"]["vision"]["weights"]
    assert report["weights"] == "int8" and report["form"] == form and report["quantized_layers"] > 0
    assert manifest["precision"]["graphs"]["vision"]["weights"] == form
    assert manifest["validation"]["vision"]["same_kept_index"]
    # the gate's CLS-attention score path re-reads the last layer's q_proj weight: it stays fp32 (the score path's
    # keys are the layer's own k_proj output, which the exporter shares)
    shared = [n for n, why in report["kept_fp32"].items() if why.startswith("shared")]
    assert shared == [f"layers.{len(adapter.vision_module(SCORERS.get('cls')()).tower.layers) - 1}"
                      ".self_attn.q_proj"], report["kept_fp32"]
    model = onnx.load(str(bundle / "vision.onnx"), load_external_data=False)
    op = "MatMulInteger" if form == "int8" else "MatMulNBits"
    assert sum(n.op_type == op for n in model.graph.node) == report["quantized_layers"]
    assert manifest["graphs"]["vision"]["weights"]["weight_bytes"] < 0.5 * sum(
        t.ByteSize() for t in onnx.load(str(tiny_bundle / "vision.onnx")).graph.initializer)

    so = ort.SessionOptions()
    so.log_severity_level = 3
    q8 = ort.InferenceSession(str(bundle / "vision.onnx"), so, providers=["CPUExecutionProvider"])
    fp = ort.InferenceSession(str(tiny_bundle / "vision.onnx"), so, providers=["CPUExecutionProvider"])

    reference = fake_quant_vision(adapter.vision_module(SCORERS.get(manifest["pruning"]["scorer"])().eval()), report["quantized"],
                                  form)
    g = torch.Generator().manual_seed(1)
    n = adapter.num_visual_tokens
    overlaps, diffs = [], []
    for keep in (n // 4, n // 2):
        px = torch.randn(4, 3, adapter.image_size, adapter.image_size, generator=g)
        feeds = {"pixel_values": px.numpy(), "keep": np.array(keep, np.int64)}
        emb8, idx8 = q8.run(None, feeds)
        _, idx32 = fp.run(None, feeds)
        with torch.no_grad():
            ref_emb, ref_idx = reference(px, torch.tensor(keep))
        assert [set(r) for r in idx8.tolist()] == [set(r) for r in ref_idx.tolist()]
        diffs += np.abs(emb8 - ref_emb.numpy()).max(-1).ravel().tolist()  # per kept token
        overlaps += [len(set(a) & set(b)) / keep for a, b in zip(idx8.tolist(), idx32.tolist())]
    diffs = np.array(diffs)
    assert (diffs <= VISION_ATOL).mean() >= 0.9 and diffs.max() <= VISION_FLIP_ATOL, diffs
    # against the fp32 graph the kept sets may differ at near-tied scores of this random tiny tower; most agree
    assert np.mean(overlaps) >= 0.9, overlaps
