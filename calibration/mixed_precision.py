"""Bit allocation: int8 for the globally most salient output features, int4 for the rest.

A :class:`QuantPlan` says, per decoder linear layer (canonical names: ``layers.3.mlp.up_proj``,
``lm_head``), which output features are int8 and how the int4 rest is grouped. Average bits count
weight bits only (4 or 8 per weight); the scales add ``32 / g`` bits per int4 weight in fp32
(:meth:`QuantPlan.summary` reports both).

The gate and up projections of one MLP are allocated as a unit (feature ``j`` of both is int8 or
both int4), so they share one output permutation that the down projection absorbs in its input
rows: the two-GEMM export needs no gather there.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np

from atp.calibration.quant_reference import check_group_size, fake_quant, fake_quant_mixed
from atp.errors import CalibrationError, ConfigError

log = logging.getLogger(__name__)

PLAN_FORMAT = "atp-quant-plan"
PLAN_VERSION = 1
WEIGHT_MODES = ("fp32", "fp16", "int8", "int4", "mixed")
MIN_BITS, MAX_BITS = 4.0, 8.0
_GATE = re.compile(r"^(layers\.\d+\.mlp)\.gate_proj$")


def check_bits(bits: float) -> float:
    """Validate an average-bits budget (4..8)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or not np.isfinite(bits):
        raise ConfigError(f"bits budget must be a number in [{MIN_BITS:g}, {MAX_BITS:g}], got {bits!r}")
    if not (MIN_BITS <= float(bits) <= MAX_BITS):
        raise ConfigError(f"bits budget {bits:g} is out of range: mixed int4/int8 weights average between "
                          f"{MIN_BITS:g} (all int4) and {MAX_BITS:g} (all int8) bits")
    return float(bits)


@dataclass
class LayerPlan:
    """Precision of one linear layer: ``int8`` holds the int8 output features (ascending)."""

    name: str
    out_features: int
    in_features: int
    int8: np.ndarray
    tied_with: str | None = None  # gate/up pair sharing one permutation

    @property
    def n8(self) -> int:
        return int(len(self.int8))


@dataclass
class QuantPlan:
    """Per-layer weight precision of a decoder.

    Attributes:
        weights: ``int4``, ``int8`` or ``mixed``.
        group_size: int4 group size along the input dim.
        symmetric: int4 symmetric (implicit zero point 8) or asymmetric (uint8 zero points).
        target_bits: Requested average bits (mixed).
        method: Salience method used (mixed), or ``rtn``.
        layers: ``name -> LayerPlan``.
        salience: ``name -> [N]`` feature salience (mixed), for reporting and re-allocation.
    """

    weights: str
    group_size: int
    symmetric: bool
    target_bits: float
    method: str
    layers: dict[str, LayerPlan]
    salience: dict[str, np.ndarray] = field(default_factory=dict)

    # ------------------------------------------------------------------ figures
    @property
    def total_weights(self) -> int:
        return sum(lp.out_features * lp.in_features for lp in self.layers.values())

    def average_bits(self) -> float:
        """Average weight bits (4 per int4 weight, 8 per int8 weight; scales excluded)."""
        int8 = sum(lp.n8 * lp.in_features for lp in self.layers.values())
        return 4.0 + 4.0 * int8 / self.total_weights

    def summary(self) -> dict:
        """Figures for logs and manifests."""
        int8_w = sum(lp.n8 * lp.in_features for lp in self.layers.values())
        int4_w = self.total_weights - int8_w
        scale_bits = int4_w * (32 / self.group_size + (0 if self.symmetric else 8 / self.group_size)) + \
            sum(lp.n8 for lp in self.layers.values()) * 32
        return {"weights": self.weights, "average_bits": round(self.average_bits(), 4),
                "average_bits_with_scales": round(self.average_bits() + scale_bits / self.total_weights, 4),
                "int8_fraction": round(int8_w / self.total_weights, 4), "group_size": self.group_size,
                "symmetric": self.symmetric, "method": self.method, "layers": len(self.layers)}

    # ------------------------------------------------------------------ (de)serialisation
    def to_section(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON dict, tensors) for the ``quantization`` section of a calibration artifact."""
        tensors = {f"int8.{n}": lp.int8.astype(np.int64) for n, lp in self.layers.items()}
        tensors.update({f"salience.{n}": s.astype(np.float32) for n, s in self.salience.items()})
        data = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "weights": self.weights, "group_size": self.group_size,
                "symmetric": self.symmetric, "target_bits": self.target_bits, "method": self.method,
                "summary": self.summary(),
                "layers": {n: {"out_features": lp.out_features, "in_features": lp.in_features, "n8": lp.n8,
                               "tied_with": lp.tied_with} for n, lp in self.layers.items()},
                "layout": "output features permuted: int8 first (ascending), then int4 (ascending); "
                          "int4 packed low nibble = even k; int8 symmetric per output feature"}
        return data, tensors

    @classmethod
    def from_section(cls, data: dict, tensors: dict[str, np.ndarray]) -> "QuantPlan":
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise CalibrationError("the calibration artifact has no quantization plan; run `atp-export calibrate ... --bits B`")
        if data.get("version") != PLAN_VERSION:
            raise CalibrationError(f"quantization plan version {data.get('version')!r} is not supported (this atp reads {PLAN_VERSION})")
        layers = {}
        for n, d in data["layers"].items():
            idx = np.asarray(tensors.get(f"int8.{n}", np.zeros(0, np.int64)), np.int64)
            if len(idx) != d["n8"]:
                raise CalibrationError(f"quantization plan is corrupt: layer {n} lists {d['n8']} int8 features, tensors hold {len(idx)}")
            layers[n] = LayerPlan(n, int(d["out_features"]), int(d["in_features"]), idx, d.get("tied_with"))
        sal = {k[len("salience."):]: np.asarray(v) for k, v in tensors.items() if k.startswith("salience.")}
        return cls(data["weights"], int(data["group_size"]), bool(data["symmetric"]), float(data["target_bits"]),
                   data["method"], layers, sal)

    def check_model(self, shapes: dict[str, tuple[int, int]]) -> None:
        """Raise a CalibrationError unless the plan's layers match ``name -> (N, K)`` of the model."""
        mine = {n: (lp.out_features, lp.in_features) for n, lp in self.layers.items()}
        if mine != dict(shapes):
            diff = sorted(set(mine.items()) ^ set(dict(shapes).items()))[:3]
            raise CalibrationError(f"the quantization plan was made for another model (layers differ, e.g. {diff}); "
                                   "re-run `atp-export calibrate` on this model")


def _tie_groups(names) -> dict[str, str]:
    """``gate_proj name -> up_proj name`` for MLPs that have both."""
    names = set(names)
    out = {}
    for n in names:
        m = _GATE.match(n)
        if m and f"{m.group(1)}.up_proj" in names:
            out[n] = f"{m.group(1)}.up_proj"
    return out


def uniform_plan(shapes: dict[str, tuple[int, int]], weights: str, group_size: int = 32, symmetric: bool = True) -> QuantPlan:
    """All-int4 (round to nearest) or all-int8 plan for layers ``name -> (N, K)``."""
    if weights not in ("int4", "int8"):
        raise ConfigError(f"uniform plans are int4 or int8, got {weights!r}")
    for n, (_, k) in shapes.items():
        check_group_size(group_size, k, f" of {n}")
    layers = {n: LayerPlan(n, nn_, k, np.arange(nn_) if weights == "int8" else np.zeros(0, np.int64)) for n, (nn_, k) in shapes.items()}
    return QuantPlan(weights, group_size, symmetric, 8.0 if weights == "int8" else 4.0, "rtn", layers)


def allocate(salience: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]], bits: float, group_size: int,
             symmetric: bool = True, method: str = "fisher") -> QuantPlan:
    """Give int8 to the most salient output features, ranked globally, until ``bits`` average bits.

    Units are ranked by salience per extra bit (a feature of a wide layer costs more); gate/up
    feature pairs are one unit. The greedy pass skips units that would overshoot and keeps filling
    with smaller ones, so the result is within one unit (``4 * K / total`` bits) below the budget.

    Raises:
        ConfigError: bits out of [4, 8], group size not dividing a layer's input features.
        CalibrationError: salience missing for a layer.
    """
    bits = check_bits(bits)
    for n, (_, k) in shapes.items():
        check_group_size(group_size, k, f" of {n}")
        if n not in salience or len(salience[n]) != shapes[n][0]:
            raise CalibrationError(f"no salience for layer {n} (or the wrong length); re-run calibration on this model")
    ties = _tie_groups(shapes)
    tied_up = set(ties.values())
    unit_layer, unit_feat, unit_sal, unit_cost = [], [], [], []
    for li, n in enumerate(sorted(shapes)):
        if n in tied_up:
            continue
        nout, k = shapes[n]
        s = salience[n].astype(np.float64)
        cost = np.full(nout, k, np.int64)
        if n in ties:
            up = ties[n]
            s = s + salience[up]
            cost = cost + shapes[up][1]
        unit_layer.append(np.full(nout, li))
        unit_feat.append(np.arange(nout))
        unit_sal.append(s)
        unit_cost.append(cost)
    names = sorted(shapes)
    layer_of, feat, sal, cost = (np.concatenate(a) for a in (unit_layer, unit_feat, unit_sal, unit_cost))
    total = sum(a * b for a, b in shapes.values())
    budget = (bits - 4.0) / 4.0 * total  # int8 weights allowed
    order = np.argsort(-(sal / cost), kind="stable")
    csum = np.cumsum(cost[order])
    take = csum <= budget
    chosen = order[take]
    used = int(csum[take][-1]) if take.any() else 0
    rest = order[~take]
    for u in rest[cost[rest] <= budget - used]:  # fill the remainder with units that still fit
        if used + cost[u] <= budget:
            chosen = np.append(chosen, u)
            used += int(cost[u])
    int8 = {n: [] for n in shapes}
    for u in chosen:
        n = names[layer_of[u]]
        int8[n].append(feat[u])
        if n in ties:
            int8[ties[n]].append(feat[u])
    inv_ties = {v: k for k, v in ties.items()}
    layers = {n: LayerPlan(n, shapes[n][0], shapes[n][1], np.sort(np.asarray(int8[n], np.int64)),
                           ties.get(n) or inv_ties.get(n)) for n in shapes}
    plan = QuantPlan("mixed", group_size, symmetric, bits, method, layers, {n: np.asarray(s) for n, s in salience.items()})
    log.info("bit allocation: target %.3f, got %.4f bits (%.2f%% of weights int8)", bits, plan.average_bits(),
             100 * plan.summary()["int8_fraction"])
    return plan


def model_shapes(model) -> dict[str, tuple[int, int]]:
    """``canonical name -> (out_features, in_features)`` of a model's decoder linears."""
    from atp.calibration.salience import decoder_linears

    return {n: (m.out_features, m.in_features) for n, m in decoder_linears(model).items()}


def fake_quant_weight(w: np.ndarray, plan: QuantPlan, name: str) -> np.ndarray:
    """The dequantized weight a plan gives layer ``name`` (original feature order)."""
    lp = plan.layers[name]
    if plan.weights == "int8" or lp.n8 == lp.out_features:
        return fake_quant(w, 8)
    if lp.n8 == 0:
        return fake_quant(w, 4, plan.group_size, plan.symmetric)
    return fake_quant_mixed(w, lp.int8, plan.group_size, plan.symmetric)


def quantize_activation_blocks(x, block: int):
    """Int8 fake-quant of activations per row in blocks of ``block`` along the last dim (scale = max|x| / 127):
    what ONNX Runtime's MatMulNBits does to its input at ``accuracy_level=4``."""
    import torch

    shape = x.shape
    xb = x.reshape(*shape[:-1], shape[-1] // block, block)
    scale = xb.abs().amax(-1, keepdim=True) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.round(xb / scale) * scale).reshape(shape)


def apply_fake_quant(model, plan: QuantPlan, activations: bool = True):
    """Replace every decoder linear's weight of ``model`` (in place) by its quantize-dequantize under ``plan``:
    the PyTorch reference of the quantized graphs. A tied lm_head is untied first (the embedding stays fp32).

    With ``activations`` (default), each linear's input is also int8 fake-quantized per row in blocks of
    ``plan.group_size`` (a forward pre-hook), as ORT's MatMulNBits ``accuracy_level=4`` does: the
    reference then matches the ORT graph to float rounding (W4A8 / W8A8, not weight-only)."""
    import torch

    from atp.calibration.salience import decoder_linears

    linears = decoder_linears(model)
    plan.check_model({n: (m.out_features, m.in_features) for n, m in linears.items()})
    for name, mod in linears.items():
        w = mod.weight.detach().float().cpu().numpy()
        mod.weight = torch.nn.Parameter(torch.from_numpy(fake_quant_weight(w, plan, name)).to(mod.weight.dtype),
                                        requires_grad=False)
        if activations:
            mod.register_forward_pre_hook(lambda m, inp, b=plan.group_size: (quantize_activation_blocks(inp[0], b), *inp[1:]))
    return model


def permute_mlp_features(model, plan: QuantPlan) -> QuantPlan:
    """Reorder each mixed MLP's intermediate features (in place) so its int8 features come first.

    Rows of gate_proj and up_proj and columns of down_proj are permuted together (the function is
    unchanged in exact arithmetic); the returned plan lists the gate/up int8 features as ``0..n8-1``,
    so the two-GEMM export concatenates them in order with no gather. Groups of down_proj are formed
    over the permuted input order, in the graph and in the fake-quant reference alike.
    """
    import torch

    from atp.calibration.quant_reference import feature_permutation
    from atp.calibration.salience import decoder_linears

    linears = decoder_linears(model)
    layers = dict(plan.layers)
    salience = dict(plan.salience)
    for gate, up in _tie_groups(plan.layers).items():
        lp = plan.layers[gate]
        down = gate[: -len("gate_proj")] + "down_proj"
        if not (0 < lp.n8 < lp.out_features) or down not in linears or not np.array_equal(lp.int8, plan.layers[up].int8):
            continue
        if linears[gate].bias is not None or linears[up].bias is not None:
            continue
        perm = torch.from_numpy(feature_permutation(lp.out_features, lp.int8))
        with torch.no_grad():
            for n in (gate, up):
                linears[n].weight = torch.nn.Parameter(linears[n].weight[perm].clone(), requires_grad=False)
            linears[down].weight = torch.nn.Parameter(linears[down].weight[:, perm].clone(), requires_grad=False)
        for n in (gate, up):
            layers[n] = LayerPlan(n, lp.out_features, lp.in_features, np.arange(lp.n8, dtype=np.int64), plan.layers[n].tied_with)
            if n in salience:
                salience[n] = salience[n][perm.numpy()]
    return QuantPlan(plan.weights, plan.group_size, plan.symmetric, plan.target_bits, plan.method, layers, salience)
