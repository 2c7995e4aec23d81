"""Model card of a demo VLM training run (``scripts/train_demo_vlm.py``)."""

from __future__ import annotations


def extras(args) -> str:
    """Model-card lines for the pruning-aware options."""
    lines = []
    if args.aux_cls > 0:
        lines.append(f"- Presence/count heads on the feature layer's CLS token (weight {args.aux_cls}): trains the CLS attention "
                     "that the `cls`, `atp` and `visionzip` scorers read.")
    if args.aux_word > 0:
        lines.append(f"- Word-tied patch head (weight {args.aux_word}): projector outputs of object patches classified against "
                     "the language model's embeddings of their colour and shape words (the `atp` scorer's LM-space relevance).")
    if args.token_drop > 0:
        lines.append(f"- Pruning-aware training: {args.token_drop:.0%} of the samples read only K visual tokens, K log-uniform "
                     f"in [{args.token_drop_min}, N-1], {args.token_drop_object_bias:.0%} of them favouring object patches, "
                     "the rest uniform subsets.")
    return "".join("\n" + line for line in lines)


def model_card(args, model, history, digest: str, n_tokens: int, n_train: int) -> str:
    """Markdown model card: architecture, data, recipe, running accuracy, sha256."""
    n_params = sum(p.numel() for p in model.parameters())
    mix = [m / sum(args.mix) for m in args.mix]
    command = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
                       if v not in (None, False, True) and k not in ("out", "work_dir"))
    rows = "\n".join(f"| {h['step']} | {h['loss']:.3f} | {h['easy-vqa']:.3f} | {h['multi-object']:.3f} | {h['minutes']} |"
                     for h in history)
    return f"""# atp demo VLM ({args.config})

A genuine `LlavaForConditionalGeneration`, trained {"from scratch" if not args.init_from else "(warm start from " + str(args.init_from) + ")"} on a 2-core CPU by
`python scripts/train_demo_vlm.py {command}`.

- Vision: CLIP ViT, {args.image_size} px, patch {args.patch} ({n_tokens} visual tokens), width {args.vision_width},
  {args.vision_layers} encoder layers read (feature layer -2; the last layer is unused, as in LLaVA).
- Projector: LLaVA 2-layer MLP (GELU). Language model: Llama, width {args.text_width}, {args.text_layers} layers,
  word-level tokenizer built from the data's words. {n_params / 1e6:.2f} M parameters in all.
- Prompt: `USER: <image>\\n{{question}} ASSISTANT:`; loss on the answer word and end-of-sequence only.
- Data per batch: {mix[0]:.0%} easy-VQA train questions ({n_train} in all; PyPI `easy-vqa`), {mix[1]:.0%} fresh
  easy-VQA-style images drawn the way easy-VQA draws its own (`atp.datasets.synthetic_easy_vqa`) and {mix[2]:.0%}
  fresh multi-object images (`atp.datasets.multi_object`'s generator); horizontal flips and shifts.
  Never trained on: the easy-VQA test split and the multi-object `test` split (evaluation only).
- Auxiliary training-only heads on the {"vision feature layer" if args.aux_at == "feature" else "RMS-normalised projector output"} (discarded at export): per-patch object class
  (weight {args.aux_patch_loss}) and, on the mean patch token, which (shape, colour) objects are present and how
  many (weight {args.aux_image_loss}); class maps of published easy-VQA images come from their colour and the
  (shape, colour) their questions imply (`atp.datasets.easy_vqa_labels`).{extras(args)}
- Recipe: AdamW (0.9, 0.98), weight decay 0.05, lr {args.lr} with {args.warmup} warm-up steps and cosine decay
  to 5%, batch {args.batch}, {args.steps} steps, gradient clipping 1.0, seed {args.seed}.
- `model.safetensors` sha256: `{digest}`

## Running accuracy (teacher-forced first answer token, {args.n_test} held-out questions per set)

| step | loss | easy-vqa test | multi-object test | minutes |
|---:|---:|---:|---:|---:|
{rows}
"""
