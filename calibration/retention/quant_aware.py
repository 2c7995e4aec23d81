"""``qat``: quantization-aware, text-conditioned retention: keep the tokens a low-bit model needs most.

score_i = w_err * minmax(quantization error_i) + w_out * minmax(outlier intensity_i)
        + w_sem * (alpha * minmax(CLS attention_i) + (1 - alpha) * minmax(text relevance_i))

- quantization error: relative L2 error of token i's features after symmetric fake quantization
  (``bits``, ``group_size`` channels per scale), as the quantized projector sees them. With
  ``granularity="tensor"`` (default) a scale is shared by the image's tokens per channel group (static
  activation scales, as TensorRT INT8 uses): weak tokens drown in the quantization noise of strong ones,
  and the term ranks how well the quantized model reproduces each token (tests/e2e/test_qat_quantized.py).
  ``"token"`` scales each token on its own (ORT MatMulNBits' dynamic rows): scale-invariant, and on the
  test model uncorrelated with reconstruction error (Spearman ~0.0 vs ~+0.3 for ``"tensor"``);
- outlier intensity: max |x_i| / rms(x_i);
- semantic relevance: ``atp``'s hybrid of CLS attention and the prompt's relevance to the token
  (LM embedding space, or CLIP space with an open_clip model), so the vision graph takes ``text_embeds``.

A negative weight prefers tokens with *low* values of that term: ``w_err < 0`` keeps the tokens the
quantized model reproduces most faithfully, ``w_out > 0`` the outlier tokens a low-bit model may need.
Weights are normalised to unit L1 norm; calibration (``atp-export calibrate``) fits them. The default
(-0.25, 0.25, 0.5) was chosen for the demo VLM on the multi-object calibration split (1,500 questions;
``atp-export calibrate`` scores it within 0.002 agreement of its best grid point); the old CLS-only,
positive-error default (0.25, 0.25, 0.5) was level with ``random`` there. The error term's useful sign
depends on the model and the deployment precision (``bench/results/qat_reconstruction_demo.md``): on the
stage-7 demo low-error tokens reconstructed best at W4A8 / W8A8 and high-error ones at W4A4; on the stage-8
demo high-error ones do at all three. Calibrate per deployment.
"""

from __future__ import annotations

import torch

from atp.calibration.retention.base import Scorer, VisionContext, check_text_space, hybrid_relevance, minmax, unit_interval
from atp.registry import SCORERS


GRANULARITIES = ("token", "tensor")


def _fake_quant(x: torch.Tensor, bits: int, group_size: int, share_tokens: bool) -> torch.Tensor:
    """Symmetric fake quantization along the last dimension in groups of ``group_size`` channels; a group's
    scale spans one token, or with ``share_tokens`` the same channel group of every token (dim -2)."""
    *lead, d = x.shape
    if d % group_size:
        raise ValueError(f"feature size {d} is not a multiple of group size {group_size}")
    xg = x.reshape(*lead, d // group_size, group_size)
    qmax = float(2 ** (bits - 1) - 1)
    scale = xg.abs().amax(dim=(-3, -1) if share_tokens else -1, keepdim=True).clamp_min(1e-8) / qmax
    return (torch.round(xg / scale).clamp(-qmax - 1, qmax) * scale).reshape(*lead, d)


def fake_quant_groupwise(x: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Symmetric per-group fake quantization along the last dimension (``D % group_size == 0``)."""
    return _fake_quant(x, bits, group_size, share_tokens=False)


def fake_quant_tensorwise(x: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Symmetric fake quantization of ``x [B, N, D]`` with one scale per (image, channel group) shared by
    all N tokens: a static per-tensor activation scale (TensorRT INT8 PTQ), refined per group of channels."""
    return _fake_quant(x, bits, group_size, share_tokens=True)


def check_granularity(granularity: str) -> str:
    """``granularity`` if it is one of :data:`GRANULARITIES`, else ValueError."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be 'token' or 'tensor', got {granularity!r}")
    return granularity


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


def token_terms(x: torch.Tensor, bits: int, group_size: int, granularity: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """(relative quantization error [B, N], outlier intensity [B, N]) of tokens ``x [B, N, D]``.

    ``granularity`` ``"token"``: scales per token and channel group (dynamic, as ORT's MatMulNBits
    quantizes its input rows); ``"tensor"``: scales per channel group shared by the image's tokens.
    """
    q = _fake_quant(x, bits, group_size, share_tokens=check_granularity(granularity) == "tensor")
    err = (x - q).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-8)
    rms = x.pow(2).mean(dim=-1).sqrt().clamp_min(1e-8)
    return err, x.abs().amax(dim=-1) / rms


DEFAULT_WEIGHTS = (-0.25, 0.25, 0.5)


@SCORERS.register("qat")
class QuantAwareScorer(Scorer):
    """Quantization error + outlier intensity + text-conditioned relevance, min-max normalised and blended."""

    summary = "quantization-aware: group-quant error + outlier intensity + (CLS attention + text relevance)"
    uses_saliency = True
    needs_text = True
    supports_clip = True

    def __init__(self, bits: int = 4, group_size: int = 32, weights: tuple[float, float, float] = DEFAULT_WEIGHTS,
                 alpha: float = 0.5, text_space: str = "lm", granularity: str = "tensor"):
        super().__init__()
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        if len(weights) != 3 or sum(abs(float(w)) for w in weights) <= 0:
            raise ValueError(f"weights must be three numbers, not all zero, got {weights}")
        self.bits, self.group_size = bits, group_size
        total = sum(abs(float(w)) for w in weights)
        self.weights = tuple(float(w) / total for w in weights)
        self.alpha = unit_interval("alpha", alpha)
        self.text_space = check_text_space(text_space)
        self.granularity = check_granularity(granularity)
        # without a text term the graph takes no prompt (an unused input would vanish from the export)
        self.needs_text = bool(self.weights[2]) and self.alpha < 1.0

    def forward(self, ctx: VisionContext) -> torch.Tensor:
        x = ctx.features
        gs = self.group_size if x.shape[-1] % self.group_size == 0 else x.shape[-1]
        err, outlier = token_terms(x, self.bits, gs, self.granularity)
        w_err, w_out, w_sem = self.weights
        score = w_err * minmax(err) + w_out * minmax(outlier)
        if self.needs_text:
            score = score + w_sem * hybrid_relevance(ctx, self.alpha, self.text_space)
        elif w_sem:
            score = score + w_sem * minmax(ctx.saliency())
        return score
