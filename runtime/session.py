"""Session: load a bundle and generate text from an image and a prompt."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from atp.bundle import read_manifest
from atp.config import resolve_keep
from atp.errors import ConfigError, InputError
from atp.manifest import parse
from atp.registry import BACKENDS
from atp.runtime import positions
from atp.runtime.prompt import image_start, plan, splice, text_around_image
from atp.runtime.sampling import Sampler, SamplingConfig

log = logging.getLogger(__name__)

_NP_DTYPES = {"float": np.float32, "float32": np.float32, "float16": np.float16, "int8": np.int8}


def _load_table(path: Path) -> np.ndarray:
    """A float ``.npy`` table of the bundle (memory-mapped), or a BundleError: no pickled objects, floats only."""
    from atp.errors import BundleError

    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BundleError(f"{path} is not a numeric .npy array ({str(exc).splitlines()[0]}); re-export the bundle") from None
    if arr.dtype.kind != "f" or arr.ndim not in (1, 2):
        raise BundleError(f"{path} holds {arr.dtype} of shape {arr.shape}, not a float table; re-export the bundle")
    return arr


@dataclass
class GenerationResult:
    """What :meth:`Session.generate` returns.

    Attributes:
        text: Decoded answer (special tokens skipped).
        token_ids: Generated token ids (an end-of-sequence token, when reached, included).
        kept: Number of visual tokens that reached the language model.
        kept_index: Their indices among the N visual tokens, ascending (``visionzip-merge``: the dominant ones;
            its contextual tokens are merged, not original).
        prompt_tokens: Prompt length in tokens after inserting the kept visual tokens.
        visual_tokens: N: this image's visual tokens before pruning (varies per image for anyres layouts).
        timings: Milliseconds: ``preprocess``, ``vision``, ``prefill``, ``ttft`` (preprocess + vision +
            embed + prefill), ``decode_per_token`` (mean over decode steps), ``total``.
    """

    text: str
    token_ids: list[int]
    kept: int
    kept_index: list[int]
    prompt_tokens: int
    visual_tokens: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Session:
    """A loaded bundle, ready to answer questions about images.

    Args:
        bundle: Bundle directory written by ``atp-export onnx``.
        backend: Registered backend name (``ort`` = ONNX Runtime CPU, ``ort-cuda``).
        verify: Check every file's sha256 against the manifest before loading.
        threads: Intra-op threads for CPU backends (default: all cores).

    Raises:
        BundleError: missing, corrupt or tampered bundle, unknown format version.
    """

    def __init__(self, bundle: str | Path, backend: str = "ort", verify: bool = True, threads: int | None = None):
        from tokenizers import Tokenizer

        self.path = Path(bundle)
        self.manifest = read_manifest(self.path, verify=verify)
        self.spec = spec = parse(self.manifest)  # the typed, checked view (atp.manifest)
        self.backend = BACKENDS.get(backend)(self.path, self.manifest, threads=threads)
        self.embeddings = _load_table(self.path / spec.embeddings_file)
        self.tokenizer = Tokenizer.from_file(str(self.path / spec.tokenizer_file))
        self.layout, self.positions = spec.token_layout, spec.positions
        self.num_visual_tokens = spec.num_visual_tokens
        self.default_keep = spec.default_keep
        self.image_token_id = spec.token_layout.placeholder_id
        self.eos_ids = set(spec.eos_token_ids)
        self.max_sequence = spec.max_sequence  # the LM's positions (0: unlimited)
        self._anyres = self._newline = self._tiling = self._dynamic = None
        if self.layout.kind == "dynamic":  # Qwen2.5-VL: the resize rule, read once
            from atp.runtime.dynamic import DynamicSpec

            self._dynamic = DynamicSpec.from_dict(self.manifest["preprocessing"]["dynamic"])
        if self.layout.kind == "tiled":  # read once: every request needs the splitting rule
            from atp.runtime.tiling import TilingSpec

            self._tiling = TilingSpec.from_dict(self.manifest["preprocessing"]["tiling"])
        if self.layout.kind == "anyres":  # read once: every request needs the views rule and the newline row
            from atp.runtime.anyres import AnyresSpec

            self._anyres = AnyresSpec.from_dict(self.manifest["preprocessing"]["anyres"])
            self._newline = _load_table(self.path / self.layout.newline).astype(np.float32).reshape(1, -1)
        self._n_layers, self._n_kv, self._head_dim = spec.num_layers, spec.num_kv_heads, spec.head_dim
        levels = int(self.manifest["model"].get("deepstack_levels", 0) or 0)  # DeepStack: zero rows in decode steps
        self._decode_extra = {"deepstack_embeds": np.zeros((levels, 1, 1, spec.hidden_size), np.float32)} if levels else {}

    # ------------------------------------------------------------------ pieces
    def resolve_keep(self, keep: int | None = None, keep_ratio: float | None = None, n: int | None = None) -> int:
        """K for this request: explicit keep, else ratio, else the bundle's default; ``n`` is this image's visual tokens
        when they vary per image (anyres): a ratio is of this image's N, and a count above it keeps all N."""
        if keep is None and keep_ratio is None:
            k = self.default_keep
        else:
            k = resolve_keep(self.num_visual_tokens, keep, keep_ratio)  # the K range rule (atp.config), max N
        if n is None or n == self.num_visual_tokens:
            return k
        if keep_ratio is not None and keep is None:
            return resolve_keep(n, None, keep_ratio)
        if k > n:
            log.info("keep %d is more than this image's %d visual tokens: keeping all %d", k, n, n)
        return min(k, n)

    def prompt_ids(self, prompt: str, raw_prompt: bool = False) -> list[int]:
        """Token ids of the full prompt, with one image token where the visual tokens go."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("prompt must be a non-empty string")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError:  # e.g. undecodable bytes from the command line (surrogate escapes)
            raise InputError("prompt is not valid UTF-8 text") from None
        text = prompt if raw_prompt else self.spec.template.replace("{prompt}", prompt)
        ids = self.tokenizer.encode(text, add_special_tokens=True).ids
        plan(ids, self.layout, "the raw prompt" if raw_prompt else "the prompt")  # raises unless the placeholders fit
        return ids

    def needs_text(self, graph: str) -> bool:
        """Whether a vision graph takes the prompt embedding (text-conditioned scorers)."""
        return any(i["name"] == "text_embeds" for i in self.manifest["graphs"][graph]["inputs"])

    def text_space(self, graph: str) -> str | None:
        """``"clip"`` or ``"lm"`` for a text-conditioned vision graph, None otherwise."""
        return (self.manifest["graphs"][graph].get("text_embeds") or {}).get("space") if self.needs_text(graph) else None

    def clip_text_embeds(self, prompt: str) -> np.ndarray:
        """``[1, E]`` CLIP text embedding of the prompt from the bundle's ``text`` graph (bundles made with open_clip)."""
        from tokenizers import Tokenizer

        info = self.manifest["graphs"]["text"]["tokenizer"]
        if not hasattr(self, "_clip_tok"):
            self._clip_tok = Tokenizer.from_file(str(self.path / info["file"]))
        ids = self._clip_tok.encode(prompt).ids
        n = int(info["context_length"])
        if len(ids) > n:  # open_clip truncates and keeps the end-of-text token last
            ids = ids[:n - 1] + [int(info["eot_id"])]
        row = np.full((1, n), int(info["pad_id"]), np.int64)
        row[0, :len(ids)] = ids
        return self.backend.run_graph("text", {"input_ids": row})[0].astype(np.float32)

    def text_embeds(self, prompt: str, graph: str | None = None) -> np.ndarray:
        """The prompt embedding a vision graph takes: ``[1, E]`` CLIP text embedding for graphs in CLIP space,
        else ``[1, D]`` mean of the prompt's token embeddings (no special tokens, no template)."""
        if graph is not None and self.text_space(graph) == "clip":
            return self.clip_text_embeds(prompt)
        ids = [i for i in self.tokenizer.encode(prompt, add_special_tokens=False).ids if i < self.embeddings.shape[0]]
        if not ids:  # nothing but special tokens: no text signal (cosine 0 everywhere)
            return np.zeros((1, self.embeddings.shape[1]), np.float32)
        return np.asarray(self.embeddings[ids], dtype=np.float32).mean(axis=0, keepdims=True)

    def needs_prompt(self, graph: str) -> bool:
        """Whether a vision graph takes the prompt's token sequence (``fastv``)."""
        return any(i["name"] == "prompt_prefix" for i in self.manifest["graphs"][graph]["inputs"])

    def prompt_sequence(self, prompt: str, raw_prompt: bool = False) -> dict[str, np.ndarray]:
        """``prompt_prefix [1, P, D]`` and ``prompt_suffix [1, S, D]``: embeddings of the templated prompt's
        tokens before and after the image placeholder."""
        before, after = text_around_image(plan(self.prompt_ids(prompt, raw_prompt), self.layout))
        if not after:
            raise InputError("this scorer needs prompt text after the image placeholder")
        table = self.embeddings
        return {"prompt_prefix": np.asarray(table[before], np.float32)[None],
                "prompt_suffix": np.asarray(table[after], np.float32)[None]}

    def run_vision(self, pixels: np.ndarray, keep: int, prompt: str, scorer: str | None = None, raw_prompt: bool = False,
                   layout: dict[str, np.ndarray] | None = None, outputs: dict | None = None):
        """(image_embeds, kept_index) for a request; feeds the prompt embedding where the scorer needs it, and the
        layout inputs (``token_index`` of an anyres image, :meth:`image_tokens`) where the graph takes them.

        For a graph with K per image (``--keep auto``), ``keep`` is the upper bound and rows are padded to the
        batch's largest K: ``kept_index`` -1 and zero ``image_embeds`` past each row's K (its ``kept_count``).
        """
        graph = self.vision_graph(scorer)
        images = 1 if self.layout.kind != "fixed" else pixels.shape[0]  # a multi-view image's views are one image
        text, extra = None, dict(layout or {})
        if self.needs_text(graph):
            text = np.repeat(self.text_embeds(prompt, graph), images, axis=0)
        if self.needs_prompt(graph):
            extra.update({k: np.repeat(v, images, axis=0) for k, v in self.prompt_sequence(prompt, raw_prompt).items()})
        if outputs is None:
            return self.backend.run_vision(pixels, keep, graph, text, extra or None)
        return self.backend.run_vision(pixels, keep, graph, text, extra or None, outputs=outputs)

    def image_tokens(self, image, keep: int | None, keep_ratio: float | None, prompt: str, scorer: str | None = None,
                     raw_prompt: bool = False) -> dict:
        """Preprocess one image and run its vision graph: ``{"embeds": [L, D]`` what goes in the image slot (kept
        tokens, plus newline rows for anyres layouts), ``"kept_index"``, ``"n"`` (this image's visual tokens),
        ``"k"``, ``"grid"`` (the merged grid of a dynamic-resolution image, else None), ``"deepstack"`` (``[L, K,
        D]`` DeepStack levels of the kept tokens, else None), and the preprocess / vision times in seconds}."""
        from atp.runtime.preprocess import preprocess_views

        t0 = time.perf_counter()
        pixels, size = preprocess_views(image, self.manifest["preprocessing"])
        layout, row, n = None, None, self.num_visual_tokens
        if self._anyres is not None:
            from atp.runtime.anyres import graph_layout

            layout, row = graph_layout(size, self._anyres)
            n = len(row)
        grid = None
        if self._dynamic is not None:  # one view at its own size: N from the merged grid, layout inputs from the grid
            from atp.runtime.dynamic import token_grid, vision_layout

            grid = token_grid(size, self._dynamic)
            layout, n = vision_layout(grid, self._dynamic), grid[0] * grid[1]
        markers = None
        if self._tiling is not None:  # tiles + global view: N from the grid, marker runs between the views
            from atp.runtime.tiling import grid_key, grid_shape

            rows, cols = grid_shape(size, self._tiling)
            markers = self.layout.markers[grid_key(rows, cols)]
            n = (len(markers) - 1) * self.layout.tokens_per_tile
        k = self.resolve_keep(keep, keep_ratio, n)
        t1 = time.perf_counter()
        more = {} if "deepstack_embeds" in self.spec.graphs[self.vision_graph(scorer)].outputs else None
        image_embeds, kept_index = self.run_vision(pixels, k, prompt, scorer, raw_prompt, layout, more)
        embeds, kept_index = image_embeds[0], kept_index[0]
        deepstack = more["deepstack_embeds"][:, 0] if more else None  # [L, K, D] DeepStack levels of the kept tokens
        k = int((kept_index >= 0).sum())  # an auto-K graph keeps <= k (its kept_count); padding only past it
        if k < len(kept_index):
            embeds, kept_index = embeds[:k], kept_index[:k]
        if row is not None:  # anyres: the newline after the last kept token of each grid row that keeps one
            from atp.runtime.anyres import newline_slots

            embeds = np.insert(embeds, [i + 1 for i in newline_slots(kept_index, row)], self._newline, axis=0)
        if markers is not None:
            from atp.runtime.tiling import slot

            embeds = slot(embeds, kept_index, self.layout.tokens_per_tile, markers, self.embeddings)
        # visual tokens the LM reads (VisionZip merge: dominant + contextual; multi-view: K, not the newline / marker rows)
        kept = k if self.layout.kind != "fixed" else len(embeds)
        return {"embeds": embeds, "kept_index": kept_index, "n": n, "k": k, "kept": kept, "grid": grid,
                "deepstack": deepstack, "preprocess": t1 - t0, "vision": time.perf_counter() - t1}

    def inputs_embeds(self, ids: list[int], image_embeds: np.ndarray) -> np.ndarray:
        """``[1, L, D]``: the prompt's token embeddings with the K visual tokens spliced in per the bundle's token
        layout (:mod:`atp.runtime.prompt`)."""
        return splice(plan(ids, self.layout), [image_embeds], self.embeddings)

    def prompt_inputs(self, ids: list[int], vis: dict) -> tuple[np.ndarray, np.ndarray, dict]:
        """The prefill step's ``inputs_embeds [1, L, D]`` (prompt ``ids`` with one image's slot from
        :meth:`image_tokens` spliced in), ``position_ids`` (:mod:`atp.runtime.positions`) and the decoder's other
        inputs (DeepStack: ``deepstack_embeds [L, 1, S, D]``, the kept tokens' levels at their places, zeros elsewhere)."""
        segments = plan(ids, self.layout)
        embeds = splice(segments, [vis["embeds"]], self.embeddings)
        slot = self._image_slot(segments, vis)
        extra = {}
        if vis.get("deepstack") is not None:
            ds = np.zeros((vis["deepstack"].shape[0], 1, embeds.shape[1], embeds.shape[2]), np.float32)
            ds[:, 0, slot.start:slot.start + vis["deepstack"].shape[1]] = vis["deepstack"]
            extra["deepstack_embeds"] = ds
        return embeds, positions.prefill(self.positions, embeds.shape[1], image=slot), extra

    @staticmethod
    def _image_slot(segments, vis: dict):
        """The image's place in the spliced prompt, for position schemes that place visual tokens on their grid."""
        if vis.get("grid") is None:
            return None
        from atp.runtime.positions import ImageSlot

        return ImageSlot(image_start(segments), vis["kept_index"], vis["grid"])

    @property
    def scorers(self) -> list[str]:
        """Scorers this bundle has vision graphs for; the first is the default."""
        return list(self.manifest["pruning"]["scorers"])

    def vision_graph(self, scorer: str | None) -> str:
        """Manifest graph key of ``scorer``'s vision graph (None = the default)."""
        if scorer is None:
            return "vision"
        table = self.manifest["pruning"]["scorers"]
        if scorer not in table:
            raise ConfigError(f"this bundle has no vision graph for scorer {scorer!r}; it has: {', '.join(table)} "
                              f"(export with --extra-scorers {scorer})")
        return table[scorer]

    @property
    def kv_dtype(self) -> str:
        """KV-cache dtype of the decoder graph (``float32`` or ``int8``), read from its inputs."""
        dtypes = {i["dtype"] for i in self.manifest["graphs"]["decoder"]["inputs"]
                  if i["name"].startswith("past_key_values.") and not i["name"].endswith("_scale")}
        return "int8" if dtypes == {"int8"} else "float32"

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """Zero-length cache tensors for every ``past_key_values.*`` input, in the graph's dtypes
        (int8 caches come with ``*_scale`` inputs of last dim 1)."""
        past = {}
        for i in self.manifest["graphs"]["decoder"]["inputs"]:
            name = i["name"]
            if not name.startswith("past_key_values."):
                continue
            dtype = _NP_DTYPES.get(i["dtype"])
            if dtype is None:
                raise ConfigError(f"decoder input {name} has dtype {i['dtype']}, which this runtime cannot feed")
            last = 1 if name.endswith("_scale") else self._head_dim
            past[name] = np.zeros((batch, self._n_kv, 0, last), dtype)
        return past

    @property
    def prefill_graph(self) -> str:
        """The graph that runs the prompt: ``decoder_prefill`` (an int8 prefill graph) where the bundle has one."""
        return "decoder_prefill" if "decoder_prefill" in self.manifest["graphs"] else "decoder"

    def _step(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: dict,
              graph: str = "decoder") -> tuple[np.ndarray, dict]:
        out = self.backend.run_decoder({"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions, **past},
                                       graph)
        present = {k.replace("present.", "past_key_values.", 1): v for k, v in out.items() if k.startswith("present.")}
        return out["logits"][:, -1], present

    # ------------------------------------------------------------------ main
    def generate(
        self,
        image,
        prompt: str,
        keep: int | None = None,
        keep_ratio: float | None = None,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        raw_prompt: bool = False,
        scorer: str | None = None,
        ignore_eos: bool = False,
    ) -> GenerationResult:
        """Answer ``prompt`` about ``image``, keeping K visual tokens.

        Args:
            image: Path, PIL image or HxWx3 uint8 array.
            prompt: The question; wrapped in the bundle's chat template unless ``raw_prompt``.
            keep: Visual tokens to keep (1..N); default: the bundle's default. For a bundle exported with
                ``--keep auto`` the graph picks K per image and ``keep`` is its upper bound (default: k_max).
            keep_ratio: Fraction of visual tokens to keep, in (0, 1].
            max_new_tokens: Upper bound on generated tokens.
            temperature: 0 = greedy; > 0 samples (with ``top_p``, ``top_k``, ``seed``).
            raw_prompt: Use ``prompt`` verbatim; it must contain the image placeholder.
            scorer: Retention scorer (one the bundle was exported with); default: the bundle's default.
            ignore_eos: Generate exactly ``max_new_tokens`` (benchmarks).

        Raises:
            ConfigError: bad keep / ratio / sampling settings.
            InputError: unreadable image, empty prompt, placeholder missing.
        """
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.resolve_keep(keep, keep_ratio)  # bad K / ratio fail before any work
        self.vision_graph(scorer)
        sampler = Sampler(SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed))
        ids = self.prompt_ids(prompt, raw_prompt)
        t = {}
        t0 = time.perf_counter()
        vis = self.image_tokens(image, keep, keep_ratio, prompt, scorer, raw_prompt)
        t1, t2 = t0 + vis["preprocess"], t0 + vis["preprocess"] + vis["vision"]
        embeds, pos, extra = self.prompt_inputs(ids, vis)
        length = embeds.shape[1]
        next_pos = positions.next_position(pos)  # >= length: M-RoPE keeps the pruned tokens' positions free
        if self.max_sequence and next_pos >= self.max_sequence:
            raise InputError(f"the prompt is {length} tokens with {vis['kept']} visual tokens and reaches position "
                             f"{next_pos - 1}, at or past the model's {self.max_sequence} positions (shorten the prompt or "
                             "keep fewer visual tokens)")
        mask = np.ones((1, length), np.int64)
        logits, past = self._step(embeds, mask, pos, {**self._empty_past(1), **extra},
                                  self.prefill_graph if length > 1 else "decoder")
        t3 = time.perf_counter()
        out: list[int] = []
        decode_times = []
        while True:
            token = sampler(logits[0])
            out.append(token)
            if (token in self.eos_ids and not ignore_eos) or len(out) >= max_new_tokens:
                break
            if self.max_sequence and next_pos + len(out) >= self.max_sequence:
                log.info("stopped at the model's %d positions", self.max_sequence)
                break
            s = time.perf_counter()
            mask = np.ones((1, length + len(out)), np.int64)
            logits, past = self._step(self.embeddings[[token]][None].astype(np.float32), mask,
                                      positions.step(self.positions, next_pos + len(out) - 1), {**past, **self._decode_extra})
            decode_times.append(time.perf_counter() - s)
        t4 = time.perf_counter()
        ms = 1000.0
        t.update(
            preprocess=(t1 - t0) * ms,
            vision=(t2 - t1) * ms,
            prefill=(t3 - t2) * ms,
            ttft=(t3 - t0) * ms,
            decode_per_token=(float(np.mean(decode_times)) * ms) if decode_times else 0.0,
            total=(t4 - t0) * ms,
        )
        return GenerationResult(
            text=self.tokenizer.decode(out, skip_special_tokens=True),
            token_ids=out,
            kept=vis["kept"],  # visual tokens the LM read (VisionZip merge: dominant + contextual)
            kept_index=[int(i) for i in vis["kept_index"]],
            visual_tokens=vis["n"],
            prompt_tokens=int(length),
            timings=t,
        )
