"""Where does a VLM keep what it needs to answer? Accuracy from K visual tokens drawn only from object
patches, only from background patches, or uniformly.

Usage:
    python bench/token_locality.py                                   # demo VLM, easy-VQA + multi-object, 500 questions
    python bench/token_locality.py --checkpoint PATH --limit 200 --ks 1 4 16

Retention scorers earn their keep only when the answer lives in some tokens and not in others. If a
model copies the answer into every token (background included), any K tokens answer as well as the
best K, and no scorer can be above ``random``: this bench measures that, with object patches found
from the pixels (a patch is "object" when at least 1/8 of its pixels differ from the image's
background colour, the median of its border). The language model answers from exactly the chosen
tokens, as the exported gate feeds it (ascending order); accuracy is the first answer token under
teacher forcing (every answer here is one word). PyTorch, CPU; prints a table and writes
``bench/results/token_locality.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODES = ("object-first", "random", "background")


def object_patches(image: np.ndarray, patch: int, threshold: int = 48) -> np.ndarray:
    """``[H, W, 3]`` uint8 -> boolean per patch (row-major): at least 1/8 of the patch's pixels differ from
    the background (median border colour) by more than ``threshold`` (sum of absolute RGB differences)."""
    img = image.astype(np.int32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    differs = np.abs(img - np.median(border, axis=0)).sum(-1) > threshold
    h, w = differs.shape
    blocks = differs.reshape(h // patch, patch, w // patch, patch).sum(axis=(1, 3))
    return (blocks >= patch * patch // 8).reshape(-1)


def choose(mask: np.ndarray, mode: str, k: int, rng: np.random.Generator) -> np.ndarray | None:
    """K token indices (ascending): object patches first (random among them, the rest of K filled from the
    background: what an ideal scorer keeps), background patches only, or uniform; None when the image
    has fewer than K background tokens (the question is left out of that cell)."""
    obj, bg = rng.permutation(np.flatnonzero(mask)), rng.permutation(np.flatnonzero(~mask))
    if mode == "object-first":
        return np.sort(np.concatenate([obj, bg])[:k])
    if mode == "background":
        return np.sort(bg[:k]) if len(bg) >= k else None
    return np.sort(rng.choice(len(mask), k, replace=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="local LLaVA checkpoint folder (default: the demo VLM)")
    ap.add_argument("--data", nargs="+", default=["easy-vqa", "multi-object"])
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--draws", type=int, default=3, help="random subsets per question and cell (averaged)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "token_locality.md"))
    args = ap.parse_args()

    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from atp import datasets
    from atp.export.adapters.llava import LLAVA15_TEMPLATE
    from atp.export.demo import DEMO_VLM_DIR
    from atp.runtime.benchmark import machine

    torch.set_num_threads(args.threads)
    path = Path(args.checkpoint or DEMO_VLM_DIR)
    model = LlavaForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    tok = processor.tokenizer
    size = model.config.vision_config.image_size
    patch = model.config.vision_config.patch_size
    n_tokens = (size // patch) ** 2
    image_id = model.config.image_token_id
    embed = model.get_input_embeddings()
    rng = np.random.default_rng(0)

    @torch.no_grad()
    def first_tokens(projected: torch.Tensor, question: str, keeps: list[np.ndarray]) -> list[int]:
        """The first answer token for each kept set (all of one length: one batched forward)."""
        before, after = LLAVA15_TEMPLATE.format(prompt=question).split("<image>")
        ids = tok(before)["input_ids"] + [image_id] * len(keeps[0]) + tok(after, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids] * len(keeps))
        x = embed(ids)
        x[ids == image_id] = torch.cat([projected[torch.from_numpy(k)] for k in keeps])
        return model(inputs_embeds=x).logits[:, -1].argmax(-1).tolist()

    mc = machine()
    lines = ["# Token locality: accuracy from object-first, background-only and uniform token subsets", "",
             f"- model: `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}` ({n_tokens} visual tokens); "
             f"machine: {mc['cpu']}, {mc['logical_cores']} cores, PyTorch CPU; date {dt.date.today().isoformat()}",
             f"- command: `python bench/token_locality.py {' '.join(sys.argv[1:])}`".rstrip(),
             f"- cell: first-answer-token accuracy (teacher forced) over {args.limit} seeded held-out questions x "
             f"{args.draws} draws; in brackets the questions in the cell (background only: images with at least K "
             "background tokens)", ""]
    for data in args.data:
        samples = datasets.subsample(datasets.load(data, "test"), args.limit, seed=0)
        hits = {(m, k): [0, 0] for m in MODES for k in args.ks}
        dense = 0
        object_share = []
        for s in samples:
            img = Image.open(s.image) if isinstance(s.image, (str, Path)) else Image.fromarray(np.asarray(s.image))
            arr = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))
            mask = object_patches(arr, patch)
            object_share.append(mask.mean())
            pixels = processor.image_processor(arr, return_tensors="pt")["pixel_values"]
            with torch.no_grad():  # LLaVA's features: the feature layer's patch tokens (CLS dropped), projected
                hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
                projected = model.model.multi_modal_projector(hidden[model.config.vision_feature_layer][:, 1:])[0]
            gold = tok(s.answer, add_special_tokens=False)["input_ids"][0]
            dense += first_tokens(projected, s.question, [np.arange(n_tokens)])[0] == gold
            for k in args.ks:
                cells = [(m, keep) for m in MODES for _ in range(args.draws)
                         if (keep := choose(mask, m, k, rng)) is not None]
                for (m, _), pred in zip(cells, first_tokens(projected, s.question, [keep for _, keep in cells])):
                    hits[(m, k)][0] += pred == gold
                    hits[(m, k)][1] += 1
        n = len(samples)
        lines += [f"## {data}", "", f"all {n_tokens} tokens: {dense / n:.3f}; object patches per image: "
                  f"{np.mean(object_share):.1%} of tokens on average", "",
                  "| K | object patches first | uniform (random) | background only |",
                  "|---:|" + "---:|" * len(MODES)]
        for k in args.ks:
            cells = [f"{h / c:.3f} ({c // args.draws})" if c else "-" for h, c in (hits[(m, k)] for m in MODES)]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
        print("\n".join(lines[-(len(args.ks) + 7):]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
