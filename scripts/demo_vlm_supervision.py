"""Training-time supervision for the demo VLM (``train_demo_vlm.py``): augmentation, class maps and
the auxiliary heads' targets, pruning-aware token subsets, and the word-tied patch head.

None of this is exported: the heads are discarded and the subsets only shape what the language model
learns to read.
"""

from __future__ import annotations

import numpy as np
import torch

def augment(images: np.ndarray, rng: np.random.Generator, labels: np.ndarray | None = None, shift: int = 4,
            vflip: bool = False):
    """Random horizontal flips and translations (edge-padded; vertical flips only with ``vflip``: the
    evaluation sets' triangles are upright): no question depends on position or left/right.
    Label maps (``[n, H, W]``), when given, get the same transform; returns (images, labels)."""
    out = np.empty_like(images)
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    lab_out = np.empty_like(labels) if labels is not None else None
    lab_pad = np.pad(labels, ((0, 0), (shift, shift), (shift, shift)), mode="edge") if labels is not None else None
    for i in range(n):
        dy, dx = rng.integers(0, 2 * shift + 1, 2)
        flip_x, flip_y = rng.random() < 0.5, vflip and rng.random() < 0.5
        for src, dst in ((padded, out), (lab_pad, lab_out)):
            if src is None:
                continue
            im = src[i, dy:dy + h, dx:dx + w]
            if flip_x:
                im = im[:, ::-1]
            if flip_y:
                im = im[::-1]
            dst[i] = im
    return out, lab_out


N_CLASSES = 25  # background + 3 shapes x 8 colours (atp.datasets.object_class)
IGNORE = 255


def real_label_maps(images: np.ndarray, index: dict[int, tuple[str, str]]) -> np.ndarray:
    """Class maps for published easy-VQA images whose (shape, colour) is known (``index``: image row ->
    label, from :func:`atp.datasets.easy_vqa_labels`): a pixel is the object where it is nearer the
    object's palette colour than the background (median of the border); other images stay IGNORE."""
    from atp import datasets

    maps = np.full(images.shape[:3], IGNORE, np.uint8)
    for i, (shape, color) in index.items():
        img = images[i].astype(np.int32)
        border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
        bg = np.median(border, axis=0)
        d_obj = np.abs(img - np.array(datasets.COLORS[color])).sum(-1)
        d_bg = np.abs(img - bg).sum(-1)
        maps[i] = np.where(d_obj < d_bg, datasets.object_class(shape, color), 0)
    return maps


def image_targets(maps: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: multi-hot presence of the 24 object classes and the object count - 1 (classes 0..3),
    from the class maps; IGNORE images get count -100 and presence NaN (masked out)."""
    n = len(maps)
    presence = torch.zeros(n, N_CLASSES - 1)
    count = torch.full((n,), -100, dtype=torch.long)
    for i, m in enumerate(maps):
        if m[0, 0] == IGNORE:
            presence[i] = float("nan")
            continue
        present = [int(c) for c in np.unique(m) if 0 < c < N_CLASSES]
        presence[i, [c - 1 for c in present]] = 1
        count[i] = len(present) - 1
    return presence, count


def patch_labels(labels: np.ndarray, patch: int, min_pixels: int) -> torch.Tensor:
    """``[n, H, W]`` class maps -> ``[n, (H/p)*(W/p)]`` per-patch class: the object covering the most
    pixels of the patch if it covers at least ``min_pixels``, else background; IGNORE rows stay IGNORE."""
    n, h, w = labels.shape
    t = torch.from_numpy(labels.astype(np.int64))
    ignore = t[:, 0, 0] == IGNORE
    t = t.clamp_max(N_CLASSES - 1)
    blocks = t.view(n, h // patch, patch, w // patch, patch).permute(0, 1, 3, 2, 4).reshape(n, -1, patch * patch)
    counts = torch.nn.functional.one_hot(blocks, N_CLASSES).sum(dim=2)  # [n, P, C]
    counts[..., 0] = 0
    best = counts.argmax(dim=-1)
    best = torch.where(counts.max(dim=-1).values >= min_pixels, best, torch.zeros_like(best))
    best[ignore] = -100
    return best


def token_subsets(targets: torch.Tensor, rng: np.random.Generator, fraction: float, k_min: int,
                  object_bias: float) -> list[np.ndarray | None]:
    """Pruning-aware training: per sample, the visual tokens the language model reads (``None`` = all).

    A ``fraction`` of the samples keep K tokens, K log-uniform in [k_min, N - 1] (median about N / 4 for
    N = 64, k_min = 4), in ascending index order as the exported gate emits them. With probability
    ``object_bias`` a sample with a known class map (``targets [B, N]``, -100 rows unknown) ranks object
    patches ahead of background with noise (what a good scorer keeps); otherwise the subset is uniform
    (what a poor one keeps). The language model then learns to answer from any shorter visual sequence,
    so retention is measured by which tokens a scorer keeps, not by the sequence length it was trained on.
    ``object_bias >= 1`` never draws uniform subsets: samples without a class map keep every token (uniform
    subsets reward copying the answer into background tokens, which makes every token subset equally good).
    """
    n = targets.shape[1]
    out: list[np.ndarray | None] = []
    for row in targets.numpy():
        if rng.random() >= fraction or (object_bias >= 1 and not (row >= 0).all()):
            out.append(None)
            continue
        k = int(np.clip(round(float(np.exp(rng.uniform(np.log(k_min), np.log(n))))), k_min, n - 1))
        score = rng.random(n)
        if rng.random() < object_bias and (row >= 0).all():
            score = 1.5 * score + (row > 0)
        out.append(np.sort(np.argsort(-score, kind="stable")[:k]))
    return out


def word_tied_loss(feats: torch.Tensor, targets: torch.Tensor, embed: torch.Tensor, color_ids: list[int],
                   shape_ids: list[int], background: torch.Tensor, scale: float = 10.0) -> torch.Tensor:
    """Per-patch colour and shape classification whose class vectors are the language model's own input
    embeddings of the colour and shape words (plus learned background vectors ``background [2, D]``).

    Object patches at the projector output come to point towards the embeddings of their colour and
    shape words, which is what the LM-space text relevance of the ``atp`` scorer measures (cosine of a
    projected visual token with the mean embedding of the prompt's words). Cosine logits x ``scale``.

    Args:
        feats: ``[B, N, D]`` projector output.
        targets: ``[B, N]`` patch classes (0 background, 1 + shape * 8 + colour; -100 unknown).
        embed: ``[V, D]`` the language model's token embedding table.
    """
    valid = targets >= 0
    if not valid.any():
        return feats.sum() * 0.0
    f = torch.nn.functional.normalize(feats[valid], dim=-1)
    t = targets[valid]
    obj = t > 0
    n_colors = len(color_ids)
    color_t = torch.where(obj, (t - 1) % n_colors, torch.full_like(t, n_colors))
    shape_t = torch.where(obj, (t - 1) // n_colors, torch.full_like(t, len(shape_ids)))
    loss = feats.new_zeros(())
    for ids, bg, target in ((color_ids, background[0], color_t), (shape_ids, background[1], shape_t)):
        vecs = torch.nn.functional.normalize(torch.cat([embed[ids], bg[None]]), dim=-1)
        loss = loss + torch.nn.functional.cross_entropy(f @ vecs.T * scale, target)
    return loss
