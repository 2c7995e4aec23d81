"""Graph rewrite for the TensorRT target: standard-op subgraphs -> ``atp`` plugin nodes.

The ONNX bundle keeps standard ops (ONNX Runtime runs them); a TensorRT build with
``libatp_plugins.so`` can use the plugin kernels instead. The rewrite is driven by each
plugin's ``contract.yaml``: op type, domain, version and I/O names come from there.

TopKGate replaces the in-graph gate of ``export/gate.py``::

    TopK(scores, K, largest=1) -> Cast(float) -> TopK(K, largest=0) -> Cast(int64) = kept_index
    Unsqueeze(kept_index) -> Expand -> GatherElements(tokens, ., axis=1)          = kept tokens

by ``TopKGate(scores, tokens, keep) -> (kept_tokens, kept_index:int32, num_kept)`` plus a Cast of
``kept_index`` back to int64, so the graph's outputs keep their names and types.
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


def rewrite_file(src: str | Path, dst: str | Path) -> int:
    """Rewrite ``src`` (an atp vision graph) into ``dst``; returns the number of gates replaced."""
    import onnx

    model = onnx.load(str(src))
    out, n = rewrite_topk_gate(model)
    onnx.save(out, str(dst))
    return n
