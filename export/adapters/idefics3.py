"""Idefics3 and SmolVLM (transformers ``Idefics3ForConditionalGeneration`` / ``SmolVLMForConditionalGeneration``):
the image is split into tiles plus a global view (``atp.runtime.tiling``), a SigLIP-style tower encodes each view,
the connector pixel-shuffles each view's P patches into T = P / s^2 tokens and projects them, and the language model
(Llama) reads, per view, its marker tokens (``<fake_token_around_image><row_r_col_c>``, ``<global-img>``) then its
tokens.

The vision graph takes one image's views ``pixel_values [V, 3, S, S]`` and gates over the V * T tokens the language
model reads (after the pixel shuffle: ``gate_position: after_connector``), one global top-K per image. The marker
runs of every grid shape are tokenized at export through the checkpoint's own processor rule
(``replace_image_token``) and written to ``token_layout.markers``; the runtime puts each view's kept tokens after its
run, so keeping all N reproduces transformers' sequence exactly.
"""

from __future__ import annotations

import torch

from atp.errors import CheckpointError
from atp.export.adapters.base import VisionInputs
from atp.export.adapters.llava import LlavaAdapter
from atp.export.vision import PixelShuffleGate
from atp.manifest import TokenLayout
from atp.registry import ARCHITECTURES


@ARCHITECTURES.register("idefics3")
class Idefics3Adapter(LlavaAdapter):
    """Adapter for ``model_type`` ``idefics3`` and ``smolvlm`` checkpoints (images; video input is refused)."""

    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    summary = ("Idefics3 / SmolVLM: tiles + global view, pixel-shuffle connector, row/col and global-img markers; "
               "one global top-K per image after the shuffle")
    gate_position = "after_connector"
    gate_class = PixelShuffleGate
    layout_kind = "tiled"
    title = "Idefics3 / SmolVLM"
    text_model_types = ("llama",)

    hf_classes = {"idefics3": "Idefics3ForConditionalGeneration", "smolvlm": "SmolVLMForConditionalGeneration"}

    @classmethod
    def hf_class_for(cls, config) -> str:
        return cls.hf_classes[config.model_type]

    @classmethod
    def check_config(cls, config) -> None:
        vc = config.vision_config
        cls.check_lm_and_tower(config)
        side = vc.image_size // vc.patch_size
        s = int(config.scale_factor)
        if s < 1 or side % s:
            raise CheckpointError(f"scale_factor {s} does not divide the tower's {side} x {side} patch grid")

    def _check_supported(self) -> None:
        self.check_config(self.config)
        proc = self.processor
        seq = getattr(proc, "image_seq_len", None) or getattr(proc, "config", {}).get("image_seq_len")
        if seq != self._per_view:
            raise CheckpointError(f"processor image_seq_len {seq} != the model's {self._per_view} tokens per view "
                                  "(an Idefics3 / SmolVLM processor is needed)")
        ip = proc.image_processor
        if not getattr(ip, "do_image_splitting", False):
            raise CheckpointError("Idefics3 / SmolVLM export needs do_image_splitting (whole-tile views); without it "
                                  "the views are padded and masked, which atp does not export yet")

    # ------------------------------------------------------------------ facts
    @property
    def language_model(self) -> torch.nn.Module:
        return self.model.model.text_model

    @property
    def _per_view(self) -> int:
        vc = self.vision_config
        return (vc.image_size // vc.patch_size) ** 2 // int(self.config.scale_factor) ** 2

    def tiling_spec(self):
        from atp.runtime.tiling import TilingSpec

        ip = self.processor.image_processor
        resample = getattr(ip, "resample", 1)
        return TilingSpec(int(ip.size["longest_edge"]), int(ip.max_image_size["longest_edge"]),
                          int(getattr(resample, "value", resample)))

    @property
    def _max_views(self) -> int:
        g = self.tiling_spec().max_grid
        return g * g + 1

    @property
    def num_visual_tokens(self) -> int:
        """The largest N (every tile of the largest grid and the global view); each image has its own."""
        return self._per_view * self._max_views

    @property
    def image_size(self) -> int:
        return int(self.vision_config.image_size)

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    def preprocessing(self) -> dict:
        spec = self.tiling_spec()
        if spec.tile != self.image_size:
            raise CheckpointError(f"max_image_size {spec.tile} != the tower's image size {self.image_size}")
        pre = super().preprocessing()
        pre.update(resize=None, center_crop=None, resample=spec.resample, tiling=spec.to_dict())
        return pre

    def markers(self) -> dict[str, list[list[int]]]:
        """Grid shape -> marker runs (token ids between the views' token runs), from the processor's own text."""
        from atp.runtime.tiling import grid_key

        tok = self.tokenizer
        g = self.tiling_spec().max_grid
        out = {}
        for rows, cols in [(0, 0)] + [(r, c) for r in range(1, g + 1) for c in range(1, g + 1)]:
            text = self._image_prompt(rows, cols)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            runs, cur, prev_image = [], [], False
            for t in ids:
                if t == self.image_token_id:
                    if not prev_image:
                        runs.append(cur)
                        cur = []
                    prev_image = True
                else:
                    cur.append(int(t))
                    prev_image = False
            runs.append(cur)
            views = rows * cols + 1 if rows else 1
            if len(runs) != views + 1 or ids.count(self.image_token_id) != views * self._per_view:
                raise CheckpointError(f"the processor's image prompt for a {rows}x{cols} grid does not hold {views} runs of "
                                      f"{self._per_view} image tokens")
            out[grid_key(rows, cols)] = runs
        return out

    def _image_prompt(self, rows: int, cols: int) -> str:
        """The processor's text for one image of a ``rows x cols`` grid (``(0, 0)``: the global view only)."""
        if hasattr(self.processor, "replace_image_token"):
            return self.processor.replace_image_token({"rows": [[rows]], "cols": [[cols]]}, 0)
        # the processor did not load (SmolVLM's video processor needs torchvision): its module's own rule
        from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

        return get_image_prompt_string(rows, cols, self._per_view, fake_token_around_image="<fake_token_around_image>",
                                       image_token=self.image_token, global_image_token="<global-img>")

    def token_layout(self) -> TokenLayout:
        return TokenLayout(self.image_token, self.image_token_id, tiles=self._max_views, tokens_per_tile=self._per_view,
                           kind=self.layout_kind, markers=self.markers())

    def extra_arrays(self) -> dict:
        return {}

    # ------------------------------------------------------------------ graphs
    def _vision_model(self):
        return self.model.model.vision_model

    def tower(self):
        from atp.export.towers import tower_for

        return tower_for(self._vision_model(), self.vision_config, -1, drop_cls=False)

    @property
    def connector(self) -> torch.nn.Module:
        return self.model.model.connector

    def vision_inputs(self, batch: int = 2) -> VisionInputs:
        """``pixel_values [V, 3, S, S]``: one image's views (a 1 x 2 grid and its global view in the example)."""
        g = torch.Generator().manual_seed(0)
        px = torch.randn(3, 3, self.image_size, self.image_size, generator=g)
        return VisionInputs(("pixel_values",), {"pixel_values": {0: "views"}}, (px,), images=1, tokens=3 * self._per_view)

    def vision_module(self, scorer: torch.nn.Module, clip=None, auto_keep=None):
        return self.multi_view_module(scorer, auto_keep)

    def clip_patch_embedder(self, clip):
        raise CheckpointError("text relevance in CLIP space is not supported for Idefics3 / SmolVLM")
