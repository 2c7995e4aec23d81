"""The int8 prefill graph (``--prefill-weights int8``): a second decoder graph that runs the prompt.

The prompt step is compute bound (hundreds of tokens through every GEMM), the decode steps are bandwidth bound (one
token): different arithmetic wins. The decode graph keeps its weights (int4 on atp's kernels, ...); the prefill graph
is the fp32 traced decoder with every linear (q/k/v/o, gate/up/down, lm_head) as W8A8: int8 weights per output
feature, uint8 activations per tensor at run time (``DynamicQuantizeLinear`` + ``MatMulInteger``, which ONNX Runtime
fuses into ``DynamicQuantizeMatMul``: MLAS's VNNI GEMM). Same inputs and outputs as the decoder graph, so the KV cache
it writes is the one the decode graph reads. Checked against a PyTorch fake-quant reference of the same arithmetic.

Experimental: per-tensor activation scales do not survive LLM activation outliers: SmolLM2-135M perplexity 52.3 ->
93.5 (``python bench/quant_ppl.py --variants fp32 w8a8 int8``; int8 activations per block of 32, what MatMulNBits
does, stay at 53.1). Per-token scales with outlier smoothing are the next step; ``--preset cpu`` leaves it out.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx

log = logging.getLogger(__name__)

PREFILL_FILE = "decoder_prefill.onnx"
PREFILL_KEY = "decoder_prefill"


def export_prefill(adapter, staging: Path, cfg) -> tuple[dict, object]:
    """Write ``decoder_prefill.onnx`` into ``staging``; returns (manifest graph entry, fake-quant reference module)."""
    from atp.calibration.salience import decoder_linears
    from atp.export.exporter import _decoder_example, decoder_axes, decoder_input_names, kv_names
    from atp.export.onnx_utils import describe_io, export_module, external_files
    from atp.export.quantize_vision import fake_quant_vision, quantize_vision_int8

    module = adapter.decoder_module(kv_dtype="float32")
    past, present = kv_names(adapter.model_info()["num_layers"])
    path = staging / PREFILL_FILE
    export_module(module, _decoder_example(adapter), path, input_names=decoder_input_names(adapter, past),
                  output_names=["logits", *present], dynamic_axes=decoder_axes(past, present, adapter.positions().axes), opset=cfg.opset,
                  external_data_threshold=cfg.external_data_threshold, fixed_output_dims={"logits": {1: 1}})
    model = onnx.load(str(path), load_external_data=True)
    for ext in external_files(path):
        (staging / ext).unlink(missing_ok=True)
    model, report = quantize_vision_int8(model, decoder_linears(module), "int8")
    size = sum(t.ByteSize() for t in model.graph.initializer)
    onnx.save_model(model, str(path), save_as_external_data=size > 1_800_000_000, all_tensors_to_one_file=True,
                    location=f"{PREFILL_FILE}.data", size_threshold=1024)
    report["weight_bytes"] = int(size)
    log.info("int8 prefill graph: %d linears W8A8, %d kept fp32", report["quantized_layers"], len(report["kept_fp32"]))
    log.warning("the int8 prefill graph is experimental: per-tensor activations cost SmolLM2-135M 79%% perplexity "
                "(bench/results/quant_ppl_smollm2_w8a8.md); check accuracy on your model")
    io = onnx.load(str(path), load_external_data=False)
    entry = {"file": PREFILL_FILE, "external_data": external_files(path), **describe_io(io), "mode": "prefill",
             "use": "the prompt step (no past, more than one token); decode steps run graphs.decoder on the KV cache it writes",
             "graph": "traced", "logits": "last_position", "kv_layout": "[batch, kv_heads, sequence, head_dim]",
             "kv_dtype": "float32", "weights": {"precision": "int8-dynamic", **report}}
    reference = fake_quant_vision(module, report["quantized"], "int8", linears_of=decoder_linears)
    return entry, reference


def validate_prefill(adapter, staging: Path, entry: dict, reference) -> dict:
    """ORT prefill logits vs the fake-quant reference on an example prompt (report; the exporter checks its bound)."""
    import onnxruntime as ort
    import torch

    from atp.export.exporter import _decoder_example

    so = ort.SessionOptions()
    so.log_severity_level = 3
    args = _decoder_example(adapter, batch=1, seq=6, past=0)
    with torch.no_grad():
        ref = reference(*args)[0].numpy()
    sess = ort.InferenceSession(str(staging / entry["file"]), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, dict(zip(names, (a.numpy() for a in args))))[0]
    scale = float(np.abs(ref).max())
    return {"reference": "PyTorch fake-quant (W8A8 dynamic)", "logits_max_abs_diff": float(np.abs(got - ref).max()),
            "logits_scale": scale, "same_argmax": bool((got.argmax(-1) == ref.argmax(-1)).all())}
