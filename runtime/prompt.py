"""The prompt splice: where an image's visual tokens go in the tokenized prompt (one rule, one place).

The bundle's :class:`~atp.manifest.TokenLayout` says how many image placeholders a prompt holds and which token ids
wrap each image's visual tokens. :func:`plan` turns prompt ids into segments (text ids, then an image slot, ...);
:func:`splice` fills them from the embedding table and the vision graph's kept tokens. The runtime, calibration and
eval use this module (calibration concatenates torch tensors along the same plan); ``runtime/cpp/src/prompt.cpp``
mirrors it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from atp.errors import InputError
from atp.manifest import TokenLayout


@dataclass(frozen=True)
class Segment:
    """A run of the spliced sequence: text token ids, or the visual tokens of image ``image``."""

    ids: tuple[int, ...] = ()
    image: int | None = None

    @property
    def is_image(self) -> bool:
        return self.image is not None


def plan(ids: list[int], layout: TokenLayout, what: str = "the prompt") -> list[Segment]:
    """Segments of the spliced sequence for prompt ``ids``: text runs, and one image slot per placeholder (wrapped in
    the layout's prefix / suffix ids).

    Raises:
        InputError: the prompt does not hold exactly ``layout.images`` placeholders.
    """
    count = ids.count(layout.placeholder_id)
    if count != layout.images:
        want = "exactly once" if layout.images == 1 else f"{layout.images} times"
        raise InputError(f"{what} must contain the image placeholder {layout.placeholder!r} {want} (found {count})")
    out: list[Segment] = []
    start, image = 0, 0
    for i, t in enumerate(ids):
        if t != layout.placeholder_id:
            continue
        text = tuple(ids[start:i]) + layout.prefix_ids
        if text:
            out.append(Segment(ids=text))
        out.append(Segment(image=image))
        image += 1
        start = i + 1
        if layout.suffix_ids:
            out.append(Segment(ids=layout.suffix_ids))
    if start < len(ids):
        out.append(Segment(ids=tuple(ids[start:])))
    return out


def text_around_image(segments: list[Segment]) -> tuple[list[int], list[int]]:
    """Token ids before the first image slot and after the last one (FastV's prompt prefix / suffix)."""
    first = next(i for i, s in enumerate(segments) if s.is_image)
    last = max(i for i, s in enumerate(segments) if s.is_image)
    before = [t for s in segments[:first] for t in s.ids]
    after = [t for s in segments[last + 1:] for t in s.ids]
    return before, after


def spliced_length(segments: list[Segment], kept: list[int]) -> int:
    """Length of the spliced sequence with ``kept[i]`` visual tokens for image i."""
    return sum(kept[s.image] if s.is_image else len(s.ids) for s in segments)


def image_start(segments: list[Segment]) -> int:
    """Index in the spliced sequence where the first image slot begins (its first visual token)."""
    return sum(len(s.ids) for s in segments[:next(i for i, s in enumerate(segments) if s.is_image)])


def splice(segments: list[Segment], images: list[np.ndarray], table) -> np.ndarray:
    """``[1, L, D]`` float32 inputs embeddings: text runs from ``table`` (the bundle's embedding table), image slots
    from ``images[i]`` (``[K_i, D]`` kept visual tokens of image i, in the vision graph's order)."""
    parts = [images[s.image] if s.is_image else table[list(s.ids)] for s in segments]
    return np.concatenate(parts)[None].astype(np.float32)
