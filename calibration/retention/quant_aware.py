"""``qat``: quantization-aware retention: keep the tokens a low-bit model needs most.

score_i = w_err * minmax(quantization error_i) + w_out * minmax(outlier intensity_i)
        + w_sem * minmax(CLS attention_i)

- quantization error: relative L2 error of token i's features after symmetric group-wise
  fake quantization (``bits``, ``group_size`` along channels), as the quantized projector sees them;
- outlier intensity: max |x_i| / rms(x_i);
- semantic relevance: CLS attention of the feature layer.
Weights come from calibration; the defaults favour semantics. A negative weight prefers tokens
with *low* values of that term (e.g. ``w_err < 0`` keeps the tokens the quantized model reproduces
most faithfully; ``w_out > 0`` keeps the outlier tokens a low-bit model may need): the direction is
for calibration to fit. Weights are normalised to unit L1 norm.
"""

from __future__ import annotations

import torch

from atp.calibration.retention.base import Scorer, VisionContext, minmax
from atp.registry import SCORERS


def fake_quant_groupwise(x: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Symmetric per-group fake quantization along the last dimension (``D % group_size == 0``)."""
    *lead, d = x.shape
    if d % group_size:
        raise ValueError(f"feature size {d} is not a multiple of group size {group_size}")
    xg = x.reshape(*lead, d // group_size, group_size)
    qmax = float(2 ** (bits - 1) - 1)
    scale = xg.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / qmax
    return (torch.round(xg / scale).clamp(-qmax - 1, qmax) * scale).reshape(*lead, d)


def fake_quantized_vision(model: torch.nn.Module, wbits: int, abits: int, group: int = 32) -> torch.nn.Module:
    """A deep copy of a LLaVA-style ``model`` with its vision tower and projector fake-quantized.

    Every ``nn.Linear`` there gets weights quantized symmetric group-wise along the input dimension
    (``group``, or the whole row where it does not divide it) to ``wbits`` and its input quantized per
    token to ``abits`` (a forward pre-hook). The W``wbits``A``abits`` stand-in of a quantized deployment
    that ``bench/qat_reconstruction.py`` and the ``qat`` tests score in.
    """
    import copy

    q = copy.deepcopy(model)
    for part in (q.model.vision_tower, q.model.multi_modal_projector):
        for m in part.modules():
            if isinstance(m, torch.nn.Linear):
                g = group if m.weight.shape[1] % group == 0 else m.weight.shape[1]
                with torch.no_grad():
                    m.weight.copy_(fake_quant_groupwise(m.weight, wbits, g))
                m.register_forward_pre_hook(lambda mod, args, b=abits: (fake_quant_groupwise(args[0], b, args[0].shape[-1]),))
    return q


def token_terms(x: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(relative quantization error [B, N], outlier intensity [B, N]) of tokens ``x [B, N, D]``."""
    err = (x - fake_quant_groupwise(x, bits, group_size)).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-8)
    rms = x.pow(2).mean(dim=-1).sqrt().clamp_min(1e-8)
    return err, x.abs().amax(dim=-1) / rms


@SCORERS.register("qat")
class QuantAwareScorer(Scorer):
    """Quantization error + outlier intensity + CLS attention, min-max normalised and blended."""

    summary = "quantization-aware: group-quant error + outlier intensity + CLS attention"

    def __init__(self, bits: int = 4, group_size: int = 32, weights: tuple[float, float, float] = (0.25, 0.25, 0.5)):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        if len(weights) != 3 or sum(abs(float(w)) for w in weights) <= 0:
            raise ValueError(f"weights must be three numbers, not all zero, got {weights}")
        self.bits, self.group_size = bits, group_size
        total = sum(abs(float(w)) for w in weights)
        self.weights = tuple(float(w) / total for w in weights)

    def forward(self, ctx: VisionContext) -> torch.Tensor:
        x = ctx.features
        gs = self.group_size if x.shape[-1] % self.group_size == 0 else x.shape[-1]
        err, outlier = token_terms(x, self.bits, gs)
        w_err, w_out, w_sem = self.weights
        return w_err * minmax(err) + w_out * minmax(outlier) + w_sem * minmax(ctx.cls_attention())
