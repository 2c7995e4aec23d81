"""The architecture adapter protocol: what the exporter, calibration and the CLI ask of an architecture.

One file per architecture in this package subclasses :class:`Adapter` and registers it with
``@ARCHITECTURES.register(name)`` (the same ``name`` the class declares). The package imports every module in it,
so adding an architecture edits no list: the file, its tower file if the tower is new, a preprocessing spec, and a
row in ``tests/arch``.

An adapter answers, for a loaded Hugging Face model:

- **vision inputs**: graph input names, their dynamic axes and example tensors (:meth:`vision_inputs`);
- **tower**: :meth:`tower` (``atp.export.towers``: features, grid, saliency);
- **connector** and where the gate sits relative to it (:attr:`gate_position`);
- **token layout** (:meth:`token_layout`) and **position scheme** (:meth:`positions`): how the kept tokens enter
  the prompt and which positions they take (``atp.manifest``, read by ``atp.runtime.prompt`` / ``positions``);
- **prompt template** (:meth:`prompt_template`: the chat template rendered for one image + ``{prompt}``, or a
  fallback when the checkpoint has none);
- **the language model**: :meth:`decoder_module`, :meth:`embedding_table`, :meth:`save_tokenizer`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from atp.errors import CheckpointError
from atp.manifest import Positions, TokenLayout


@dataclass(frozen=True)
class VisionInputs:
    """The image inputs of the vision graph (before ``keep`` and the scorer's own inputs).

    Attributes:
        names: Graph input names, in order.
        dynamic_axes: ``name -> {axis: label}``.
        example: Example tensors (seeded), one per name; sizes >= 2 on every dynamic axis so the exporter keeps it.
    """

    names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    example: tuple[torch.Tensor, ...] = ()
    images: int = 2  # images in the example (the batch of text_embeds / prompt inputs)
    tokens: int = 0  # visual tokens per image in the example (0: the adapter's num_visual_tokens)


class ImageTextProcessor:
    """A checkpoint's tokenizer, image processor and chat template, for checkpoints whose full processor cannot load
    here (LLaVA-OneVision's bundles a video processor that needs torchvision); what the adapters read of a processor."""

    def __init__(self, tokenizer, image_processor, image_token: str | None = None, config: dict | None = None):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.config = config or {}  # processor_config.json
        self.chat_template = getattr(tokenizer, "chat_template", None)
        if image_token:
            self.image_token = image_token

    def apply_chat_template(self, messages, **kwargs):
        if not self.chat_template:
            raise ValueError("no chat template")
        kwargs.setdefault("tokenize", False)
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, **kwargs)


def load_processor(path: str | Path):
    """``AutoProcessor`` of a checkpoint folder; when that fails for want of an optional library (a video processor's
    torchvision), its tokenizer + image processor + chat template (:class:`ImageTextProcessor`).

    Raises:
        CheckpointError: neither loads.
    """
    import json

    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    try:
        return AutoProcessor.from_pretrained(str(path))
    except ImportError as exc:
        first = exc
    try:
        cfg = Path(path) / "processor_config.json"
        config = json.loads(cfg.read_text()) if cfg.is_file() else {}
        return ImageTextProcessor(AutoTokenizer.from_pretrained(str(path)), AutoImageProcessor.from_pretrained(str(path)),
                                  config.get("image_token"), config)
    except Exception as exc:
        raise CheckpointError(f"cannot load the processor (tokenizer + image processor) of {path}: {first}; {exc}") from exc


class Adapter(ABC):
    """Base class of the architecture adapters.

    Class attributes:
        name: Registry name, written to the manifest's ``source.architecture``.
        model_types: ``config.json`` ``model_type`` values this adapter loads.
        summary: One line for ``atp-export list`` and the README table.
        gate_position: Where the gate sits (:data:`atp.export.vision.GATE_POSITIONS`).
        layout_kind: How an image becomes visual tokens (:data:`atp.manifest.LAYOUT_KINDS`): ``fixed`` (one view),
            ``anyres`` or ``tiled`` (several views, N per image).
    """

    name: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    summary: ClassVar[str] = ""
    gate_position: ClassVar[str] = "before_connector"
    layout_kind: ClassVar[str] = "fixed"

    model: torch.nn.Module
    processor: object
    source: str

    # ------------------------------------------------------------------ loading
    @classmethod
    @abstractmethod
    def from_checkpoint(cls, path: str | Path) -> "Adapter":
        """Load a local Hugging Face checkpoint folder (weights + processor files).

        Raises:
            CheckpointError: the folder is not this architecture, or a variant the adapter does not support.
        """

    # ------------------------------------------------------------------ vision
    @abstractmethod
    def tower(self):
        """The :class:`~atp.export.towers.base.Tower` up to the feature layer the architecture reads."""

    @property
    @abstractmethod
    def connector(self) -> torch.nn.Module:
        """The module between tower and language model (LLaVA's multimodal projector)."""

    @property
    @abstractmethod
    def num_visual_tokens(self) -> int:
        """N: visual tokens per image before pruning."""

    @abstractmethod
    def vision_inputs(self, batch: int = 2) -> VisionInputs:
        """The vision graph's image inputs (names, dynamic axes, seeded examples of batch ``batch``)."""

    @abstractmethod
    def preprocessing(self) -> dict:
        """The image processor's steps as plain data for torch-free runtimes (``manifest.preprocessing``)."""

    def vision_module(self, scorer: torch.nn.Module, clip=None, auto_keep=None):
        """The vision graph's module for ``scorer`` (:class:`atp.export.vision.VisionGate`); ``clip`` for CLIP text
        space (towers with a fixed square input only), ``auto_keep`` for K per image."""
        from atp.export.vision import VisionGate

        clip_patches = None
        if scorer.text_space == "clip":
            clip_patches = self.clip_patch_embedder(clip)
        return VisionGate(self.tower(), connector=self.connector, scorer=scorer,
                          lm_probe=self.decoder_module() if scorer.needs_prompt else None,
                          clip_patches=clip_patches, auto_keep=auto_keep).eval()

    def clip_patch_embedder(self, clip):
        """``pixel_values -> [B, N, E]`` open_clip patch embeddings on this tower's grid (``atp`` in CLIP space).

        Raises:
            CheckpointError: no open_clip model given, or the architecture cannot take one.
        """
        raise CheckpointError(f"{self.name}: text relevance in CLIP space is not supported for this architecture")

    # ------------------------------------------------------------------ prompt
    @property
    @abstractmethod
    def image_token(self) -> str:
        """The image placeholder in the prompt."""

    @property
    @abstractmethod
    def image_token_id(self) -> int:
        """Its token id."""

    def token_layout(self) -> TokenLayout:
        """How the kept tokens enter the prompt (default: one image, one contiguous run of K at its placeholder)."""
        return TokenLayout(self.image_token, self.image_token_id, tokens_per_tile=self.num_visual_tokens)

    def positions(self) -> Positions:
        """The decoder's position scheme (default: 1-D positions over the spliced prompt)."""
        return Positions("1d")

    @abstractmethod
    def prompt_template(self) -> str:
        """The chat template rendered for one user turn (image + text) with ``{prompt}`` left open."""

    # ------------------------------------------------------------------ language model
    @abstractmethod
    def decoder_module(self, kv_dtype: str = "float32", all_logits: bool = False) -> torch.nn.Module:
        """The decoder module the decoder graph is traced or constructed from."""

    @abstractmethod
    def embedding_table(self) -> np.ndarray:
        """``[V, D]`` float32 token embedding table."""

    @abstractmethod
    def save_tokenizer(self, out: Path) -> None:
        """Write the tokenizer (``tokenizer.json`` and friends) to ``out``."""

    def extra_arrays(self) -> dict[str, np.ndarray]:
        """Arrays the runtime needs beside the graphs, saved as ``<name>.npy`` in the bundle (LLaVA-NeXT's newline)."""
        return {}

    @abstractmethod
    def model_info(self) -> dict:
        """``manifest.model``: sizes, layer counts, eos ids, costs."""
