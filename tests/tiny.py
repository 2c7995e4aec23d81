"""Tiny seeded random LLaVA checkpoints (with tokenizer and processor) for tests."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "what colour is the circle", "is there a blue triangle", "how many shapes are in the image",
    "the quick brown fox jumps over the lazy dog", "describe the picture in one word",
    "red green blue yellow purple orange", "yes no maybe 0 1 2 3 4 5 6 7 8 9",
    "USER: ASSISTANT: a small model answers questions about images.",
]


def _text_config(cls, tok, **extra):
    """The tiny language model's config (2 layers, GQA 4/2 heads, 64 wide) for ``tok``'s vocabulary."""
    return cls(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=len(tok), max_position_embeddings=512, initializer_range=0.2,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)


def _siglip_config(image_size: int, patch: int):
    from transformers import SiglipVisionConfig

    return SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=image_size, patch_size=patch)


def build_tokenizer(out: Path, extra_special: tuple[str, ...] = (), image_token: str = "<image>"):
    """Byte-level BPE trained on a fixed corpus (deterministic), with an image token (and ``extra_special``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>", *extra_special],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", extra_special_tokens={"image_token": image_token})
    fast.add_special_tokens({"additional_special_tokens": [image_token]})
    return fast


def _spread(model) -> None:
    """Larger weights than the default init (and the same for image_newline), so logits are far from ties."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
        if hasattr(getattr(model, "model", None), "image_newline"):
            model.model.image_newline.normal_(0, 0.2)


def build_tiny_llava(out: Path, seed: int = 0, image_size: int = 32, patch: int = 8, text_model: str = "llama") -> Path:
    """Save a seeded random LlavaForConditionalGeneration + LlavaProcessor to ``out``.

    CLIP tower 3 x 32 (``image_size/patch`` squared tokens), Llama/Qwen2/Mistral 2 x 64 with GQA.
    """
    import torch
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor, MistralConfig, Qwen2Config)
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          image_size=image_size, patch_size=patch)
    tcls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[text_model]
    tc = _text_config(tcls, tok)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=image_token_id,
                      vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    _spread(model)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    ip = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)
    proc.save_pretrained(out)
    return out


# llava-interleave-qwen's template (Qwen2 ChatML turns, images first in a turn)
CHATML_IMAGE_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def build_tiny_llava_siglip(out: Path, seed: int = 0, image_size: int = 32, patch: int = 8) -> Path:
    """A seeded random llava-interleave-shaped checkpoint: ``LlavaForConditionalGeneration`` with a SigLIP tower (no
    CLS token; feature layer -1, select strategy ``"full"``), a Qwen2 LM, ``SiglipImageProcessorPil`` (plain resize
    to a square, mean/std 0.5) and a ChatML chat template, saved to ``out``."""
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, extra_special=("<|im_start|>", "<|im_end|>"))
    tok.eos_token = "<|im_end|>"
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vc = _siglip_config(image_size, patch)
    tc = _text_config(Qwen2Config, tok)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_id=image_token_id, vision_feature_layer=-1,
                      vision_feature_select_strategy="full", projector_hidden_act="gelu")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(cfg).eval()
    _spread(model)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    ip = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=patch, vision_feature_select_strategy="full",
                          num_additional_image_tokens=0, chat_template=CHATML_IMAGE_TEMPLATE)
    proc.save_pretrained(out)
    return out


MISTRAL_IMAGE_TEMPLATE = (  # llava-v1.6-mistral's: [INST] <image>\n{text} [/INST]
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}{% endif %}{% endfor %}"
)
NEXT_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]


def build_tiny_llava_next(out: Path, seed: int = 0, image_size: int = 32, patch: int = 8) -> Path:
    """A seeded random ``LlavaNextForConditionalGeneration`` (anyres over the grid pinpoints ``NEXT_PINPOINTS``, CLIP
    tower with CLS, feature layer -2, ``image_newline``), a Mistral LM, ``LlavaNextImageProcessorPil`` and the
    llava-v1.6-mistral chat template, saved to ``out``."""
    import torch
    from transformers import (CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor,
                              MistralConfig)
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, extra_special=("[INST]", "[/INST]"))
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          image_size=image_size, patch_size=patch)
    tc = _text_config(MistralConfig, tok, sliding_window=None)
    cfg = LlavaNextConfig(vision_config=vc, text_config=tc, image_token_id=image_token_id, vision_feature_layer=-2,
                          vision_feature_select_strategy="default", image_grid_pinpoints=NEXT_PINPOINTS)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    _spread(model)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                                    image_grid_pinpoints=NEXT_PINPOINTS)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=patch, vision_feature_select_strategy="default",
                              num_additional_image_tokens=1, chat_template=MISTRAL_IMAGE_TEMPLATE)
    proc.save_pretrained(out)
    return out


def build_tiny_llava_onevision(out: Path, seed: int = 0, image_size: int = 32, patch: int = 8, max_patches: int = 1) -> Path:
    """A seeded random ``LlavaOnevisionForConditionalGeneration``: anyres over ``NEXT_PINPOINTS`` with
    ``anyres_max_{max_patches}`` (small, so the bilinear resize of the grid happens on some image sizes and not on
    others), a SigLIP tower read in full, a Qwen2 LM, ``LlavaOnevisionImageProcessorPil`` and a ChatML chat template,
    saved to ``out``."""
    import torch
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor,
                              Qwen2Config)
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, extra_special=("<|im_start|>", "<|im_end|>", "<video>"))
    tok.eos_token = "<|im_end|>"
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vc = _siglip_config(image_size, patch)
    tc = _text_config(Qwen2Config, tok)
    aspect = f"anyres_max_{max_patches}"
    cfg = LlavaOnevisionConfig(vision_config=vc, text_config=tc, image_token_id=image_token_id,
                               video_token_id=tok.convert_tokens_to_ids("<video>"), vision_feature_layer=-1,
                               vision_feature_select_strategy="full", vision_aspect_ratio=aspect,
                               image_grid_pinpoints=NEXT_PINPOINTS)
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    _spread(model)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    ip = LlavaOnevisionImageProcessorPil(size={"height": image_size, "width": image_size}, image_grid_pinpoints=NEXT_PINPOINTS)
    proc = LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=LlavaOnevisionVideoProcessor(),
                                   num_image_tokens=(image_size // patch) ** 2,
                                   vision_feature_select_strategy="full", vision_aspect_ratio=aspect,
                                   chat_template=CHATML_IMAGE_TEMPLATE)
    proc.save_pretrained(out)
    return out


# Idefics3's template (Llama-3 turns: "User:<image>text<end_of_utterance>\nAssistant:")
IDEFICS3_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].capitalize() }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


SMOLVLM_TEMPLATE = "<|im_start|>" + IDEFICS3_TEMPLATE  # SmolVLM's: Idefics3's turns after <|im_start|>


def build_tiny_idefics3(out: Path, seed: int = 0, tile: int = 32, patch: int = 4, scale: int = 2, longest: int = 64,
                        family: str = "idefics3") -> Path:
    """A seeded random ``Idefics3ForConditionalGeneration`` (or ``SmolVLMForConditionalGeneration``, ``family``):
    images split into tiles of ``tile`` px plus a global view (``Idefics3ImageProcessorPil`` / ``SmolVLM...``,
    LANCZOS, longest edge ``longest``: up to 2 x 2 tiles at 64), the family's vision tower (64 patches per view), the
    pixel-shuffle connector (scale 2: 16 tokens per view), a Llama LM and the family's chat template, saved to
    ``out``. SmolVLM's processor also takes its video processor (torchvision) and needs num2words."""
    import torch
    import transformers
    from transformers import LlamaConfig

    if family == "idefics3":
        from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig as VisionConfig
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as ImageProcessor
    else:
        from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig as VisionConfig
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as ImageProcessor
    prefix = {"idefics3": "Idefics3", "smolvlm": "SmolVLM"}[family]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    markers = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok = build_tokenizer(out, extra_special=("<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *markers))
    tok.eos_token = "<end_of_utterance>"
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vc = VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=tile, patch_size=patch)
    tc = _text_config(LlamaConfig, tok)
    cfg = getattr(transformers, f"{prefix}Config")(vision_config=vc.to_dict(), text_config=tc.to_dict(),
                                                   image_token_id=image_token_id, scale_factor=scale, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(cfg).eval()
    _spread(model)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    ip = ImageProcessor(size={"longest_edge": longest}, max_image_size={"longest_edge": tile})
    seq = (tile // patch) ** 2 // scale ** 2
    if family == "idefics3":
        proc = transformers.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=seq, chat_template=IDEFICS3_TEMPLATE)
    else:
        from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

        proc = transformers.SmolVLMProcessor(image_processor=ip, tokenizer=tok, video_processor=SmolVLMVideoProcessor(),
                                             image_seq_len=seq, chat_template=SMOLVLM_TEMPLATE)
    proc.save_pretrained(out)
    return out


# Qwen2.5-VL's template (ChatML with the default system turn; images as vision_start / image_pad / vision_end)
QWEN_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def qwen_tokenizer(out: Path):
    """The tests' BPE with Qwen-VL's special tokens: (tokenizer, {token: id} of the image / video / vision markers)."""
    tok = build_tokenizer(out, extra_special=("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                                              "<|video_pad|>"), image_token="<|image_pad|>")
    tok.eos_token = "<|im_end|>"
    return tok, {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}


def save_qwen(out: Path, family: str, vc, tc, tok, ids: dict, seed: int, image_processor, video_processor, template: str):
    """Build the seeded ``{family}ForConditionalGeneration`` (``Qwen2_5_VL`` / ``Qwen3VL``) from vision / text configs
    and save it with its processor to ``out``."""
    import torch
    import transformers

    cfg = getattr(transformers, f"{family}Config")(
        vision_config=vc.to_dict(), text_config=tc.to_dict(), image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    model = getattr(transformers, f"{family}ForConditionalGeneration")(cfg).eval()
    _spread(model)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    getattr(transformers, f"{family}Processor")(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                                chat_template=template).save_pretrained(out)
    return out


def _qwen2_processors(patch: int, max_pixels: int):
    """The tiny models' ``Qwen2VLImageProcessorPil`` and video processor: smart resize to multiples of 2 * ``patch``
    between 16 x 16 and ``max_pixels``."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    size = {"shortest_edge": 16 * 16, "longest_edge": max_pixels}
    return (Qwen2VLImageProcessorPil(size=size, patch_size=patch, merge_size=2, temporal_patch_size=2),
            Qwen2VLVideoProcessor(size=size, patch_size=patch, merge_size=2, temporal_patch_size=2))


def build_tiny_qwen2_5_vl(out: Path, seed: int = 1, patch: int = 4, window: int = 16, max_pixels: int = 64 * 64) -> Path:
    """A seeded random ``Qwen2_5_VLForConditionalGeneration``: the Qwen2.5-VL vision transformer (patch ``patch``,
    temporal patch 2, 2 x 2 merger, windows of ``window`` px, layers 1 and 3 of 4 with full attention), a Qwen2.5-VL
    text model (M-RoPE sections 2/3/3 of head_dim 16), ``Qwen2VLImageProcessorPil`` (smart resize to multiples of
    2 * patch between 16 x 16 and ``max_pixels``) and a ChatML template with the default system turn, saved to ``out``."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig, Qwen2_5_VLVisionConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok, ids = qwen_tokenizer(out)
    vc = Qwen2_5_VLVisionConfig(depth=4, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=patch,
                                window_size=window, out_hidden_size=64, fullatt_block_indexes=[1, 3])
    tc = _text_config(Qwen2_5_VLTextConfig, tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                    "mrope_section": [2, 3, 3]})
    return save_qwen(out, "Qwen2_5_VL", vc, tc, tok, ids, seed, *_qwen2_processors(patch, max_pixels), QWEN_VL_TEMPLATE)


# Qwen3-VL's template (ChatML without a default system turn)
QWEN3_VL_TEMPLATE = QWEN_VL_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}", "")


def build_tiny_qwen3_vl(out: Path, seed: int = 1, patch: int = 4, max_pixels: int = 64 * 64) -> Path:
    """A seeded random ``Qwen3VLForConditionalGeneration``: the Qwen3-VL vision transformer (patch ``patch``, a
    learned 8 x 8 position table, full attention, 3 blocks with DeepStack levels after blocks 0 and 1, 2 x 2 merger), a
    Qwen3-VL text model (q / k norms, interleaved M-RoPE 2/3/3 of head_dim 16, 3 layers), ``Qwen2VLImageProcessorPil``
    and a ChatML template, saved to ``out``."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig, Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok, ids = qwen_tokenizer(out)
    vc = Qwen3VLVisionConfig(depth=3, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=patch, out_hidden_size=64,
                             num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
    tc = _text_config(Qwen3VLTextConfig, tok, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                             "mrope_section": [2, 3, 3], "mrope_interleaved": True})
    tc.num_hidden_layers = 3
    size = {"shortest_edge": 16 * 16, "longest_edge": max_pixels}
    ip = Qwen2VLImageProcessorPil(size=size, patch_size=patch, merge_size=2, temporal_patch_size=2,
                                  image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    vp = Qwen3VLVideoProcessor(size=size, patch_size=patch, merge_size=2, temporal_patch_size=2)
    return save_qwen(out, "Qwen3VL", vc, tc, tok, ids, seed, ip, vp, QWEN3_VL_TEMPLATE)


def build_tiny_qwen2_vl(out: Path, seed: int = 1, patch: int = 4, max_pixels: int = 64 * 64) -> Path:
    """A seeded random ``Qwen2VLForConditionalGeneration``: the Qwen2-VL vision transformer (patch ``patch``,
    LayerNorm blocks, full attention, 3 blocks, 2 x 2 merger), a Qwen2-VL text model (M-RoPE 2/3/3 of head_dim 16),
    ``Qwen2VLImageProcessorPil`` and Qwen2.5-VL's ChatML template, saved to ``out``."""
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok, ids = qwen_tokenizer(out)
    vc = Qwen2VLVisionConfig(depth=3, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=4, patch_size=patch)
    tc = _text_config(Qwen2VLTextConfig, tok, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                 "mrope_section": [2, 3, 3]})
    return save_qwen(out, "Qwen2VL", vc, tc, tok, ids, seed, *_qwen2_processors(patch, max_pixels), QWEN_VL_TEMPLATE)
