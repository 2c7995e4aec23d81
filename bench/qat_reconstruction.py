"""Does ``qat`` keep tokens a fake-quantized model reproduces better than ``cls`` does?

Usage:
    python bench/qat_reconstruction.py                 # the trained demo VLM, easy-VQA calibration-style images
    python bench/qat_reconstruction.py --images 40 --keep-ratios 0.25 0.125

The vision tower and projector are fake-quantized (weights symmetric group-wise along the input
dimension, group 32; activations per token at every Linear input) at W4A8, W8A8 and W4A4. For each
scorer running *in the quantized model*, the reconstruction error is ||E_q - E_fp|| / ||E_fp|| over
the kept tokens, E_q their embeddings from the quantized model and E_fp the same tokens from the fp32
model. Lower is better. ``qat`` reads the prompt: each image is scored with the text embedding of its
first multi-object question (mean of the question's token embeddings, as the runtime feeds it).
Prints one table (mean over images); no timing.
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--keep-ratios", type=float, nargs="+", default=[0.25, 0.125])
    args = ap.parse_args()
    torch.set_num_threads(1)
    from atp import datasets
    from atp.calibration.retention.cls_attention import ClsAttentionScorer
    from atp.calibration.retention.quant_aware import QuantAwareScorer, fake_quantized_vision
    from atp.config import resolve_keep
    from atp.export.demo import trained_demo_adapter
    from atp.export.gate import gather_tokens
    from atp.runtime.preprocess import preprocess

    ad = trained_demo_adapter()
    rng = np.random.default_rng(2_000_029)
    rendered = [datasets.render_multi_object(rng) for _ in range(args.images)]
    px = torch.from_numpy(np.concatenate([preprocess(im, ad.preprocessing()) for im, _ in rendered]))
    table = ad.model.get_input_embeddings().weight.detach()
    questions = [datasets.multi_object_questions(objs, rng)[0][0] for _, objs in rendered]
    text = torch.stack([table[ad.tokenizer(q, add_special_tokens=False)["input_ids"]].mean(0) for q in questions])
    n = ad.num_visual_tokens
    fp_gate = ad.vision_module(ClsAttentionScorer())
    with torch.no_grad():
        fp_tokens = fp_gate.context(px, torch.tensor(n)).projected()
    print(f"demo VLM ({n} visual tokens), {args.images} multi-object images (calib-style seed); "
          "reconstruction error of the kept tokens, quantized vs fp32 (lower is better)\n")
    print("| quant | keep | cls | qat default (-0.25,0.25,0.5) | qat error only, low (-1,0,0) | qat error only, high (1,0,0) "
          "| qat default, per-token scales |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for wb, ab in ((4, 8), (8, 8), (4, 4)):
        qad = copy.copy(ad)
        qad.model = fake_quantized_vision(ad.model, wb, ab)
        scorers = {"cls": ClsAttentionScorer(), "qat": QuantAwareScorer(bits=ab),
                   "qat-low": QuantAwareScorer(bits=ab, weights=(-1, 0, 0)),
                   "qat-high": QuantAwareScorer(bits=ab, weights=(1, 0, 0)),
                   "qat-token": QuantAwareScorer(bits=ab, granularity="token")}
        for r in args.keep_ratios:
            k = resolve_keep(n, keep_ratio=r)
            row = []
            for sc in scorers.values():
                with torch.no_grad():
                    eq, idx = qad.vision_module(sc.eval())(px, torch.tensor(k), *([text] if sc.needs_text else []))
                ef = gather_tokens(fp_tokens, idx)
                row.append(float(((eq - ef).flatten(1).norm(dim=1) / ef.flatten(1).norm(dim=1)).mean()))
            print(f"| W{wb}A{ab} | {r:g} (K={k}) | " + " | ".join(f"{v:.4f}" for v in row) + " |")


if __name__ == "__main__":
    main()
