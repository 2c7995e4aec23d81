"""Vision graph: pixel_values -> tower -> scorer -> top-K gate -> connector.

Architecture-neutral: the tower (``atp.export.towers``: CLIP, SigLIP, ...) runs only the encoder layers up to the
feature layer the architecture reads and hands over a :class:`~atp.export.towers.base.TowerOutput` (features, grid,
saliency, key metric). The gate sits before a per-token connector (LLaVA's projector), so the connector runs on K
tokens, not N.
"""

from __future__ import annotations

import torch
from torch import nn

from atp.calibration.retention.base import Scorer, VisionContext
from atp.export.gate import auto_topk_ascending, gather_padded, gather_tokens, slice_rows, topk_ascending
from atp.export.towers.base import Tower, TowerOutput

#: Where the gate sits relative to the connector (recorded in the manifest as ``graphs.vision.gate_position``).
#: ``before_connector``: a per-token connector (LLaVA's MLP projector) runs on the K kept tokens only.
#: ``after_connector``: the connector runs on every tower token and the gate picks among its outputs (the language
#: model reads mixes of projected tokens: LLaVA-OneVision's bilinear resize of the grid).
GATE_POSITIONS = ("before_connector", "after_connector")


class VisionGate(nn.Module):
    """The vision path with the in-graph gate, for any registered tower.

    Args:
        tower: A :class:`~atp.export.towers.base.Tower` (features up to the architecture's feature layer).
        connector: The multimodal projector (per-token: ``[..., Dv] -> [..., D]``).
        scorer: Retention scorer module.
        lm_probe: Module with ``attention_probe(seq, layer, n_queries)`` (the decoder), for scorers with
            ``needs_prompt`` (``fastv``).
        clip_patches: ``pixel_values -> [B, N, E]`` CLIP-space patch embeddings (``atp`` in CLIP space).
        auto_keep: :class:`~atp.calibration.auto_keep.AutoKeep`: K per image from the score mass (``keep``
            becomes the per-request upper bound) and a third output ``kept_count [B]``; rows are padded to the
            batch's largest K (``kept_index`` -1, ``image_embeds`` zero rows).

    Graph inputs: ``pixel_values``, ``keep``, then ``text_embeds`` if the scorer ``needs_text``, then
    ``prompt_prefix`` and ``prompt_suffix`` if it ``needs_prompt``.
    """

    gate_position = "before_connector"

    def __init__(self, tower: Tower, connector: nn.Module, scorer: Scorer, lm_probe: nn.Module | None = None,
                 clip_patches: nn.Module | None = None, auto_keep=None):
        super().__init__()
        if auto_keep is not None and not scorer.auto_keep_supported:
            raise ValueError(f"scorer {type(scorer).__name__} returns pick order, not a score distribution: "
                             "it does not support --keep auto")
        self.auto_keep = auto_keep
        self.tower = tower
        self.projector = connector
        self.scorer = scorer
        if scorer.needs_prompt and lm_probe is None:
            raise ValueError(f"scorer {type(scorer).__name__} needs the language model (lm_probe)")
        self.lm_probe = lm_probe if scorer.needs_prompt else None
        if scorer.text_space == "clip" and clip_patches is None:
            raise ValueError("a scorer in CLIP text space needs the open_clip patch embedder")
        self.clip_patches = clip_patches if scorer.text_space == "clip" else None

    @property
    def saliency_kind(self) -> str:
        """What ``ctx.saliency`` is for this tower (``cls_attention`` or ``attention_received``)."""
        return self.tower.saliency_kind

    #: Image inputs after ``pixel_values`` and before ``keep`` (layouts that pick tokens: LLaVA-NeXT's token_index).
    layout_inputs = 0

    def tower_output(self, pixel_values: torch.Tensor, *layout: torch.Tensor) -> TowerOutput:
        """The tower's output over the tokens the gate chooses from (``[B, N, ...]``)."""
        return self.tower(pixel_values)

    def context(self, pixel_values: torch.Tensor, keep: torch.Tensor, text_embeds: torch.Tensor | None = None,
                prompt_prefix: torch.Tensor | None = None, prompt_suffix: torch.Tensor | None = None,
                layout: tuple = ()) -> VisionContext:
        return self._context(pixel_values, keep, text_embeds, prompt_prefix, prompt_suffix, layout)[0]

    def _context(self, pixel_values, keep, text_embeds, prompt_prefix, prompt_suffix, layout) -> tuple[VisionContext, TowerOutput]:
        out = self.tower_output(pixel_values, *layout)
        probe = self.lm_probe.attention_probe if self.lm_probe is not None else None
        clip = (lambda: self.clip_patches(pixel_values)) if self.clip_patches is not None else None
        return VisionContext(features=out.features, saliency=out.saliency, project=self.projector, keep=keep,
                             text_embeds=text_embeds, prompt_prefix=prompt_prefix, prompt_suffix=prompt_suffix,
                             lm_attention=probe, clip_patches=clip, key_metric=out.key_metric,
                             saliency_kind=out.saliency_kind, _projected=out.projected), out

    def forward(self, pixel_values: torch.Tensor, *rest: torch.Tensor):
        layout, keep, extra = rest[:self.layout_inputs], rest[self.layout_inputs], list(rest[self.layout_inputs + 1:])
        text_embeds = extra.pop(0) if self.scorer.needs_text else None
        prefix, suffix = (extra.pop(0), extra.pop(0)) if self.lm_probe is not None else (None, None)
        ctx, out = self._context(pixel_values, keep, text_embeds, prefix, suffix, layout)
        if self.auto_keep is not None:
            index, count = auto_topk_ascending(self.scorer(ctx), keep, self.auto_keep)
            if ctx._projected is not None:
                return gather_padded(ctx._projected, index), index, count
            mask = (index >= 0).unsqueeze(-1).to(ctx.features.dtype)
            return self.projector(gather_tokens(ctx.features, torch.clamp(index, min=0))) * mask, index, count
        if self.scorer.merges_tokens:  # VisionZip merge: K - c dominant + c contextual tokens
            dominant, c = self.scorer.split(keep)
            index = topk_ascending(self.scorer(ctx), dominant)
            merged = slice_rows(self.scorer.merge(ctx, index, c), c)
            return self.projector(torch.cat([gather_tokens(ctx.features, index), merged], dim=1)), index
        index = topk_ascending(self.scorer(ctx), keep)
        if out.deepstack is not None:  # DeepStack: each level's features of the same kept tokens, [L, B, K, D]
            levels = torch.stack([gather_tokens(level, index) for level in out.deepstack])
            return gather_tokens(ctx._projected, index), index, levels
        if ctx._projected is not None:  # the scorer already projected every token: gather, do not project twice
            return gather_tokens(ctx._projected, index), index
        return self.projector(gather_tokens(ctx.features, index)), index


class TokenIndexGate(VisionGate):
    """The gate over tokens picked from several views: ``pixel_values [V, 3, S, S]`` (one image's views) and
    ``token_index [M]`` (int64 into the ``[V * P]`` tower tokens, in the order the language model reads them: LLaVA-NeXT's
    base view then unpadded grid) make one ``[1, M]`` row; each view's saliency is its own (CLS attention sums to 1
    per view), so the top-K is global across the views. ``kept_index`` indexes the M tokens."""

    layout_inputs = 1

    def tower_output(self, pixel_values: torch.Tensor, token_index: torch.Tensor) -> TowerOutput:
        out = self.tower(pixel_values)

        def pick(x):  # [V, P, ...] -> [1, M, ...]
            flat = x.reshape(1, -1, *x.shape[2:])
            return torch.index_select(flat, 1, token_index)

        return TowerOutput(features=pick(out.features), grid=out.grid, saliency=lambda: pick(out.saliency()),
                           saliency_kind=out.saliency_kind, key_metric=lambda: pick(out.key_metric()))


class TapGate(TokenIndexGate):
    """The gate over mixes of projected tokens (LLaVA-OneVision's ``anyres_max``): ``pixel_values [V, 3, S, S]``,
    ``token_index [M, 4]`` (int64 into the ``[V * P]`` tower tokens) and ``token_weight [M, 4]``; token m of the
    ``[1, M]`` row is ``sum_j weight[m, j] * x[index[m, j]]``, for the connector's outputs (what the language model
    reads: the bilinear resize of the grid runs after the projector in transformers) and for the features, saliency
    and keys the scorers read. Identity taps (weights 1, 0, 0, 0) leave a token as it is."""

    layout_inputs = 2
    gate_position = "after_connector"

    def tower_output(self, pixel_values: torch.Tensor, token_index: torch.Tensor, token_weight: torch.Tensor) -> TowerOutput:
        out = self.tower(pixel_values)
        taps = token_index.shape[1]

        def mix(x):  # [V, P, ...] -> [1, M, ...]
            flat = x.reshape(-1, *x.shape[2:])
            picked = torch.index_select(flat, 0, token_index.reshape(-1)).reshape(-1, taps, *x.shape[2:])
            w = token_weight.reshape(*token_weight.shape, *([1] * (picked.dim() - 2))).to(picked.dtype)
            return (picked * w).sum(dim=1)[None]

        return TowerOutput(features=mix(out.features), grid=out.grid, saliency=lambda: mix(out.saliency()),
                           saliency_kind=out.saliency_kind, key_metric=lambda: mix(out.key_metric()),
                           projected=mix(self.projector(out.features)))


class PixelShuffleGate(VisionGate):
    """The gate after a pixel-shuffle connector (Idefics3 / SmolVLM): ``pixel_values [V, 3, S, S]`` (one image's
    views: tiles, then the global view) make one ``[1, V * T]`` row of the tokens the language model reads (T = P /
    s^2 per view after the shuffle). The connector (shuffle + projection) runs on every view; a token's saliency is
    the sum of its s^2 patches' (attention received sums to 1 per view), its keys their mean, its features the
    shuffled tower features. ``kept_index`` indexes the V * T tokens, view-major."""

    gate_position = "after_connector"

    def tower_output(self, pixel_values: torch.Tensor) -> TowerOutput:
        out = self.tower(pixel_values)
        shuffle, s = self.projector.pixel_shuffle, int(self.projector.scale_factor)

        def flat(x):  # [V, T, ...] -> [1, V * T, ...]
            return x.reshape(1, -1, *x.shape[2:])

        def group(x):  # [V, P, C] -> [V, T, s^2, C]: each shuffled token's patches
            v, p, c = x.shape
            return shuffle(x, s).reshape(v, p // (s * s), s * s, c)

        rows, cols = out.grid
        return TowerOutput(features=flat(shuffle(out.features, s)), grid=(rows // s, cols // s),
                           saliency=lambda: flat(group(out.saliency()[..., None]).sum(dim=(2, 3))),
                           saliency_kind=out.saliency_kind, key_metric=lambda: flat(group(out.key_metric()).mean(dim=2)),
                           projected=flat(self.projector(out.features)))


class MergerGate(VisionGate):
    """The gate after a patch merger (Qwen2.5-VL): ``pixel_values [P, C*T*p*p]``, ``patch_pos [P, 2]`` and the
    windows ``window_index [W, L]`` / ``window_inverse [P]`` (one image, block-major: each language-model token's
    m x m patches consecutive; :func:`atp.runtime.dynamic.vision_layout`) make one
    ``[1, N]`` row of the merged tokens the language model reads (N = P / m^2, raster order of the merged grid). The
    merger runs on every patch; a token's saliency is the sum of its m^2 patches', its keys their mean, its features
    their concatenation (the merger's input). ``kept_index`` indexes the N tokens."""

    gate_position = "after_connector"

    def __init__(self, tower: Tower, connector: nn.Module, scorer: Scorer, **kw):
        super().__init__(tower, connector, scorer, **kw)
        self.layout_inputs = len(tower.layout_inputs)  # the tower's own (Qwen2.5-VL: windows; Qwen3-VL: position taps)

    @property
    def deepstack_levels(self) -> int:
        """DeepStack levels the graph outputs (``deepstack_embeds [L, 1, K, D]``), 0 for none."""
        return int(getattr(self.tower, "deepstack_levels", 0))

    def tower_output(self, pixel_values: torch.Tensor, *layout: torch.Tensor) -> TowerOutput:
        out = self.tower(pixel_values, *layout)
        unit = int(self.projector.hidden_size // out.features.shape[-1])  # m^2 patches per merged token

        def group(x):  # [1, P, ...] -> [1, N, m^2, ...]
            return x.reshape(1, -1, unit, *x.shape[2:])

        feats = out.features
        return TowerOutput(features=feats.reshape(1, -1, unit * feats.shape[-1]), grid=out.grid,
                           saliency=lambda: group(out.saliency()).sum(dim=2), saliency_kind=out.saliency_kind,
                           key_metric=lambda: group(out.key_metric()).mean(dim=2), projected=self.projector(feats[0])[None],
                           deepstack=out.deepstack)
