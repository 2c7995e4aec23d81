"""Graph rewrite for the TensorRT target: standard-op subgraphs -> ``atp`` plugin nodes.

The ONNX bundle keeps standard ops (ONNX Runtime runs them); a TensorRT build with
``libatp_plugins.so`` can use the plugin kernels instead. The rewrite is driven by each
plugin's ``contract.yaml``: op type, domain, version and I/O names come from there.

TopKGate replaces the in-graph gate of ``export/gate.py``::

    TopK(scores, K, largest=1) -> Cast(float) -> TopK(K, largest=0) -> Cast(int64) = kept_index
    Unsqueeze(kept_index) -> Expand -> GatherElements(tokens, ., axis=1)          = kept tokens

by ``TopKGate(scores, tokens, keep) -> (kept_tokens, kept_index:int32, num_kept)`` plus a Cast of
``kept_index`` back to int64, so the graph's outputs keep their names and types.

MixedGemm replaces a mixed-precision layer of a QDQ graph (the quantizer's ``qdq`` target):
``Concat(MatMul(x, DQ(int8 per channel)), MatMul(x, DQ(int4 blocks)))`` by
``Cast(fp16) -> MixedGemm(x, w8, s8, w4, s4[, z4]) -> Cast`` with the weights repacked into the
plugin's layout (``plugins/mixed_gemm/reference.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from atp.errors import AtpError, MissingDependencyError

log = logging.getLogger(__name__)


class RewriteError(AtpError):
    """The graph does not contain the subgraph a plugin replaces, or the result breaks the contract."""


def _gs():
    try:
        import onnx_graphsurgeon as gs
    except ImportError as exc:
        raise MissingDependencyError("onnx-graphsurgeon is needed for the plugin rewrite: pip install onnx-graphsurgeon") from exc
    return gs


def _producer(tensor):
    return tensor.inputs[0] if tensor.inputs else None


def _consumers(tensor, op: str):
    return [n for n in tensor.outputs if n.op == op]


def _find_gates(graph) -> list[dict]:
    """Every (scores, keep, index chain, gather) match of the gate pattern."""
    matches = []
    for top in [n for n in graph.nodes if n.op == "TopK" and int(n.attrs.get("largest", 1)) == 1]:
        idx = top.outputs[1]
        cast_f = next((c for c in _consumers(idx, "Cast") if int(c.attrs["to"]) == 1), None)
        if cast_f is None:
            continue
        asc = next((t for t in _consumers(cast_f.outputs[0], "TopK") if int(t.attrs.get("largest", 1)) == 0), None)
        if asc is None:
            continue
        cast_i = next((c for c in _consumers(asc.outputs[0], "Cast") if int(c.attrs["to"]) == 7), None)
        if cast_i is None:
            continue
        index = cast_i.outputs[0]
        gathers = []
        for unsq in _consumers(index, "Unsqueeze"):
            for exp in _consumers(unsq.outputs[0], "Expand"):
                gathers += [g for g in _consumers(exp.outputs[0], "GatherElements") if int(g.attrs.get("axis", 0)) == 1]
        if len(gathers) != 1:
            continue
        k = top.inputs[1]
        reshape = _producer(k)
        keep = reshape.inputs[0] if reshape is not None and reshape.op == "Reshape" else k
        matches.append({"top": top, "scores": top.inputs[0], "keep": keep, "index": index, "gather": gathers[0]})
    return matches


def rewrite_topk_gate(model):
    """Replace the gate subgraph(s) of an ``onnx.ModelProto`` with ``atp::TopKGate`` nodes.

    Returns:
        (new ModelProto, number of gates replaced).

    Raises:
        RewriteError: no gate subgraph found.
    """
    import numpy as np
    import onnx

    from atp.plugins import contract

    gs = _gs()
    c = contract("topk_gate")
    graph = gs.import_onnx(model)
    matches = _find_gates(graph)
    if not matches:
        raise RewriteError("no top-K gate subgraph (TopK -> Cast -> TopK ascending -> Cast -> GatherElements) in the graph; "
                           "was it exported by atp?")
    out_names = [o["name"] for o in c["outputs"]]
    for i, m in enumerate(matches):
        gather = m["gather"]
        kept = gather.outputs[0]
        index = m["index"]
        index32 = gs.Variable(f"{out_names[1]}_int32_{i}", dtype=np.int32)
        num_kept = gs.Variable(f"{out_names[2]}_{i}", dtype=np.int64, shape=[])
        new_kept = gs.Variable(f"{out_names[0]}_{i}", dtype=kept.dtype, shape=kept.shape)
        plugin = gs.Node(op=c["name"], name=f"{c['name']}_{i}", domain=c["onnx_domain"],
                         attrs={"plugin_version": c["version"], "plugin_namespace": c["namespace"]},
                         inputs=[m["scores"], gather.inputs[0], m["keep"]], outputs=[new_kept, index32, num_kept])
        graph.nodes.append(plugin)
        # the int64 kept_index and the gathered tokens keep their tensors (and names): re-point their producers
        index.inputs.clear()
        kept.inputs.clear()
        graph.nodes.append(gs.Node(op="Cast", name=f"{c['name']}_{i}_index_int64", attrs={"to": int(onnx.TensorProto.INT64)},
                                   inputs=[index32], outputs=[index]))
        graph.nodes.append(gs.Node(op="Identity", name=f"{c['name']}_{i}_tokens", inputs=[new_kept], outputs=[kept]))
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    domains = {op.domain for op in out.opset_import}
    if c["onnx_domain"] not in domains:
        out.opset_import.append(onnx.helper.make_opsetid(c["onnx_domain"], 1))
    _check_against_contract(out, c)
    log.info("replaced %d top-K gate subgraph(s) with %s::%s", len(matches), c["onnx_domain"], c["name"])
    return out, len(matches)


def _check_against_contract(model, c: dict) -> None:
    nodes = [n for n in model.graph.node if n.op_type == c["name"]]
    for n in nodes:
        if n.domain != c["onnx_domain"] or len(n.input) != len(c["inputs"]) or len(n.output) != len(c["outputs"]):
            raise RewriteError(f"{n.name} breaks the {c['name']} contract (domain, inputs or outputs)")
    if any(n.op_type == "TopK" for n in model.graph.node):
        raise RewriteError("a TopK node survived the rewrite: the gate was only partly replaced")


# --- MixedGemm -------------------------------------------------------------------------------------------

def _const(graph, tensor):
    """numpy value of a Constant tensor (initializer), or None."""
    gs = _gs()
    return tensor.values if isinstance(tensor, gs.Constant) else None


def _dq_weight(graph, matmul):
    """(quantized values [K, N] as int, scale, zero point or None, axis, block_size) of MatMul's DQ weight, or None."""
    import numpy as np

    dq = _producer(matmul.inputs[1])
    if dq is None or dq.op != "DequantizeLinear":
        return None
    q = _const(graph, dq.inputs[0])
    s = _const(graph, dq.inputs[1])
    z = _const(graph, dq.inputs[2]) if len(dq.inputs) > 2 else None
    if q is None or s is None or q.ndim != 2:
        return None
    kind = {"int8": "int8", "int4": "int4", "uint4": "uint4"}.get(str(q.dtype))
    if kind is None:
        return None
    return {"kind": kind, "q": q.astype(np.int16), "s": np.asarray(s, np.float32),
            "z": None if z is None else np.asarray(z).astype(np.int16), "axis": int(dq.attrs.get("axis", 1)),
            "block": int(dq.attrs.get("block_size", 0)), "dq": dq}


def _mixed_layout(w8, w4):
    """MixedGemm inputs (contract.yaml order) from the two DequantizeLinear weights, or None if they do not fit."""
    import numpy as np

    from atp.plugins.mixed_gemm.reference import GROUP_MULTIPLE, pack_int4

    if w8["kind"] != "int8" or w8["s"].ndim != 1 or w8["axis"] not in (1, -1):
        return None
    if w8["z"] is not None and np.any(w8["z"]):
        return None
    kin = w8["q"].shape[0]
    g = w4["block"]
    if w4["kind"] not in ("int4", "uint4") or w4["axis"] != 0 or not g or g % GROUP_MULTIPLE or kin % g or w4["q"].shape[0] != kin:
        return None
    codes = w4["q"].T  # [n4, K]
    if w4["kind"] == "int4":
        if w4["z"] is not None and np.any(w4["z"]):
            return None
        codes, z4 = codes + 8, None  # signed -8..7 -> codes 0..15 around the default zero point 8
    else:
        z4 = (w4["z"].T if w4["z"] is not None else np.zeros_like(w4["s"].T)).astype(np.uint8)
    return {"w8": w8["q"].T.astype(np.int8), "s8": w8["s"], "w4": pack_int4(codes.astype(np.uint8)).view(np.int8),
            "s4": np.ascontiguousarray(w4["s"].T), "z4": None if z4 is None else np.ascontiguousarray(z4).view(np.int8),
            "group": g}


def rewrite_mixed_gemm(model):
    """Replace mixed-precision GEMMs of a QDQ graph with ``atp::MixedGemm`` nodes.

    Matches what the quantizer's ``qdq`` target writes for a mixed layer: ``Concat(axis=-1)`` of
    ``MatMul(x, DequantizeLinear(int8 per output channel))`` (the first n8 features) and
    ``MatMul(x, DequantizeLinear(int4 blocks of g along Kin))``. The plugin computes in fp16, so x is
    cast to fp16 and y back to the graph's type.

    Returns:
        (new ModelProto, number of layers replaced); 0 when the graph has no such layer.
    """
    import numpy as np
    import onnx

    from atp.plugins import contract

    gs = _gs()
    c = contract("mixed_gemm")
    graph = gs.import_onnx(model)
    count = 0
    for cat in [n for n in graph.nodes if n.op == "Concat" and len(n.inputs) == 2 and int(n.attrs.get("axis", 0)) == -1]:
        mms = [_producer(t) for t in cat.inputs]
        if any(m is None or m.op != "MatMul" for m in mms) or mms[0].inputs[0] is not mms[1].inputs[0]:
            continue
        w8, w4 = (_dq_weight(graph, m) for m in mms)
        if w8 is None or w4 is None:
            continue
        lay = _mixed_layout(w8, w4)
        if lay is None:
            continue
        base = f"{c['name']}_{count}"
        x, y = mms[0].inputs[0], cat.outputs[0]
        x16 = gs.Variable(f"{base}_x16", dtype=np.float16)
        y16 = gs.Variable(f"{base}_y16", dtype=np.float16)
        graph.nodes.append(gs.Node(op="Cast", name=f"{base}_cast_in", attrs={"to": int(onnx.TensorProto.FLOAT16)},
                                   inputs=[x], outputs=[x16]))
        names = [i["name"] for i in c["inputs"]]
        ins = [x16] + [gs.Constant(f"{base}_{n}", lay[n]) for n in names[1:5]]
        if lay["z4"] is not None:
            ins.append(gs.Constant(f"{base}_z4", lay["z4"]))
        attrs = {a["name"]: a["default"] for a in c["attributes"]}
        attrs.update(group_size=int(lay["group"]), has_zero_points=int(lay["z4"] is not None),
                     plugin_version=c["version"], plugin_namespace=c["namespace"])
        graph.nodes.append(gs.Node(op=c["name"], name=base, domain=c["onnx_domain"], attrs=attrs, inputs=ins, outputs=[y16]))
        cat.outputs.clear()
        to = onnx.TensorProto.FLOAT16 if y.dtype == np.float16 else onnx.TensorProto.FLOAT
        graph.nodes.append(gs.Node(op="Cast", name=f"{base}_cast_out", attrs={"to": int(to)},
                                   inputs=[y16], outputs=[y]))
        count += 1
    if not count:
        return model, 0
    graph.cleanup().toposort()
    out = gs.export_onnx(graph)
    if c["onnx_domain"] not in {op.domain for op in out.opset_import}:
        out.opset_import.append(onnx.helper.make_opsetid(c["onnx_domain"], 1))
    for n in out.graph.node:
        if n.op_type == c["name"]:
            want = len(c["inputs"]) - (0 if any(a.name == "has_zero_points" and a.i for a in n.attribute) else 1)
            if n.domain != c["onnx_domain"] or len(n.input) != want or len(n.output) != len(c["outputs"]):
                raise RewriteError(f"{n.name} breaks the {c['name']} contract")
    log.info("replaced %d mixed-precision GEMM(s) with %s::%s", count, c["onnx_domain"], c["name"])
    return out, count


def rewrite_file(src: str | Path, dst: str | Path) -> dict:
    """Apply every plugin rewrite that matches to the graph ``src`` and save it as ``dst``.

    Returns:
        ``{"TopKGate": n, "MixedGemm": m}``: subgraphs replaced (0 where a pattern is absent).
    """
    import onnx

    model = onnx.load(str(src))
    counts = {}
    try:
        model, counts["TopKGate"] = rewrite_topk_gate(model)
    except RewriteError as exc:
        if "no top-K gate subgraph" not in str(exc):
            raise
        counts["TopKGate"] = 0
    model, counts["MixedGemm"] = rewrite_mixed_gemm(model)
    onnx.save(model, str(dst), save_as_external_data=model.ByteSize() > 1_900_000_000)
    return counts
