"""Fused decoder graph for ONNX Runtime CPU, built node by node from the PyTorch decoder's weights.

The traced decoder (:mod:`atp.export.decoder` through ``torch.onnx.export``) is ~220 nodes per layer
(~100 after ORT's own fusions): shape arithmetic for every ``view``, RoPE as slices/negs/concats, the KV
concat, ``repeat_kv``'s expand/reshape, two attention MatMuls and a softmax. At one decode token the
per-node cost of those dwarfs the int4 GEMMs (SmolLM2-135M int4: ~84 MB of weights), so quantized
decode ran only ~2x faster than fp32. This builder writes the same model with ORT's fused operators:

- ``RMSNormalization`` (opset 23, so the graph is opset 23) for the first norm, then
  ``com.microsoft.SkipSimplifiedLayerNormalization`` (RMSNorm with the residual add folded in),
- ``com.microsoft.GroupQueryAttention`` (RoPE from cos/sin caches at ``position_ids``, KV concat, GQA
  head sharing, causal softmax) per layer,
- plain ``MatMul`` for every linear (weights stored as ``W.T``, so :mod:`atp.export.quantize` finds and
  quantizes them exactly as in the traced graph, and fuses q/k/v and gate/up into one GEMM each),
- ``x * Sigmoid(x) * up`` for SwiGLU (ORT fuses the first product into ``QuickGelu``).

Same inputs and outputs as the traced graph (``inputs_embeds``, ``attention_mask``, ``position_ids``,
``past_key_values.{i}.key/value [B, Hkv, P, hd]`` -> ``logits [B, 1, V]``, ``present.*``), with one
restriction that ``GroupQueryAttention`` brings: the attention mask must be all ones (or each row a
run of ones: ``sum(mask) - 1`` is the row's last position); ``atp``'s runtime only feeds such masks.
fp32 KV cache only.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from atp.errors import ConfigError

log = logging.getLogger(__name__)

MS = "com.microsoft"
MIN_OPSET = 23  # RMSNormalization (the first layer's norm; later ones fold the residual add into SkipSimplifiedLayerNormalization)


class _G:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, arr) -> str:
        self.inits.append(numpy_helper.from_array(np.require(arr, requirements="C"), name))  # 0-d stays 0-d
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str] | int = 1, domain: str = "", name: str | None = None,
             **attrs) -> list[str]:
        self._n += 1
        name = name or f"{op}_{self._n}"
        if isinstance(outputs, int):
            outputs = [f"{name}/out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain or None, **attrs))
        return outputs


def _w(linear: torch.nn.Linear) -> np.ndarray:
    return linear.weight.detach().float().numpy().T.copy()  # [K, N], what torch.onnx.export stores


def _linear(g: _G, x: str, linear: torch.nn.Linear, name: str) -> str:
    y = g.node("MatMul", [x, g.const(f"{name}.weight_T", _w(linear))], [f"{name}/out"], name=f"{name}/MatMul")[0]
    if linear.bias is not None:
        y = g.node("Add", [y, g.const(f"{name}.bias", linear.bias.detach().float().numpy())], [f"{name}/out_bias"],
                   name=f"{name}/Add")[0]
    return y


def _eps(norm) -> float:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        if hasattr(norm, attr):
            return float(getattr(norm, attr))
    raise ConfigError(f"cannot read the epsilon of RMSNorm {type(norm).__name__}")


def rope_caches(module, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """``cos, sin [max_positions, head_dim / 2]`` from the model's own rotary embedding (half: rotate-half layout)."""
    pos = torch.arange(max_positions)[None]
    with torch.no_grad():
        cos, sin = module.rotary_emb(torch.zeros(1, 1, module.head_dim), pos)
    half = module.head_dim // 2
    cos, sin = cos[0].float().numpy(), sin[0].float().numpy()
    if not (np.allclose(cos[:, :half], cos[:, half:]) and np.allclose(sin[:, :half], sin[:, half:])):
        raise ConfigError("the rotary embedding is not in rotate-half layout; the fused decoder graph cannot express it")
    return np.ascontiguousarray(cos[:, :half]), np.ascontiguousarray(sin[:, :half])


def mrope_axes(module) -> np.ndarray | None:
    """``[head_dim / 2]``: which position axis (t, h, w) each rotary frequency reads, asked of the model's own rotary
    embedding (Qwen2.5-VL: contiguous sections; Qwen3-VL: interleaved); None for 1-D rotary."""
    if getattr(module.rotary_emb, "mrope_section", None) is None:
        return None
    half = module.head_dim // 2
    axis = np.full(half, -1)
    x = torch.zeros(1, 1, module.head_dim)
    with torch.no_grad():
        for a in range(3):
            pos = torch.zeros(3, 1, 1, dtype=torch.int64)
            pos[a] = 1
            sin = module.rotary_emb(x, pos)[1][0, 0, :half].numpy()
            axis[np.abs(sin) > 0] = a
    if (axis < 0).any():
        raise ConfigError("cannot tell which position axis every M-RoPE frequency reads")
    return axis


def _mrope(g: _G, cos_n: str, sin_n: str, axis: np.ndarray, hd: int) -> tuple[str, str]:
    """M-RoPE (Qwen2-VL): ``cos, sin [B, S, 1, head_dim]`` for ``position_ids [3, B, S]``, rotary frequency j taking
    the position of axis ``axis[j]`` (:func:`mrope_axes`), from the 1-D caches: ``sum_a Gather(cache, pos[a]) *
    onehot_a``."""
    pos = [g.node("Gather", ["position_ids", g.const(f"mrope.axis{a}", np.array(a, np.int64))], name=f"mrope/pos{a}", axis=0)[0]
           for a in range(3)]
    out = []
    for name, cache in (("cos", cos_n), ("sin", sin_n)):
        parts = []
        for a in range(3):
            val = g.node("Gather", [cache, pos[a]], name=f"mrope/{name}/gather{a}", axis=0)[0]
            mask = g.const(f"mrope.{name}.mask{a}", (axis == a).astype(np.float32))
            parts.append(g.node("Mul", [val, mask], name=f"mrope/{name}/mask{a}")[0])
        half = g.node("Sum", parts, name=f"mrope/{name}/sum")[0]
        full = g.node("Concat", [half, half], name=f"mrope/{name}/concat", axis=-1)[0]
        out.append(g.node("Unsqueeze", [full, g.const(f"mrope.{name}.axes", np.array([2], np.int64))], name=f"mrope/{name}/unsq")[0])
    return out[0], out[1]


def _head_norm(g: _G, x: str, norm, heads: int, hd: int, name: str) -> str:
    """RMSNorm over each head of ``x [B, S, heads * hd]`` (Qwen3's q / k norms)."""
    xh = g.node("Reshape", [x, g.const(f"{name}.heads_shape", np.array([0, 0, heads, hd], np.int64))], name=f"{name}/Reshape")[0]
    y = g.node("RMSNormalization", [xh, g.const(f"{name}.weight", norm.weight.detach().float().numpy())], name=f"{name}/RMSNorm",
               axis=-1, epsilon=_eps(norm))[0]
    return g.node("Reshape", [y, g.const(f"{name}.flat_shape", np.array([0, 0, heads * hd], np.int64))], name=f"{name}/Flat")[0]


def _rotate(g: _G, x: str, heads: int, hd: int, rope: tuple[str, str], name: str) -> str:
    """Rotate-half RoPE of ``x [B, S, heads * hd]`` with ``cos, sin [B, S, 1, hd]``: ``x * cos + rotate_half(x) * sin``."""
    cos, sin = rope
    shape = g.const(f"{name}.heads_shape", np.array([0, 0, heads, hd], np.int64))
    xh = g.node("Reshape", [x, shape], name=f"{name}/Reshape")[0]
    x1, x2 = g.node("Split", [xh], 2, name=f"{name}/Split", axis=-1, num_outputs=2)
    rot = g.node("Concat", [g.node("Neg", [x2], name=f"{name}/Neg")[0], x1], name=f"{name}/Concat", axis=-1)[0]
    y = g.node("Add", [g.node("Mul", [xh, cos], name=f"{name}/MulCos")[0], g.node("Mul", [rot, sin], name=f"{name}/MulSin")[0]],
               name=f"{name}/Add")[0]
    return g.node("Reshape", [y, g.const(f"{name}.flat_shape", np.array([0, 0, heads * hd], np.int64))], name=f"{name}/Flat")[0]


def build_fused_decoder(module, max_positions: int | None = None, opset: int = 21) -> onnx.ModelProto:
    """ONNX model (weights inside) of ``module`` (a :class:`~atp.export.decoder.LlamaLikeDecoder`).

    ``max_positions``: length of the RoPE caches (default: the model's ``max_position_embeddings``).

    Raises:
        ConfigError: an int8 KV cache, a non-SiLU MLP or another layout the fused operators cannot express.
    """
    if module.kv_dtype != "float32":
        raise ConfigError("the fused decoder graph takes a float32 KV cache only; use the traced graph for --kv-cache int8")
    if getattr(module, "all_logits", False):
        raise ConfigError("the fused decoder graph returns last-position logits only")
    hq, hkv, hd = module.num_heads, module.num_kv_heads, module.head_dim
    g = _G()
    cos, sin = rope_caches(module, max_positions or module.max_positions)
    cos_n, sin_n = g.const("rope.cos_cache", cos), g.const("rope.sin_cache", sin)
    axis = mrope_axes(module)
    rope = _mrope(g, cos_n, sin_n, axis, hd) if axis is not None else None  # M-RoPE: rotary outside the attention op
    # seqlens_k = (number of real tokens) - 1 per row, total_sequence_length = mask length (int32 scalar).
    msum = g.node("ReduceSum", ["attention_mask", g.const("axes1", np.array([1], np.int64))], name="mask/ReduceSum", keepdims=0)[0]
    last = g.node("Sub", [msum, g.const("one_i64", np.array(1, np.int64))], name="mask/Sub")[0]
    seqlens = g.node("Cast", [last], ["seqlens_k"], name="mask/Cast", to=TensorProto.INT32)[0]
    tot = g.node("Shape", ["attention_mask"], name="mask/Shape", start=1, end=2)[0]
    tot = g.node("Squeeze", [tot, g.const("axes0", np.array([0], np.int64))], name="mask/Squeeze")[0]
    total = g.node("Cast", [tot], ["total_sequence_length"], name="mask/CastTotal", to=TensorProto.INT32)[0]

    layers = list(module.layers)
    h = "inputs_embeds"
    pending = None  # output of the previous block, not yet added to the residual stream h
    x = None
    for i, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        act = getattr(mlp, "act_fn", None)
        if not isinstance(act, torch.nn.SiLU) and type(act).__name__ not in ("SiLU", "SiLUActivation"):
            raise ConfigError(f"layer {i}: the fused decoder graph supports SwiGLU (SiLU) MLPs, got {type(act).__name__}")
        gamma = g.const(f"layers.{i}.input_layernorm.weight", layer.input_layernorm.weight.detach().float().numpy())
        if pending is None:
            x = g.node("RMSNormalization", [h, gamma], [f"layers.{i}/ln1"], name=f"layers.{i}/ln1",
                       axis=-1, epsilon=_eps(layer.input_layernorm))[0]
        else:
            x, h = g.node("SkipSimplifiedLayerNormalization", [pending, h, gamma], [f"layers.{i}/ln1", "", "", f"layers.{i}/h"],
                          domain=MS, name=f"layers.{i}/ln1", epsilon=_eps(layer.input_layernorm))[0::3]
        p = f"layers.{i}.self_attn"
        q = _linear(g, x, attn.q_proj, f"{p}.q_proj")
        k = _linear(g, x, attn.k_proj, f"{p}.k_proj")
        v = _linear(g, x, attn.v_proj, f"{p}.v_proj")
        if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head before RoPE
            q = _head_norm(g, q, attn.q_norm, hq, hd, f"{p}.q_norm")
            k = _head_norm(g, k, attn.k_norm, hkv, hd, f"{p}.k_norm")
        rotary = [cos_n, sin_n, "position_ids"]
        if rope is not None:
            q, k, rotary = _rotate(g, q, hq, hd, rope, f"{p}/q"), _rotate(g, k, hkv, hd, rope, f"{p}/k"), []
        a = g.node("GroupQueryAttention",
                   [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total, *rotary],
                   [f"{p}/attn", f"present.{i}.key", f"present.{i}.value"], domain=MS, name=f"{p}/GroupQueryAttention",
                   num_heads=hq, kv_num_heads=hkv, do_rotary=int(rope is None), rotary_interleaved=0,
                   scale=float(hd) ** -0.5)[0]
        o = _linear(g, a, attn.o_proj, f"{p}.o_proj")
        gamma = g.const(f"layers.{i}.post_attention_layernorm.weight", layer.post_attention_layernorm.weight.detach().float().numpy())
        x, h = g.node("SkipSimplifiedLayerNormalization", [o, h, gamma], [f"layers.{i}/ln2", "", "", f"layers.{i}/h_attn"],
                      domain=MS, name=f"layers.{i}/ln2", epsilon=_eps(layer.post_attention_layernorm))[0::3]
        p = f"layers.{i}.mlp"
        gt = _linear(g, x, mlp.gate_proj, f"{p}.gate_proj")
        up = _linear(g, x, mlp.up_proj, f"{p}.up_proj")
        sg = g.node("Sigmoid", [gt], name=f"{p}/Sigmoid")[0]
        sl = g.node("Mul", [gt, sg], name=f"{p}/SiLU")[0]
        hm = g.node("Mul", [sl, up], name=f"{p}/Mul")[0]
        pending = _linear(g, hm, mlp.down_proj, f"{p}.down_proj")
        if i < module.deepstack:  # DeepStack level i joins the residual stream after layer i
            level = g.node("Gather", ["deepstack_embeds", g.const(f"deepstack.{i}", np.array(i, np.int64))],
                           name=f"deepstack.{i}/Gather", axis=0)[0]
            pending = g.node("Add", [pending, level], name=f"deepstack.{i}/Add")[0]
    gamma = g.const("norm.weight", module.norm.weight.detach().float().numpy())
    xf = g.node("SkipSimplifiedLayerNormalization", [pending, h, gamma], ["final_norm", "", "", ""], domain=MS,
                name="norm", epsilon=_eps(module.norm))[0]
    xl = g.node("Slice", [xf, g.const("slice.start", np.array([-1], np.int64)), g.const("slice.end", np.array([2**62], np.int64)),
                          g.const("slice.axis", np.array([1], np.int64))], name="last_position/Slice")[0]
    logits_raw = _linear(g, xl, module.lm_head, "lm_head")
    g.node("Identity", [logits_raw], ["logits"], name="logits/Identity")

    d = layers[0].input_layernorm.weight.shape[0]
    vocab = module.lm_head.weight.shape[0]
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("inputs_embeds", f, ["batch", "sequence", d]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64,
                                            ["batch", "sequence"] if rope is None else [3, "batch", "sequence"])]
    if module.deepstack:
        inputs.append(helper.make_tensor_value_info("deepstack_embeds", f, [module.deepstack, "batch", "sequence", d]))
    outputs = [helper.make_tensor_value_info("logits", f, ["batch", 1, vocab])]
    for i in range(len(layers)):
        for part in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{part}", f, ["batch", hkv, "past_sequence", hd]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{part}", f, ["batch", hkv, "total_sequence", hd]))
    graph = helper.make_graph(g.nodes, "atp_fused_decoder", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, MIN_OPSET)), helper.make_opsetid(MS, 1)],
                              producer_name="atp")
    model.ir_version = 10
    return model


def save_fused_decoder(module, path: Path, opset: int, external_data_threshold: int) -> onnx.ModelProto:
    """Build the fused graph of ``module`` and save it at ``path`` (weights beside it in ``<name>.data`` above
    ``external_data_threshold`` bytes); returns the saved model without weights loaded."""
    path = Path(path)
    model = build_fused_decoder(module, opset=opset)
    external = sum(t.ByteSize() for t in model.graph.initializer) > external_data_threshold
    onnx.save_model(model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)
    onnx.checker.check_model(str(path))
    log.info("wrote fused decoder graph %s (%d nodes)", path.name, len(model.graph.node))
    return onnx.load(str(path), load_external_data=False)
