"""Int8 vision graphs (tower + projector linears; the gate's score path stays fp32), in two forms.

``int8`` (W8A8, dynamic): weights int8 symmetric per output feature (scale = max|w| / 127); activations uint8 per
tensor, quantized at run time by the standard ``DynamicQuantizeLinear``; ``MatMulInteger`` with int32 accumulation,
then ``Cast`` and one ``Mul`` by (activation scale x weight scales). ONNX Runtime fuses the pattern into
``DynamicQuantizeMatMul`` (MLAS's u8s8 GEMM, VNNI where the CPU has it), the form ``onnxruntime.quantization.
quantize_dynamic`` writes. Measured 1.9x the fp32 vision graph at 577 tokens on a 2-core AVX-512 VNNI AMD EPYC
(``bench/results/vision_int8.md``), so it is what ``--vision-weights int8`` writes.

``int8-blocks``: ``MatMulNBits`` bits=8 with ``accuracy_level`` 4 (activations int8 per row in blocks of 32): 4x
smaller weights but 0.7-1.0x fp32 at ViT shapes on the same CPU (``bench/results/quant_vision_gemm_xeon_atpcpu.md``).

Both are checked against a PyTorch fake-quant reference of the same arithmetic (:func:`fake_quant_vision`).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from atp.calibration.quant_reference import quantize_int8
from atp.export.quantize import _ensure_ms_opset, _key, _Rewriter, _splice, _weight, weight_keys

log = logging.getLogger(__name__)

VISION_BLOCK = 32
VISION_FORMS = {
    "int8": "W8A8 dynamic: int8 weights per output feature, uint8 activations per tensor (DynamicQuantizeLinear + "
            "MatMulInteger; ONNX Runtime fuses them into DynamicQuantizeMatMul)",
    "int8-blocks": "int8 weights per output feature, MatMulNBits bits=8 accuracy_level=4 (int8 activations per row "
                   "in blocks of 32)",
}


def vision_linears(module) -> dict:
    """``name -> nn.Linear`` of a vision graph module's tower layers and projector (not the scorer's own layers)."""
    from torch import nn

    out = {}
    layers = getattr(module.tower, "layers", None) or getattr(module.tower, "blocks", None)  # Qwen-VL towers: blocks
    for prefix, sub in (("layers", layers), ("projector", module.projector)):
        if sub is None:
            continue
        out.update({f"{prefix}.{n}": m for n, m in sub.named_modules() if isinstance(m, nn.Linear)})
    return out


def _gemms_as_matmuls(model: onnx.ModelProto) -> None:
    """Rewrite each ``Gemm(x, W, b)`` with ``transB = 1`` and an initializer ``W [N, K]`` (what ``torch.onnx`` makes of a
    Linear on 2-D input: the Qwen-VL towers run on ``[P, D]``) as ``MatMul(x, W.T) + b``, the form the int8 rewrite
    finds by weight."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    nodes = []
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits or attrs.get("transB", 0) != 1
                or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
            nodes.append(node)
            continue
        name = f"{node.input[1]}/T"
        if name not in inits:  # a weight read by several Gemms (the gate's score path) is transposed once
            inits[name] = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(inits[node.input[1]]).T), name)
            g.initializer.append(inits[name])
        mm = node.output[0] if len(node.input) < 3 or not node.input[2] else f"{node.name}/mm"
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [mm], name=f"{node.name}/MatMul"))
        if mm != node.output[0]:
            nodes.append(helper.make_node("Add", [mm, node.input[2]], [node.output[0]], name=f"{node.name}/Add"))
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def _dynamic_gemm(rw, x: str, q8: np.ndarray, s8: np.ndarray, out: str, base: str) -> list[onnx.NodeProto]:
    """``x [.., K] -> out [.., N]``: DynamicQuantizeLinear -> MatMulInteger (int8 W^T [K, N]) -> Cast -> Mul."""
    wq = rw.const(f"{base}.q8", np.ascontiguousarray(q8.T))
    ws = rw.const(f"{base}.s8", s8.astype(np.float32))
    xq, xs, xz = f"{base}/xq", f"{base}/xs", f"{base}/xz"
    acc, scale = f"{base}/acc", f"{base}/scale"
    return [helper.make_node("DynamicQuantizeLinear", [x], [xq, xs, xz], name=f"{base}/DynamicQuantizeLinear"),
            helper.make_node("MatMulInteger", [xq, wq, xz], [f"{base}/acc32"], name=f"{base}/MatMulInteger"),
            helper.make_node("Cast", [f"{base}/acc32"], [acc], name=f"{base}/Cast", to=TensorProto.FLOAT),
            helper.make_node("Mul", [xs, ws], [scale], name=f"{base}/ScaleMul"),
            helper.make_node("Mul", [acc, scale], [out], name=f"{base}/Mul")]


def quantize_vision_int8(model: onnx.ModelProto, linears: dict, form: str = "int8", accuracy_level: int = 4,
                         block_size: int = VISION_BLOCK) -> tuple[onnx.ModelProto, dict]:
    """Int8 weights (symmetric per output feature) for the tower/projector linears ``linears`` (``name ->
    nn.Linear``) of a vision graph, in ``form`` (:data:`VISION_FORMS`): each ``MatMul`` reading a linear's ``W.T``
    becomes the form's int8 GEMM.

    Kept fp32 (listed in the report): weights that feed more than one MatMul (the gate's CLS-attention score path
    re-reads the last layer's q/k projections: the top-K scores stay fp32 arithmetic) and, for ``int8-blocks``,
    linears whose input features ``block_size`` does not divide.
    """
    if form not in VISION_FORMS:
        raise ValueError(f"vision int8 form must be one of {', '.join(VISION_FORMS)}, got {form!r}")
    _gemms_as_matmuls(model)
    rw = _Rewriter(model, "ort", accuracy_level)
    keys = weight_keys({n: m.weight.detach().float().numpy() for n, m in linears.items()})
    users: dict[str, list[onnx.NodeProto]] = {}
    # the TorchScript exporter reads a parameter used twice through Identity nodes: resolve them
    alias = {n.output[0]: n.input[0] for n in rw.graph.node if n.op_type == "Identity" and n.input[0] in rw.inits}
    for node in rw.graph.node:
        if node.op_type == "MatMul":
            w = _weight(rw, node) if node.input[1] not in alias else numpy_helper.to_array(rw.inits[alias[node.input[1]]])
            name = keys.get(_key(w)) if w is not None else None
            if name is not None:
                users.setdefault(name, []).append(node)
    replaced, kept = {}, {}
    for name, nodes in users.items():
        if len(nodes) > 1:
            kept[name] = "shared with the gate's score path"
            continue
        w = np.ascontiguousarray(linears[name].weight.detach().float().numpy())
        if form == "int8-blocks" and w.shape[1] % block_size:
            kept[name] = f"{w.shape[1]} input features not divisible by {block_size}"
            continue
        rw.drop.add(alias.get(nodes[0].input[1], nodes[0].input[1]))
        node = nodes[0]
        if form == "int8":
            replaced[node.name] = _dynamic_gemm(rw, node.input[0], *quantize_int8(w), node.output[0], name)

        else:
            replaced[node.name] = rw.gemm_int8(node.input[0], *quantize_int8(w), node.output[0], name, block_size)
    kept.update({n: "not in the graph" for n in linears if n not in users})
    _splice(rw, replaced)
    _ensure_ms_opset(model)
    quantized = sorted(n for n in users if n not in kept)
    report = {"weights": "int8", "form": form, "scheme": VISION_FORMS[form], "quantized_layers": len(quantized),
              "quantized": quantized, "kept_fp32": kept}
    if form == "int8-blocks":
        report["activation_block"] = block_size
    return model, report


def dynamic_quantize_linear(x):
    """ONNX ``DynamicQuantizeLinear`` in torch float32: uint8 codes of the whole tensor, its scale and zero point
    (range widened to include 0; round half to even; saturate to [0, 255])."""
    import torch

    lo = torch.clamp(x.min(), max=0.0)
    hi = torch.clamp(x.max(), min=0.0)
    scale = (hi - lo) / 255.0
    zp = torch.clamp(torch.round(-lo / scale), 0, 255)
    q = torch.clamp(torch.round(x / scale) + zp, 0, 255)
    return q, scale, zp


def fake_quant_vision(module, names, form: str = "int8", block_size: int = VISION_BLOCK, linears_of=None):
    """Copy of the vision module (or, with ``linears_of``, any module whose linears it names: the int8 prefill
    decoder) with the linears ``names`` int8 fake-quantized like :func:`quantize_vision_int8`: weights per output
    feature; inputs per tensor (``int8``: DynamicQuantizeLinear) or per row in blocks of ``block_size``
    (``int8-blocks``)."""
    import torch

    from atp.calibration.mixed_precision import quantize_activation_blocks
    from atp.calibration.quant_reference import dequantize_int8

    ref = copy.deepcopy(module)
    linears = (linears_of or vision_linears)(ref)
    for name in names:
        mod = linears[name]
        w = mod.weight.detach().float().numpy()
        q8, s8 = quantize_int8(w)
        if form == "int8":
            wq = torch.from_numpy(q8.astype(np.float64))
            ws = torch.from_numpy(s8.astype(np.float32).reshape(-1))

            def forward(x, wq=wq, ws=ws, bias=mod.bias):
                q, scale, zp = dynamic_quantize_linear(x)
                acc = torch.matmul((q - zp).double(), wq.T).float()  # the int32 accumulation, exact in float64
                y = acc * (scale * ws)
                return y + bias if bias is not None else y

            mod.forward = forward
        else:
            mod.weight = torch.nn.Parameter(torch.from_numpy(dequantize_int8(q8, s8)), requires_grad=False)
            mod.register_forward_pre_hook(lambda m, inp, b=block_size: (quantize_activation_blocks(inp[0], b), *inp[1:]))
    return ref


def rewrite_vision_file(path: Path, module, form: str = "int8", linears: dict | None = None) -> dict:
    """Int8-quantize the vision graph at ``path`` in place (see :func:`quantize_vision_int8`); ``linears`` names the
    layers to quantize for other graphs (the int8 prefill decoder: :func:`atp.calibration.salience.decoder_linears`)."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=True)
    model, report = quantize_vision_int8(model, linears if linears is not None else vision_linears(module), form)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    size = sum(t.ByteSize() for t in model.graph.initializer)
    onnx.save_model(model, str(path), save_as_external_data=size > 1_800_000_000, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)
    onnx.checker.check_model(str(path))
    report["weight_bytes"] = int(size)
    log.info("quantized vision graph %s (%s): %d linears int8, %d kept fp32", path.name, form, report["quantized_layers"],
             len(report["kept_fp32"]))
    return report
