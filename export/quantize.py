"""Weight quantization of an exported fp32 decoder graph (a graph rewrite).

Every ``MatMul`` whose second input is the constant weight of a planned linear layer (found by the
weight's bytes: the TorchScript exporter stores ``W.T`` of each ``nn.Linear`` verbatim, while its node
names lose the layer index) is replaced according to a :class:`~atp.calibration.mixed_precision.QuantPlan`:

- target ``ort`` (ONNX Runtime): ``com.microsoft.MatMulNBits`` with ``accuracy_level=4`` (int8 compute:
  ORT quantizes the activations per row in blocks of ``block_size``; every GEMM of a plan uses the
  plan's group size as its block, so :func:`~atp.calibration.mixed_precision.apply_fake_quant` can
  reproduce it).
  int4 layers: one ``bits=4`` node (block = group size). int8 layers: one ``bits=8`` node (symmetric
  per output feature, written as blocks that repeat the feature's scale). Mixed layers: the int8 and
  int4 features as two GEMMs over offline-permuted output channels, then ``Concat``.
- target ``qdq`` (TensorRT): opset-21 ``DequantizeLinear`` on the weights (per-channel int8,
  block-wise int4 along the input dim) feeding a plain ``MatMul``; mixed layers as two such GEMMs + ``Concat``.

The permutation of a mixed layer is undone without a gather where the consumer can absorb it: the
gate and up projections of an MLP share one permutation (the plan allocates them as a unit), applied
to the PyTorch module before export together with the down projection's input columns
(:func:`~atp.calibration.mixed_precision.permute_mlp_features`), so ``down(silu(gate) * up)`` is
unchanged and the graph's gate/up int8 features come first. Other mixed layers (q/k/v/o, down, lm_head: their outputs feed RoPE/heads or the residual stream) end with
one ``Gather`` on the last axis.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from atp.calibration.mixed_precision import QuantPlan
from atp.calibration.quant_reference import (Int4Weights, int8_as_blocks, quantize_int4, quantize_int8, quantize_mixed,
                                             to_matmulnbits)
from atp.errors import ConfigError

log = logging.getLogger(__name__)

TARGETS = ("ort", "qdq")
MS_DOMAIN = "com.microsoft"


def _key(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr, np.float32)
    return hashlib.sha256(f"{arr.shape}".encode() + arr.tobytes()).hexdigest()


def weight_keys(layer_weights: dict[str, np.ndarray]) -> dict[str, str]:
    """``key of W.T -> layer name`` for layer weights ``W [N, K]``.

    Raises:
        ConfigError: two layers with identical weights (they could not be told apart in the graph).
    """
    out = {}
    for name, w in layer_weights.items():
        k = _key(np.asarray(w).T)
        if k in out:
            raise ConfigError(f"layers {out[k]} and {name} have identical weights; cannot tell them apart in the graph")
        out[k] = name
    return out


class _Rewriter:
    def __init__(self, model: onnx.ModelProto, target: str, accuracy_level: int = 4):
        if target not in TARGETS:
            raise ConfigError(f"quantization target must be one of {TARGETS}, got {target!r}")
        self.model, self.target, self.level = model, target, accuracy_level
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self.new_inits: list[onnx.TensorProto] = []
        self.drop: set[str] = set()

    def const(self, name: str, arr: np.ndarray) -> str:
        self.new_inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const_int4(self, name: str, values: np.ndarray, signed: bool) -> str:
        dt = TensorProto.INT4 if signed else TensorProto.UINT4
        self.new_inits.append(helper.make_tensor(name, dt, list(values.shape), values.astype(np.int32).reshape(-1)))
        return name

    # ------------------------------------------------------------------ one GEMM part
    def gemm_int8(self, x: str, q8: np.ndarray, s8: np.ndarray, out: str, base: str, bs: int) -> list[onnx.NodeProto]:
        n, k = q8.shape
        if self.target == "ort":
            u, s = int8_as_blocks(q8, s8, bs)
            t = to_matmulnbits(u, s, None, 8, bs)
            return [helper.make_node("MatMulNBits", [x, self.const(f"{base}.q8", t["B"]), self.const(f"{base}.s8", t["scales"])],
                                     [out], name=f"{base}/MatMulNBits8", domain=MS_DOMAIN, K=k, N=n, bits=8,
                                     block_size=bs, accuracy_level=self.level)]
        wq = self.const(f"{base}.q8", q8.T.copy())
        dq = helper.make_node("DequantizeLinear", [wq, self.const(f"{base}.s8", s8.astype(np.float32))], [f"{base}.w8"],
                              name=f"{base}/DequantizeLinear8", axis=1)
        return [dq, helper.make_node("MatMul", [x, f"{base}.w8"], [out], name=f"{base}/MatMul8")]

    def gemm_int4(self, x: str, w4: Int4Weights, out: str, base: str) -> list[onnx.NodeProto]:
        n, k = w4.q.shape
        g = w4.group_size
        if self.target == "ort":
            t = to_matmulnbits(w4.unsigned(), w4.scale, None if w4.symmetric else w4.zero, 4, g)
            ins = [x, self.const(f"{base}.q4", t["B"]), self.const(f"{base}.s4", t["scales"])]
            if t["zero_points"] is not None:
                ins.append(self.const(f"{base}.z4", t["zero_points"]))
            return [helper.make_node("MatMulNBits", ins, [out], name=f"{base}/MatMulNBits4", domain=MS_DOMAIN, K=k, N=n,
                                     bits=4, block_size=g, accuracy_level=self.level)]
        if not w4.symmetric:
            wq = self.const_int4(f"{base}.q4", w4.q.T.copy(), signed=False)
            ins = [wq, self.const(f"{base}.s4", w4.scale.T.copy()), self.const_int4(f"{base}.z4", w4.zero.T.copy(), signed=False)]
        else:
            ins = [self.const_int4(f"{base}.q4", w4.q.T.copy(), signed=True), self.const(f"{base}.s4", w4.scale.T.copy())]
        dq = helper.make_node("DequantizeLinear", ins, [f"{base}.w4"], name=f"{base}/DequantizeLinear4", axis=0, block_size=g)
        return [dq, helper.make_node("MatMul", [x, f"{base}.w4"], [out], name=f"{base}/MatMul4")]

    # ------------------------------------------------------------------ one layer
    def layer(self, node: onnx.NodeProto, w: np.ndarray, plan: QuantPlan, name: str, absorbed: bool) -> list[onnx.NodeProto]:
        """Nodes replacing ``node`` (y = x @ w.T, w [N, K]); ``absorbed``: leave the output permuted."""
        lp = plan.layers[name]
        x, y, base = node.input[0], node.output[0], name
        n = w.shape[0]
        if plan.weights == "int8" or lp.n8 == n:
            return self.gemm_int8(x, *quantize_int8(w), y, base, plan.group_size)
        if lp.n8 == 0:
            return self.gemm_int4(x, quantize_int4(w, plan.group_size, plan.symmetric), y, base)
        mw = quantize_mixed(w, lp.int8, plan.group_size, plan.symmetric)
        nodes = self.gemm_int8(x, mw.q8, mw.s8, f"{base}.y8", base, plan.group_size) + self.gemm_int4(x, mw.int4(), f"{base}.y4", base)
        cat = y if absorbed else f"{base}.yperm"
        nodes.append(helper.make_node("Concat", [f"{base}.y8", f"{base}.y4"], [cat], name=f"{base}/Concat", axis=-1))
        if not absorbed:
            inv = np.argsort(mw.perm).astype(np.int64)
            nodes.append(helper.make_node("Gather", [cat, self.const(f"{base}.unpermute", inv)], [y], name=f"{base}/Gather", axis=-1))
        return nodes


def _weight(rw: _Rewriter, node: onnx.NodeProto) -> np.ndarray | None:
    if len(node.input) < 2 or node.input[1] not in rw.inits:
        return None
    arr = numpy_helper.to_array(rw.inits[node.input[1]])
    return arr if arr.ndim == 2 else None


def _packed_qkv_consumer(graph: onnx.GraphProto, outs: list[str]) -> onnx.NodeProto | None:
    """The ``GroupQueryAttention`` node that reads exactly ``outs`` as its query, key and value (and nothing
    else reads them), or None."""
    if len(outs) != 3:
        return None
    users = [n for n in graph.node if any(i in outs for i in n.input)]
    if len(users) == 1 and users[0].op_type == "GroupQueryAttention" and list(users[0].input[:3]) == outs:
        return users[0]
    return None


def fusable_groups(found: dict[str, onnx.NodeProto], plan: QuantPlan) -> list[tuple[str, ...]]:
    """Layers that read the same input (q/k/v, gate/up) and are all int4 or all int8 under ``plan``: each
    group becomes ONE ``MatMulNBits`` over the concatenated weight rows + a ``Split`` (row-wise quantization
    and per-row activation blocks make that exact). Mixed layers stay two GEMMs each."""
    by_input: dict[str, list[str]] = {}
    for name, node in found.items():
        by_input.setdefault(node.input[0], []).append(name)

    def kind(name):
        lp = plan.layers[name]
        return "int8" if plan.weights == "int8" or lp.n8 == lp.out_features else ("int4" if lp.n8 == 0 else "mixed")

    groups = []
    for names in by_input.values():
        kinds = {kind(n) for n in names}
        if len(names) > 1 and len(kinds) == 1 and "mixed" not in kinds:
            groups.append(tuple(names))
    return groups


def _splice(rw, replaced: dict) -> None:
    """Replace nodes by name with their rewrites (in graph order) and drop initializers nothing reads any more."""
    new_nodes = [x for node in rw.graph.node for x in replaced.get(node.name, [node])]
    still_used = {i for n in new_nodes for i in n.input}
    keep = [t for t in rw.graph.initializer if t.name not in rw.drop or t.name in still_used]
    del rw.graph.node[:]
    rw.graph.node.extend(new_nodes)
    del rw.graph.initializer[:]
    rw.graph.initializer.extend(keep + rw.new_inits)


def _ensure_ms_opset(model) -> None:
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def quantize_decoder(model: onnx.ModelProto, plan: QuantPlan, layer_weights: dict[str, np.ndarray],
                     target: str = "ort", accuracy_level: int = 4, fuse: bool = True) -> tuple[onnx.ModelProto, dict]:
    """Rewrite the decoder ``model`` (weights loaded) under ``plan``; returns (model, report).

    ``layer_weights`` (``name -> W [N, K]`` of the exported module) identifies each layer's MatMul.
    ``accuracy_level`` 4 (int8 compute, the fast path we ship) or 0 (fp32 compute: bit-exact
    weights, used by tests to check packing against the fake-quant reference).

    Mixed layers whose int8 features are already the first ones (gate/up after
    :func:`~atp.calibration.mixed_precision.permute_mlp_features`) need no gather. ``fuse`` (ORT target):
    layers sharing their input with the same precision become one GEMM + ``Split`` (:func:`fusable_groups`).

    Raises:
        ConfigError: unknown target, a planned layer missing from the graph, a shape mismatch.
    """
    rw = _Rewriter(model, target, accuracy_level)
    keys = weight_keys({n: w for n, w in layer_weights.items() if n in plan.layers})
    found = {}
    for node in rw.graph.node:
        if node.op_type == "MatMul":
            w = _weight(rw, node)
            name = keys.get(_key(w)) if w is not None else None
            if name is not None:
                if name in found:
                    raise ConfigError(f"layer {name}'s weight feeds two MatMuls in the graph; cannot rewrite it")
                found[name] = node
    missing = sorted(set(plan.layers) - set(found))
    if missing:
        raise ConfigError(f"the quantization plan names layers the decoder graph does not have: {', '.join(missing[:4])}")
    absorbed = {n for n, lp in plan.layers.items() if 0 < lp.n8 < lp.out_features and np.array_equal(lp.int8, np.arange(lp.n8))}
    weights = {}
    for name, node in found.items():
        w = _weight(rw, node).T  # initializer is [K, N]
        lp = plan.layers[name]
        if w.shape != (lp.out_features, lp.in_features):
            raise ConfigError(f"layer {name}: graph weight {w.shape} does not match the plan {(lp.out_features, lp.in_features)}")
        rw.drop.add(node.input[1])
        weights[name] = np.ascontiguousarray(w)
    groups = fusable_groups(found, plan) if (fuse and target == "ort") else []
    replaced, fused = {}, set()
    for names in groups:
        nodes = [found[n] for n in names]
        w = np.concatenate([weights[n] for n in names], axis=0)
        base = "+".join(names)
        x, y = nodes[0].input[0], f"{base}/fused"
        sizes = np.array([weights[n].shape[0] for n in names], np.int64)
        one = plan.layers[names[0]]
        uniform8 = plan.weights == "int8" or one.n8 == one.out_features
        gemm = (rw.gemm_int8(x, *quantize_int8(w), y, base, plan.group_size) if uniform8
                else rw.gemm_int4(x, quantize_int4(w, plan.group_size, plan.symmetric), y, base))
        outs = [nd.output[0] for nd in nodes]
        gqa = _packed_qkv_consumer(rw.graph, outs)
        if gqa is not None:  # GroupQueryAttention takes packed QKV: no Split
            gqa.input[0], gqa.input[1], gqa.input[2] = y, "", ""
            replaced[nodes[0].name] = gemm
        else:
            replaced[nodes[0].name] = gemm + [helper.make_node("Split", [y, rw.const(f"{base}.split", sizes)], outs,
                                                               name=f"{base}/Split", axis=-1)]
        for nd in nodes[1:]:
            replaced[nd.name] = []
        fused.update(names)
    for name, node in found.items():
        if name not in fused:
            replaced[node.name] = rw.layer(node, weights[name], plan, name, name in absorbed)
    _splice(rw, replaced)
    if target == "ort":
        _ensure_ms_opset(model)
    report = {"target": target, "layers": len(found), "fused_gemms": len(groups),
              "gather_free_mixed_layers": sorted(absorbed),
              "gathers": sum(1 for ns in replaced.values() for n in ns if n.op_type == "Gather"), **plan.summary()}
    return model, report


def weights_to_fp16(model: onnx.ModelProto, min_elements: int = 1024) -> onnx.ModelProto:
    """Store the 2-D weights of constant MatMuls in fp16, cast back to fp32 in the graph (half the bytes;
    CPU compute stays fp32: ORT folds the casts at load)."""
    inits = {t.name: t for t in model.graph.initializer}
    done, casts = set(), []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2 or node.input[1] not in inits or node.input[1] in done:
            continue
        t = inits[node.input[1]]
        if t.data_type != TensorProto.FLOAT or len(t.dims) != 2 or np.prod(t.dims) < min_elements:
            continue
        arr = numpy_helper.to_array(t).astype(np.float16)
        t.CopyFrom(numpy_helper.from_array(arr, t.name + ".fp16"))
        casts.append(helper.make_node("Cast", [t.name], [t.name[: -len(".fp16")]], to=TensorProto.FLOAT, name=f"{t.name}/Cast"))
        done.add(node.input[1])
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def rewrite_file(path: Path, plan: QuantPlan | None, weights: str, target: str = "ort",
                 layer_weights: dict[str, np.ndarray] | None = None) -> dict:
    """Quantize the saved decoder graph at ``path`` in place (external data rewritten beside it)."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=True)
    if weights == "fp16":
        model, report = weights_to_fp16(model), {"weights": "fp16", "target": target}
    else:
        model, report = quantize_decoder(model, plan, layer_weights, target)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    size = sum(t.ByteSize() for t in model.graph.initializer)
    external = size > 1_800_000_000
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)
    onnx.checker.check_model(str(path))
    report["weight_bytes"] = int(size)
    log.info("quantized %s: %s", path.name, report)
    return report


def prepare_quantized_decoder(adapter, q, activations: bool | None = None, reference: bool = True):
    """(module to export, fake-quant PyTorch reference, plan) for an adapter under a QuantConfig.

    The module is a copy of the adapter's decoder with mixed MLP features permuted (int8 first);
    the reference is a further copy whose weights are quantize-dequantized under the plan, and whose
    linear inputs are int8 fake-quantized per block like MatMulNBits ``accuracy_level=4`` does
    (``activations``; default: for the ``ort`` target only). ``reference=False`` returns None for it: the exporter
    turns the exported module itself into the reference afterwards (:func:`into_reference`), one copy of the
    language model fewer at the export's memory peak.

    Raises:
        CalibrationError: ``mixed`` with an artifact for another model or without a plan.
        ConfigError: group size not dividing a layer's input features.
    """
    import copy

    from atp.calibration.mixed_precision import model_shapes, permute_mlp_features, uniform_plan

    module = copy.deepcopy(adapter.decoder_module(kv_dtype=q.kv))
    shapes = model_shapes(module)
    if q.weights == "mixed":
        from atp.calibration.quant_calibrate import load_plan

        plan = load_plan(q.calibration, adapter)
        plan.check_model(shapes)
    else:
        plan = uniform_plan(shapes, q.weights, q.group_size, q.symmetric)
    plan = permute_mlp_features(module, plan)
    if not reference:
        return module, None, plan
    return module, into_reference(copy.deepcopy(module), plan, q, activations), plan


def into_reference(module, plan, q, activations: bool | None = None):
    """Turn ``module`` (in place) into the fake-quant PyTorch reference of its quantized graph (see
    :func:`prepare_quantized_decoder`); returns it."""
    from atp.calibration.mixed_precision import apply_fake_quant

    return apply_fake_quant(module, plan, activations=q.target == "ort" if activations is None else activations)


def layer_weights_of(module) -> dict[str, np.ndarray]:
    """``canonical name -> W [N, K]`` (fp32 numpy) of a decoder module's linears."""
    from atp.calibration.salience import decoder_linears

    return {n: m.weight.detach().float().numpy() for n, m in decoder_linears(module).items()}
