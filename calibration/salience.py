"""Per-output-feature quantization salience of every linear layer of a decoder (MixLLM-style).

For output feature ``j`` of a linear layer with weight ``W [N, K]`` the salience is the estimated
loss increase when that feature goes from 8 to 4 bits::

    s_j = G_j * sum_k ((w_jk - Q4(w_jk))^2 - (w_jk - Q8(w_jk))^2) * H_kk

with ``H_kk = mean_t x_tk^2`` (the diagonal of ``X^T X / T`` over calibration tokens ``t``) and
``G_j`` the output weighting: 1 for ``method="hessian"`` (layer-output error), or the mean squared
loss gradient at output ``j`` for ``method="fisher"`` (a diagonal Fisher estimate, so a feature
that matters downstream ranks higher; comparable across layers). Saliences are ranked globally
across layers by :mod:`atp.calibration.mixed_precision`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from atp.calibration.quant_reference import check_group_size, fake_quant
from atp.errors import CalibrationError, ConfigError

log = logging.getLogger(__name__)

METHODS = ("hessian", "fisher")


def canonical_linear_name(name: str) -> str | None:
    """Name of a decoder linear relative to the decoder stack (``layers.3.mlp.up_proj``, ``lm_head``), or None
    for linears outside it (vision tower, projector)."""
    if "vision" in name or "projector" in name:
        return None
    if name == "lm_head" or name.endswith(".lm_head"):
        return "lm_head"
    at = name.find("layers.")
    return name[at:] if at >= 0 else None


def decoder_linears(model) -> dict:
    """``canonical name -> nn.Linear`` of the decoder layers and lm_head of a causal LM or LLaVA."""
    from torch import nn

    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            c = canonical_linear_name(name)
            if c is not None and c not in out:
                out[c] = mod
    if not out:
        raise CalibrationError("the model has no decoder linear layers (layers.*, lm_head) to quantize")
    return out


@dataclass
class LayerStats:
    """Calibration statistics of one linear layer (numpy)."""

    h_diag: np.ndarray  # [K] mean x_k^2
    g_diag: np.ndarray | None  # [N] mean (dL/dy_j)^2, fisher only
    tokens: int


def collect_stats(model, batches, method: str = "fisher") -> dict[str, LayerStats]:
    """Run calibration batches through ``model`` and gather per-layer input (and gradient) statistics.

    Args:
        model: Causal LM (or LLaVA) in eval mode; called as ``model(input_ids=..., labels=...)``.
        batches: Iterable of int64 token tensors ``[B, S]`` (S >= 2 for ``fisher``).
        method: ``hessian`` (forward only) or ``fisher`` (forward + backward of the LM loss).

    Raises:
        CalibrationError: no calibration tokens.
    """
    import torch

    if method not in METHODS:
        raise ConfigError(f"salience method must be one of {METHODS}, got {method!r}")
    linears = decoder_linears(model)
    h = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
    g = {n: torch.zeros(m.out_features, dtype=torch.float64) for n, m in linears.items()}
    count = {"tokens": 0}
    hooks = []

    def make_hook(name):
        def hook(mod, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            h[name] += (x * x).sum(0)
            if method == "fisher" and output.requires_grad:
                def grad_hook(grad):
                    gg = grad.detach().reshape(-1, grad.shape[-1]).double()
                    g[name].add_((gg * gg).sum(0))
                output.register_hook(grad_hook)
        return hook

    for name, mod in linears.items():
        hooks.append(mod.register_forward_hook(make_hook(name)))
    params = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for ids in batches:
            ids = torch.as_tensor(ids, dtype=torch.int64)
            if ids.ndim == 1:
                ids = ids[None]
            if ids.numel() == 0:
                continue
            count["tokens"] += ids.numel()
            if method == "fisher":
                if ids.shape[1] < 2:
                    raise CalibrationError("fisher salience needs calibration sequences of at least 2 tokens")
                emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
                out = model(inputs_embeds=emb, labels=ids)
                out.loss.backward()
            else:
                with torch.no_grad():
                    model(input_ids=ids)
    finally:
        for hk in hooks:
            hk.remove()
        for p, r in zip(model.parameters(), params):
            p.requires_grad_(r)
    t = count["tokens"]
    if t == 0:
        raise CalibrationError("calibration data is empty: give at least one non-empty text sample")
    return {n: LayerStats((h[n] / t).float().numpy(), (g[n] / t).float().numpy() if method == "fisher" else None, t)
            for n in linears}


def feature_salience(w: np.ndarray, stats: LayerStats, group_size: int, symmetric: bool) -> np.ndarray:
    """Per-output-feature salience ``[N]`` of one layer (see the module docstring)."""
    w = np.asarray(w, np.float32)
    e4 = (w - fake_quant(w, 4, group_size, symmetric)) ** 2
    e8 = (w - fake_quant(w, 8)) ** 2
    s = (e4 - e8) @ stats.h_diag.astype(np.float32)
    if stats.g_diag is not None:
        s = s * stats.g_diag
    return np.maximum(s, 0).astype(np.float32)


def compute_salience(model, stats: dict[str, LayerStats], group_size: int, symmetric: bool) -> dict[str, np.ndarray]:
    """``layer -> salience [N]`` for every decoder linear of ``model``."""
    out = {}
    for name, mod in decoder_linears(model).items():
        w = mod.weight.detach().float().numpy()
        check_group_size(group_size, w.shape[1], f" of {name}")
        out[name] = feature_salience(w, stats[name], group_size, symmetric)
    return out


def layer_sensitivity(salience: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-layer sensitivity for reporting: total estimated loss increase of the layer at 4 bits."""
    return {n: float(s.sum()) for n, s in salience.items()}
