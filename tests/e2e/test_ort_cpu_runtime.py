"""The Python runtime with atp's ORT CPU kernels: an int4 bundle's MatMulNBits nodes run on atp.cpu::MatMulInt4
with the MLPs' SwiGLU folded in (both recorded), greedy tokens equal the MatMulNBits session's, decoder logits agree within 1e-5 of their
scale, and a kernel library named by path must exist (clear error)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from atp.config import ExportConfig, QuantConfig
from atp.errors import AtpError
from tests.conftest import random_image
from tests.unit.test_ort_cpu_kernels import ROOT, kernels  # noqa: F401  (module fixture: builds the library)

DEPS = Path(os.environ.get("ATP_CPP_BUILD_DIR", ROOT / "build" / "cpp")) / "deps"  # as the kernels fixture


@pytest.fixture(scope="module")
def int4_bundle(tiny_ckpt, tmp_path_factory):
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle

    out = tmp_path_factory.mktemp("qb") / "int4-g32-fused"
    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    export_bundle(adapter, out, ExportConfig(quantization=QuantConfig(weights="int4", group_size=32, decoder_graph="fused")))
    return out


def test_int4_bundle_runs_on_matmulint4_with_equal_tokens(int4_bundle, kernels, monkeypatch):  # noqa: F811
    from atp.runtime import Session

    monkeypatch.setenv("ATP_ORT_CPU_KERNELS", "off")
    plain = Session(int4_bundle)
    assert plain.backend.kernels is None and not plain.backend.swapped
    monkeypatch.setenv("ATP_ORT_CPU_KERNELS", str(kernels.path))
    for isa in {kernels.isa, "scalar"}:  # the fast path this CPU has and the portable one
        monkeypatch.setenv("ATP_ORT_CPU_ISA", isa)
        ours = Session(int4_bundle)
        counts = ours.backend.swapped["decoder"]
        assert counts["matmulint4"] == 2 * 4 + 1  # per layer: fused qkv, o, fused gate_up, down; plus lm_head (2 layers)
        assert counts["swiglu"] == 2  # every MLP's Split/Sigmoid/Mul/Mul folded into its gate_up GEMM
        for seed in range(2):
            image = random_image(seed)
            a = plain.generate(image, "what colour is the circle", max_new_tokens=8, ignore_eos=True)
            b = ours.generate(image, "what colour is the circle", max_new_tokens=8, ignore_eos=True)
            assert a.token_ids == b.token_ids, (isa, seed)
        dec_in = {i.name: i for i in plain.backend.sessions["decoder"].get_inputs()}
        rng = np.random.default_rng(0)
        feeds = {}
        for name, i in dec_in.items():
            shape = [d if isinstance(d, int) else {"batch": 1, "sequence": 5, "total_sequence": 8, "past_sequence": 3}.get(d, 1)
                     for d in i.shape]
            feeds[name] = (np.ones(shape, np.int64) if "int64" in i.type else rng.standard_normal(shape).astype(np.float32))
        feeds["position_ids"] = np.arange(3, 8, dtype=np.int64)[None]
        la = plain.backend.run_decoder(feeds)["logits"]
        lb = ours.backend.run_decoder(feeds)["logits"]
        assert np.abs(la - lb).max() <= 1e-5 * np.abs(la).max() + 1e-6, isa


@pytest.fixture(scope="module")
def mixed_plan(tiny_ckpt, tmp_path_factory):
    from atp.calibration.quant_calibrate import calibrate_quantization, save_plan
    from atp.export.adapters import adapter_for_checkpoint

    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    tokens = np.random.default_rng(0).integers(4, 290, 600).tolist()
    plan = calibrate_quantization(adapter.model, tokens, bits=5.0, group_size=32, method="fisher", seq_len=128)
    return save_plan(tmp_path_factory.mktemp("calib") / "art", plan, adapter.model, "tiny")


@pytest.mark.parametrize("graph", ["traced", "fused"])
@pytest.mark.parametrize("weights", ["int4", "int8", "mixed"])
def test_every_graph_form_and_precision_runs_on_the_kernels(tiny_ckpt, tmp_path, kernels, mixed_plan, monkeypatch,  # noqa: F811
                                                            graph, weights):
    """Traced and fused decoders at int4 / int8 / mixed: the session is created (the traced graphs used to abort the
    process in shape inference), MatMulNBits nodes are swapped, and greedy tokens equal the MatMulNBits session's."""
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    quant = {"int4": {"weights": "int4", "group_size": 32}, "int8": {"weights": "int8"},
             "mixed": {"weights": "mixed", "calibration": str(mixed_plan)}}[weights]
    out = tmp_path / f"{weights}-{graph}"
    adapter = adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt)
    export_bundle(adapter, out, ExportConfig(quantization=QuantConfig(decoder_graph=graph, **quant)), validate=False)
    monkeypatch.setenv("ATP_ORT_CPU_KERNELS", "off")
    plain = Session(out)
    monkeypatch.setenv("ATP_ORT_CPU_KERNELS", str(kernels.path))
    ours = Session(out)
    counts = ours.backend.swapped["decoder"]
    assert counts["matmulint4" if weights != "int8" else "matmulint8"] > 0, counts
    if weights == "mixed":
        assert counts["matmulint8"] > 0, counts  # the int8 part of the mixed layers
    for seed in range(2):
        image = random_image(seed)
        a = plain.generate(image, "what colour is the circle", max_new_tokens=8, ignore_eos=True)
        b = ours.generate(image, "what colour is the circle", max_new_tokens=8, ignore_eos=True)
        assert a.token_ids == b.token_ids, seed


def test_named_library_must_exist(int4_bundle, tmp_path, monkeypatch):
    from atp.runtime import Session

    monkeypatch.setenv("ATP_ORT_CPU_KERNELS", str(tmp_path / "missing.so"))
    with pytest.raises(AtpError, match="does not exist"):
        Session(int4_bundle)


def test_specialized_bundle(int4_bundle, kernels, tmp_path, monkeypatch):  # noqa: F811
    """``python -m atp.plugins.ort_cpu specialize``: the decoder on disk runs atp.cpu ops, the manifest says so and
    verifies; the Python runtime registers the library (same tokens as the original); without it, a clear error."""
    from atp.bundle import read_manifest
    from atp.plugins.ort_cpu import main as ort_cpu_main
    from atp.runtime import Session

    out = tmp_path / "int4-atpcpu"
    assert ort_cpu_main(["specialize", str(int4_bundle), "--out", str(out)]) == 0
    m = read_manifest(out)  # checksums of the rewritten decoder
    assert m["graphs"]["decoder"]["custom_ops"] == {"domain": "atp.cpu", "library": "libatp_ort_cpu.so", "version": "1",
                                                    "matmulint4": 9, "matmulint8": 0, "swiglu": 2}
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / m["graphs"]["decoder"]["file"])).graph.node}
    assert "MatMulInt4" in ops and "MatMulNBits" not in ops and "Split" not in ops
    assert ort_cpu_main(["specialize", str(out), "--out", str(tmp_path / "again")]) == 2  # already specialized

    monkeypatch.setenv("ATP_ORT_CPU_KERNELS", "off")
    plain = Session(int4_bundle)
    with pytest.raises(AtpError, match="runs atp.cpu ops.*off cannot apply"):
        Session(out)
    monkeypatch.setenv("ATP_ORT_CPU_KERNELS", str(kernels.path))
    ours = Session(out)
    assert ours.backend.swapped["decoder"]["matmulint4"] == 9
    image = random_image(3)
    a = plain.generate(image, "what colour is the circle", max_new_tokens=8, ignore_eos=True)
    b = ours.generate(image, "what colour is the circle", max_new_tokens=8, ignore_eos=True)
    assert a.token_ids == b.token_ids


def test_specialize_refuses_a_bundle_without_quantized_gemms(tiny_bundle, tmp_path):
    from atp.plugins.ort_cpu import OrtCpuKernelError, specialize_bundle

    with pytest.raises(OrtCpuKernelError, match="no MatMulNBits node"):
        specialize_bundle(tiny_bundle, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_auto_builds_the_kernels_on_first_use_and_falls_back_once(int4_bundle, kernels, tmp_path, monkeypatch, caplog):  # noqa: F811
    """ATP_ORT_CPU_KERNELS=auto (the default outside tests): the first int4 session builds the library into the user
    cache (AVX-512 VNNI CPUs) and swaps; a failed build is a warning once, then recorded: later sessions fall back on
    MatMulNBits without trying again; an fp32 bundle never builds."""
    import logging

    from atp.plugins import ort_cpu
    from atp.runtime import Session

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ATP_ORT_CPU_KERNELS", "auto")
    monkeypatch.setenv("ATP_ORT_INCLUDE_DIR", str(ort_cpu.ort_headers(DEPS)))  # the headers the fixture fetched
    monkeypatch.setattr(ort_cpu, "host_is_fast", lambda: True)
    calls = []
    real_build = ort_cpu.build

    def failing_build(*a, **kw):
        calls.append(1)
        raise ort_cpu.OrtCpuKernelError("compiling ops.cpp failed: no compiler here")

    monkeypatch.setattr(ort_cpu, "build", failing_build)
    with caplog.at_level(logging.INFO):
        s = Session(int4_bundle)
    assert s.backend.kernels is None and not s.backend.swapped and len(calls) == 1
    assert "could not be built" in caplog.text and "no compiler here" in caplog.text
    assert (ort_cpu.default_dir() / ort_cpu.FAILED_MARKER).is_file()
    caplog.clear()
    assert Session(int4_bundle).backend.kernels is None and len(calls) == 1  # recorded: not retried
    assert "could not be built" not in caplog.text

    monkeypatch.setattr(ort_cpu, "build", real_build)
    (ort_cpu.default_dir() / ort_cpu.FAILED_MARKER).unlink()
    if kernels.isa != "avx512vnni":
        pytest.skip(f"this CPU runs the {kernels.isa} path: the runtime keeps MatMulNBits (first-use build covered above)")
    with caplog.at_level(logging.INFO):
        s = Session(int4_bundle)
    assert "building atp's CPU kernels once" in caplog.text
    assert s.backend.kernels is not None and s.backend.swapped["decoder"]["matmulint4"] == 9
    assert (ort_cpu.default_dir() / ort_cpu.LIB_NAME).is_file()


def test_fp32_bundle_never_builds_the_kernels(tiny_bundle, tmp_path, monkeypatch):
    from atp.plugins import ort_cpu
    from atp.runtime import Session

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ATP_ORT_CPU_KERNELS", "auto")
    monkeypatch.setattr(ort_cpu, "build", lambda *a, **kw: pytest.fail("built kernels for an fp32 bundle"))
    assert Session(tiny_bundle).backend.kernels is None
