"""Activation-aware per-input-channel scaling for int4 weights (AWQ-style), folded into the preceding op.

For a group of linears that read the same input ``x`` (q/k/v after ``input_layernorm``, gate/up after
``post_attention_layernorm``, down after ``up_proj``), ``y = W x = (W diag(s)) (x / s)``: the weights'
input columns are multiplied by ``s`` before int4 quantization and ``1/s`` is folded into the op that
produced ``x`` (the RMSNorm weight, or up_proj's output rows: ``down(silu(gate) * up)`` is linear in
``up``). The function is unchanged in exact arithmetic; salient input channels (large mean ``|x|``) get
finer effective quantization steps. ``s = mean|x|^alpha`` (normalised to geometric mean 1), with
``alpha`` per group chosen from a small grid to minimise the group's output error on calibration
activations, with the int8 per-block activation quantization that MatMulNBits ``accuracy_level=4``
applies included. ``alpha = 0`` (``s = 1``, plain RTN) is in the grid, so the calibration error never
grows. v->o is skipped (with grouped-query attention one v row feeds several heads), and the lm_head
(tied to the input embedding) is left alone.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from atp.errors import CalibrationError

log = logging.getLogger(__name__)

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def scaling_groups(n_layers: int) -> list[tuple[str, tuple[str, ...]]]:
    """``(previous op, linears)`` per scaling group, canonical decoder names."""
    out = []
    for i in range(n_layers):
        p = f"layers.{i}"
        out += [(f"{p}.input_layernorm", (f"{p}.self_attn.q_proj", f"{p}.self_attn.k_proj", f"{p}.self_attn.v_proj")),
                (f"{p}.post_attention_layernorm", (f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj")),
                (f"{p}.mlp.up_proj", (f"{p}.mlp.down_proj",))]
    return out


def collect_inputs(model, batches, max_rows: int = 512, seed: int = 0) -> dict[str, np.ndarray]:
    """Sampled input rows ``[<= max_rows, K]`` of the first linear of each scaling group (fp32 forward of the
    HF causal LM ``model`` over token-id ``batches``)."""
    import torch

    from atp.calibration.salience import decoder_linears

    linears = decoder_linears(model)
    n_layers = len({m.group(1) for n in linears if (m := re.match(r"layers\.(\d+)\.", n))})
    firsts = {lins[0] for _, lins in scaling_groups(n_layers)}
    rows: dict[str, list] = {n: [] for n in firsts}
    hooks = [linears[n].register_forward_pre_hook(lambda m, inp, n=n: rows[n].append(inp[0].detach().reshape(-1, inp[0].shape[-1])))
             for n in firsts]
    try:
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    if not any(rows.values()):
        raise CalibrationError("calibration data is empty: no tokens reached the decoder")
    rng = np.random.default_rng(seed)
    out = {}
    for n, r in rows.items():
        x = torch.cat(r).float().numpy()
        out[n] = x[rng.choice(len(x), max_rows, replace=False)] if len(x) > max_rows else x
    return out


def _act_quant(x: np.ndarray, block: int) -> np.ndarray:
    xb = x.reshape(x.shape[0], -1, block)
    s = np.abs(xb).max(-1, keepdims=True) / 127.0
    s = np.where(s > 0, s, 1.0)
    return (np.round(xb / s) * s).reshape(x.shape)


def search_scales(x: np.ndarray, w: np.ndarray, group_size: int, symmetric: bool = True, alphas=ALPHAS,
                  activations: bool = True) -> tuple[np.ndarray, float, dict]:
    """(scales ``s [K]``, best alpha, {alpha: relative output error}) for inputs ``x [T, K]`` and the group's
    stacked weights ``w [N, K]``."""
    from atp.calibration.quant_reference import fake_quant

    ref = x @ w.T
    mag = np.abs(x).mean(0) + 1e-8
    errs, best = {}, (None, np.inf, None)
    for a in alphas:
        s = mag**a
        s = s / np.sqrt(s.max() * s.min())
        xs = x / s
        if activations:
            xs = _act_quant(xs, group_size)
        y = xs @ fake_quant(w * s[None], 4, group_size, symmetric).T
        err = float(((y - ref) ** 2).mean() / ((ref**2).mean() + 1e-12))
        errs[a] = err
        if err < best[1]:
            best = (s.astype(np.float32), err, a)
    return best[0], best[2], errs


def apply_awq_scaling(decoder, inputs: dict[str, np.ndarray], group_size: int, symmetric: bool = True,
                      alphas=ALPHAS, activations: bool = True) -> dict:
    """Search and fold per-input-channel scales into ``decoder`` (a :class:`~atp.export.decoder.LlamaLikeDecoder`
    or anything :func:`~atp.calibration.salience.decoder_linears` reads; modified in place, so pass a copy).

    Returns a report: chosen alpha and calibration error (RTN vs scaled) per group.
    """
    import torch

    from atp.calibration.salience import decoder_linears

    linears = decoder_linears(decoder)
    n_layers = len(decoder.layers)
    report = {}
    for prev, names in scaling_groups(n_layers):
        if names[0] not in inputs:
            raise CalibrationError(f"no calibration activations for {names[0]}")
        w = np.concatenate([linears[n].weight.detach().float().numpy() for n in names])
        s, alpha, errs = search_scales(inputs[names[0]], w, group_size, symmetric, alphas, activations)
        report[names[0].rsplit(".", 1)[0] + ":" + "/".join(n.rsplit(".", 1)[1] for n in names)] = {
            "alpha": alpha, "rtn_error": errs[0.0] if 0.0 in errs else None, "error": errs[alpha]}
        if alpha == 0.0:
            continue
        st = torch.from_numpy(s)
        with torch.no_grad():
            for n in names:
                linears[n].weight.mul_(st[None].to(linears[n].weight.dtype))
            if prev.endswith("up_proj"):
                up = linears[prev]
                up.weight.div_(st[:, None].to(up.weight.dtype))
                if up.bias is not None:
                    up.bias.div_(st.to(up.bias.dtype))
            else:
                i, norm = re.match(r"layers\.(\d+)\.(\w+)$", prev).groups()
                getattr(decoder.layers[int(i)], norm).weight.div_(st.to(torch.float32))
    chosen = [r["alpha"] for r in report.values()]
    log.info("AWQ scaling: %d groups, alpha mean %.2f, %d kept unscaled", len(chosen), float(np.mean(chosen)),
             sum(a == 0.0 for a in chosen))
    return report
