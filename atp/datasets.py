"""VQA data for training, calibration and evaluation (numpy + Pillow only, no torch).

- ``easy-vqa``: the published easy-VQA set (PyPI package ``easy-vqa``): 64x64 images, one
  shape each, 13 answers. ``train`` (4,000 images, 38,575 questions) trains; ``test`` (1,000
  images, 9,673 questions) is held out for evaluation.
- ``multi-object``: generated here, seeded: 2-4 shapes per image in easy-VQA's style, with
  questions that name one object ("what color is the triangle?", "is there a blue circle?",
  "how many shapes are there?"), so which visual tokens survive pruning matters. Splits
  ``train``, ``calib`` and ``test`` come from disjoint seeds; ``test`` is never used for
  training or calibration.
- A directory: ``DIR/questions.json`` = ``[{"image": "relative/path.png", "question": ..., "answer": ...}]``.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atp.errors import InputError, MissingDependencyError

# easy-VQA's palette (measured from its images), shared by the generated sets.
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
          "gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (165, 42, 42), "yellow": (255, 255, 0)}
# easy-VQA's 24 question templates; the answer follows from the one shape's (shape, color).
EASY_VQA_TEMPLATES = (
    "what is the {color} shape?", "what shape is in the image?", "what shape does the image contain?", "what shape is present?",
    "what color is the shape?", "what color is the {shape}?", "what is the color of the {shape}?", "what is the color of the shape?",
    "does the image contain a {shape}?", "is there a {shape} in the image?", "is there a {shape}?", "is a {shape} present?",
    "is there not a {shape} in the image?", "does the image not contain a {shape}?", "is there not a {shape}?", "is no {shape} present?",
    "is there a {color} shape?", "is there a {color} shape in the image?", "is a {color} shape present?",
    "does the image contain a {color} shape?", "does the image not contain a {color} shape?", "is there not a {color} shape?",
    "is there not a {color} shape in the image?", "is no {color} shape present?",
)
SHAPES = ("circle", "rectangle", "triangle")
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
MULTI_OBJECT_SEEDS = {"train": 1_000_003, "calib": 2_000_003, "test": 3_000_017}


@dataclass(frozen=True)
class VqaSample:
    """One question about one image. ``image`` is a path or an ``HxWx3`` uint8 array."""


    question: str
    answer: str
    image_id: str
    image: object = field(repr=False)


def _easy_vqa_root() -> Path:
    spec = importlib.util.find_spec("easy_vqa")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("the easy-vqa data set is not installed: pip install easy-vqa")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def easy_vqa(split: str) -> list[VqaSample]:
    """easy-VQA ``train`` or ``test`` questions, in the published order."""
    if split not in ("train", "test"):
        raise InputError(f"easy-vqa has splits train and test, not {split!r}")
    root = _easy_vqa_root() / split
    questions = json.loads((root / "questions.json").read_text())
    return [VqaSample(q, a, f"{split}/{img}", image=str(root / "images" / f"{img}.png")) for q, a, img in questions]


def _draw_shape(draw, shape: str, box: tuple[int, int, int, int], color) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "rectangle":
        draw.rectangle((x0, y0 + (y1 - y0) // 5, x1, y1 - (y1 - y0) // 5), fill=color)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=color)


def object_class(shape: str, color: str) -> int:
    """Label-map class of an object: 1 + shape * 8 + colour (0 is background); 25 classes in all."""
    return 1 + SHAPES.index(shape) * len(COLORS) + list(COLORS).index(color)


def render_multi_object(rng: np.random.Generator, size: int = 64, n_objects: int | None = None, labels: bool = False):
    """One image with 2-4 non-overlapping shapes; returns (HxWx3 uint8, [(shape, color), ...]) and,
    with ``labels``, an HxW uint8 map of :func:`object_class` per pixel (draws no extra random numbers)."""
    from PIL import Image, ImageDraw

    n = int(n_objects or rng.integers(2, 5))
    bg = tuple(int(v) for v in rng.integers(225, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    label_img = Image.new("L", (size, size), 0) if labels else None
    boxes, objects = [], []
    tries = 0
    while len(objects) < n and tries < 500:
        tries += 1
        s = int(rng.integers(size // 6, size // 3))
        x, y = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
        box = (x, y, x + s, y + s)
        if any(x < b[2] + 2 and b[0] < x + s + 2 and y < b[3] + 2 and b[1] < y + s + 2 for b in boxes):
            continue
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        if (shape, color) in objects:
            continue
        boxes.append(box)
        objects.append((shape, color))
        _draw_shape(draw, shape, box, COLORS[color])
        if labels:
            _draw_shape(ImageDraw.Draw(label_img), shape, box, object_class(shape, color))
    if labels:
        return np.asarray(img), objects, np.asarray(label_img)
    return np.asarray(img), objects


def easy_vqa_answer(template: str, shape: str, color: str, asked: str | None) -> str:
    """The answer to an easy-VQA template about an image of one ``color`` ``shape``; ``asked`` fills the slot."""
    if template.startswith("what color") or "color of" in template:
        return color
    if template.startswith("what"):
        return shape
    negated = " not " in template or " no " in template
    present = asked in (shape, color)
    return "yes" if present != negated else "no"


def _draw_easy_vqa_shape(draw, shape: str, rng: np.random.Generator, size: int, fill) -> None:
    """One shape as easy-VQA draws it (on a 2x canvas): sides/diameter 1/8..1/2 of the canvas, rectangles
    with independent width and height, upright equilateral triangles that may run off the bottom edge."""
    lo, hi = size // 8, size // 2
    if shape == "rectangle":
        w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        draw.rectangle((x, y, x + w, y + h), fill=fill)
    elif shape == "circle":
        d = int(rng.integers(lo, hi + 1))
        x, y = int(rng.integers(0, size - d + 1)), int(rng.integers(0, size - d + 1))
        draw.ellipse((x, y, x + d, y + d), fill=fill)
    else:
        s = int(rng.integers(lo, hi + 1))
        th = s * 3 ** 0.5 / 2
        x = int(rng.integers(0, size - s + 1))
        y = int(rng.integers(0, size - int(th * 0.75) + 1))  # apex row; up to a quarter may be cut off
        draw.polygon([(x + s / 2, y), (x, y + th), (x + s, y + th)], fill=fill)


def synthetic_easy_vqa(rng: np.random.Generator, size: int = 64, n_questions: int = 4, labels: bool = False):
    """A fresh easy-VQA-style image drawn the way easy-VQA draws its own (one shape on a 2x canvas with a
    light random background, bilinear downsampling, easy-VQA palette and size range) with questions
    from its 24 templates: (image, [(question, answer), ...]) and, with ``labels``, the HxW class map.
    "What" questions name the true shape/colour (as easy-VQA's do); yes/no questions ask about the
    true value half the time, so yes and no are balanced.

    Used to enlarge training data only; evaluation uses the published test split.
    """
    from PIL import Image, ImageDraw

    bg = tuple(int(v) for v in rng.integers(230, 256, 3))
    big = 2 * size
    img = Image.new("RGB", (big, big), bg)
    shape, color = SHAPES[int(rng.integers(3))], list(COLORS)[int(rng.integers(len(COLORS)))]
    state = rng.bit_generator.state
    _draw_easy_vqa_shape(ImageDraw.Draw(img), shape, rng, big, COLORS[color])
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    label_img = None
    if labels:  # the same draw (same random numbers replayed), nearest-downsampled to a class map
        after = rng.bit_generator.state
        rng.bit_generator.state = state
        label_img = Image.new("L", (big, big), 0)
        _draw_easy_vqa_shape(ImageDraw.Draw(label_img), shape, rng, big, object_class(shape, color))
        label_img = label_img.resize((size, size), Image.Resampling.NEAREST)
        rng.bit_generator.state = after
    qs = []
    for t in rng.choice(len(EASY_VQA_TEMPLATES), n_questions, replace=False):
        template = EASY_VQA_TEMPLATES[int(t)]
        asked = None
        if "{shape}" in template:
            asked = shape if template.startswith("what") or rng.random() < 0.5 else \
                [v for v in SHAPES if v != shape][int(rng.integers(len(SHAPES) - 1))]
        elif "{color}" in template:
            asked = color if template.startswith("what") or rng.random() < 0.5 else \
                [v for v in COLORS if v != color][int(rng.integers(len(COLORS) - 1))]
        q = template.replace("{shape}", asked or "").replace("{color}", asked or "")
        qs.append((q, easy_vqa_answer(template, shape, color, asked)))
    if labels:
        return np.asarray(img), qs, np.asarray(label_img)
    return np.asarray(img), qs


def easy_vqa_labels(samples: list[VqaSample]) -> dict[str, tuple[str, str]]:
    """(shape, colour) of each easy-VQA image, inferred from its questions and answers: the one
    (shape, colour) consistent with every answer; images whose questions leave it ambiguous are left out."""
    parse: dict[str, tuple[str, str | None]] = {}
    for t in EASY_VQA_TEMPLATES:
        slots = SHAPES if "{shape}" in t else tuple(COLORS) if "{color}" in t else (None,)
        for v in slots:
            parse[t.replace("{shape}", v or "").replace("{color}", v or "")] = (t, v)
    by_image: dict[str, list[tuple[str, str]]] = {}
    for s in samples:
        by_image.setdefault(s.image_id, []).append((s.question, s.answer))
    out = {}
    for image_id, qas in by_image.items():
        cands = [(sh, co) for sh in SHAPES for co in COLORS
                 if all(q in parse and easy_vqa_answer(*parse[q][:1], sh, co, parse[q][1]) == a for q, a in qas)]
        if len(cands) == 1:
            out[image_id] = cands[0]
    return out


def multi_object_questions(objects, rng) -> list[tuple[str, str]]:
    qs = []
    shapes = [s for s, _ in objects]
    colors = [c for _, c in objects]
    for shape, color in objects:
        if shapes.count(shape) == 1:
            qs.append((f"what color is the {shape}?", color))
        if colors.count(color) == 1:
            qs.append((f"what shape is the {color} shape?", shape))
    present = set(objects)
    shape, color = SHAPES[int(rng.integers(3))], list(COLORS)[int(rng.integers(len(COLORS)))]
    if rng.random() < 0.5:  # balance yes/no: ask about a present object half the time
        shape, color = objects[int(rng.integers(len(objects)))]
    qs.append((f"is there a {color} {shape}?", "yes" if (shape, color) in present else "no"))
    qs.append(("how many shapes are there?", COUNT_WORDS[len(objects)]))
    return qs


def multi_object(split: str, n_images: int = 1000, size: int = 64) -> list[VqaSample]:
    """The seeded multi-object set: ``n_images`` images of ``split`` and all their questions."""
    if split not in MULTI_OBJECT_SEEDS:
        raise InputError(f"multi-object has splits {', '.join(MULTI_OBJECT_SEEDS)}, not {split!r}")
    rng = np.random.default_rng(MULTI_OBJECT_SEEDS[split])
    out = []
    for i in range(n_images):
        img, objects = render_multi_object(rng, size)
        for q, a in multi_object_questions(objects, rng):
            out.append(VqaSample(q, a, f"{split}/{i}", image=img))
    return out


def vqa_dir(path: str | Path) -> list[VqaSample]:
    """A folder with ``questions.json`` (image paths relative to the folder)."""
    path = Path(path)
    qfile = path / "questions.json"
    if not qfile.is_file():
        raise InputError(f"{path} is not a VQA folder: questions.json is missing")
    try:
        items = json.loads(qfile.read_text())
        return [VqaSample(it["question"], str(it["answer"]), str(it.get("image_id", it["image"])),
                          image=str(path / it["image"]))
                for it in items]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{qfile}: expected a list of {{image, question, answer}} objects ({exc})") from None


def load(name: str, split: str = "test", n_images: int = 1000) -> list[VqaSample]:
    """``easy-vqa``, ``multi-object`` or a VQA folder path."""
    if name == "easy-vqa":
        return easy_vqa(split)
    if name == "multi-object":
        return multi_object(split, n_images)
    if Path(name).is_dir():
        return vqa_dir(name)
    raise InputError(f"unknown data set {name!r}: use easy-vqa, multi-object or a folder with questions.json")


def subsample(samples: list[VqaSample], limit: int | None, seed: int = 0) -> list[VqaSample]:
    """A seeded subset of at most ``limit`` samples, in original order."""
    if not limit or limit >= len(samples):
        return samples
    idx = np.sort(np.random.default_rng(seed).choice(len(samples), limit, replace=False))
    return [samples[i] for i in idx]
