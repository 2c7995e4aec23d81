"""The architecture contract, one suite over the tiny model of every supported architecture.

Each row builds a seeded random checkpoint in code with its own processor and chat template (``tests/tiny.py``) and
checks, through the exported bundle on ONNX Runtime:

- greedy ids equal transformers ``generate`` with every visual token kept, through the checkpoint's own chat template
  (``processor.apply_chat_template``), for three image sizes / aspect ratios;
- a pruned run keeps exactly K tokens, the ones a PyTorch reference scorer picks (saliency from transformers' own eager
  attention maps: CLS attention for CLIP, attention received for SigLIP; index sets compared), and answers with the
  ids of the HF language model fed the same pruned sequence (``inputs_embeds``, 1-D positions);
- vision embeddings vs PyTorch (atol 1e-5) for every K;
- bad K and a prompt with two images are refused with the reason; the manifest round-trips through the typed schema
  (token layout, positions, tower saliency, architecture name).

The reference image processor is the PIL backend (``backend="pil"``): atp's numpy preprocessing mirrors it. (transformers
defaults to its torchvision backend when torchvision is installed, whose antialiased bicubic differs by a few levels.)
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from atp.errors import ConfigError, InputError
from tests.conftest import random_image

VISION_ATOL = 1e-5
SIZES = [(32, 32), (40, 24), (24, 56)]  # (H, W): square, portrait, landscape; resized by each processor
PROMPTS = ["what colour is the circle", "how many shapes are in the image"]


def _tiny(builder: str, **kw):
    """A checkpoint builder of tests/tiny.py, imported when a row runs (transformers loads only then)."""
    def build(tmp):
        import tests.tiny

        return getattr(tests.tiny, builder)(tmp, **kw)

    return build


_llava = _tiny("build_tiny_llava")
_llava_siglip = _tiny("build_tiny_llava_siglip")
_llava_next = _tiny("build_tiny_llava_next")
_llava_onevision = _tiny("build_tiny_llava_onevision")
_idefics3 = _tiny("build_tiny_idefics3")
_smolvlm = _tiny("build_tiny_idefics3", family="smolvlm", longest=96)
_qwen2_vl = _tiny("build_tiny_qwen2_vl")
_qwen2_5_vl = _tiny("build_tiny_qwen2_5_vl")
_qwen3_vl = _tiny("build_tiny_qwen3_vl")


# name -> (builder, architecture in the manifest, N, saliency kind, what the row checks)
ARCHS = {
    "llava-clip": (_llava, "llava", 16, "cls_attention", "CLIP tower with CLS, Llama LM, LLaVA-1.5 template fallback"),
    "llava-siglip": (_llava_siglip, "llava", 16, "attention_received",
                     "SigLIP tower without CLS (llava-interleave), Qwen2 LM, ChatML template"),
    # N is the largest (every view, no unpadding); each image has its own
    "llava-next": (_llava_next, "llava_next", 80, "cls_attention",
                   "anyres base view + tiles, unpadding, image_newline per grid row, Mistral LM, [INST] template"),
    # anyres_max_1: the unpadded grid is resized bilinearly (after the projector) for 2 of the 3 SIZES
    "llava-onevision": (_llava_onevision, "llava_onevision", 80, "attention_received",
                        "anyres + anyres_max bilinear resize of the projected grid, SigLIP, Qwen2 LM, ChatML template"),
    # N is the largest (2 x 2 tiles + the global view); each image has its own
    "idefics3": (_idefics3, "idefics3", 80, "attention_received",
                 "tiles + global view (LANCZOS), pixel shuffle, row/col + global-img markers, Llama LM, Idefics3 template"),
    # longest edge 96: up to 3 x 3 tiles (N = 10 views x 16)
    "smolvlm": (_smolvlm, "idefics3", 160, "attention_received",
                "SmolVLM: Idefics3's rule up to 3 x 3 tiles, SmolVLM processor (video processor, num2words) and template"),
    # N is the largest (max_pixels 64 x 64: 8 x 8 merged tokens); each image has its own (smart resize)
    "qwen2.5-vl": (_qwen2_5_vl, "qwen2_5_vl", 64, "attention_received",
                   "dynamic resolution, window attention, 2 x 2 merger, M-RoPE (3-D positions), ChatML + system turn"),
    "qwen2-vl": (_qwen2_vl, "qwen2_vl", 64, "attention_received",
                 "dynamic resolution, full-attention LayerNorm tower, 2 x 2 merger, M-RoPE, ChatML + system turn"),
    "qwen3-vl": (_qwen3_vl, "qwen3_vl", 64, "attention_received",
                 "dynamic resolution, learned + rotary positions, DeepStack, Qwen3 LM (q/k norms, interleaved M-RoPE)"),
}
GATE_POSITION = {"llava-onevision": "after_connector", "idefics3": "after_connector", "smolvlm": "after_connector",
                 "qwen2.5-vl": "after_connector", "qwen2-vl": "after_connector",
                 "qwen3-vl": "after_connector"}  # the others: before_connector
POSITION_SCHEME = {"qwen2.5-vl": "mrope", "qwen2-vl": "mrope", "qwen3-vl": "mrope"}  # the others: 1d


def _hf_model(ckpt):
    import json

    import transformers

    cls = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration",
           "llava_onevision": "LlavaOnevisionForConditionalGeneration", "idefics3": "Idefics3ForConditionalGeneration",
           "smolvlm": "SmolVLMForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
           "qwen3_vl": "Qwen3VLForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration"}
    mt = json.loads((ckpt / "config.json").read_text())["model_type"]
    return getattr(transformers, cls[mt]).from_pretrained(ckpt, attn_implementation="eager").eval()


@pytest.fixture(scope="module", params=sorted(ARCHS))
def arch(request, tmp_path_factory):
    """(name, checkpoint, bundle, session, hf model (eager), processor (PIL backend))."""

    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    name = request.param
    build = ARCHS[name][0]
    ckpt = build(tmp_path_factory.mktemp(name) / "ckpt")
    bundle = tmp_path_factory.mktemp(name) / "bundle"
    export_bundle(adapter_for_checkpoint(ckpt).from_checkpoint(ckpt), bundle)
    model = _hf_model(ckpt)
    return name, ckpt, bundle, Session(bundle), model, _pil_processor(ckpt)


def _pil_processor(ckpt):
    """The checkpoint's processor with the PIL image processor (a video processor, LLaVA-OneVision's, has no PIL
    backend: only the image processor is swapped)."""
    from transformers import AutoImageProcessor, AutoProcessor

    processor = AutoProcessor.from_pretrained(ckpt)
    processor.image_processor = AutoImageProcessor.from_pretrained(ckpt, backend="pil")
    return processor


def _chat(processor, prompt):
    if processor.chat_template:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return processor.apply_chat_template(msgs, add_generation_prompt=True)
    return f"USER: <image>\n{prompt} ASSISTANT:"  # the tiny CLIP LLaVA has no chat template: LLaVA-1.5's format


@pytest.mark.parametrize("size", SIZES)
def test_greedy_ids_equal_transformers_generate(arch, size):
    name, _, _, session, model, processor = arch
    for seed, prompt in enumerate(PROMPTS):
        img = random_image(seed, size)
        inputs = processor(images=img, text=_chat(processor, prompt), return_tensors="pt")
        with torch.no_grad():
            ref = model.generate(**inputs, max_new_tokens=10, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
        ours = session.generate(img, prompt, max_new_tokens=10)
        n = ours.visual_tokens
        assert n == ARCHS[name][2] or (session.layout.kind != "fixed" and n < ARCHS[name][2])
        assert ours.kept == n and ours.kept_index == list(range(n))
        assert ours.prompt_tokens == inputs["input_ids"].shape[1]  # newline rows included for anyres
        assert len(ours.token_ids) >= 5 and ours.token_ids == ref, (name, size, prompt)
        pixels, views = inputs["pixel_values"].numpy(), _views(session, img)[0]
        assert views.size == pixels.size  # [V, 3, S, S] views, or [P, C*T*p*p] patches (Qwen2.5-VL)
        np.testing.assert_allclose(views.reshape(pixels.shape), pixels, atol=1e-5, rtol=0)


def _views(session, img):
    """(views [V, 3, S, S], token_index [M] into the V * P tower tokens) as the runtime computes them."""
    from atp.runtime.anyres import AnyresSpec, token_layout
    from atp.runtime.preprocess import preprocess_views

    pre = session.manifest["preprocessing"]
    px, size = preprocess_views(img, pre)
    if session.layout.kind in ("tiled", "dynamic"):
        return px, None
    if session.layout.kind == "anyres":
        spec = AnyresSpec.from_dict(pre["anyres"])
        return px, None if spec.max_patches else token_layout(size, spec)[0]
    return px, np.arange(session.num_visual_tokens)


def _reference_saliency_and_features(model, px: torch.Tensor, index: np.ndarray | None, kind: str, size):
    """``[M]`` saliency from transformers' eager attention maps at the feature layer (per view), and ``[M, D]``
    projected features, for one image's views and token order (``index``; None: LLaVA-OneVision, whose order and
    bilinear resize come from transformers' own ``pack_image_features``, run on [saliency, features] channels)."""
    cfg = model.config
    if hasattr(model.model, "visual"):  # Qwen2.5-VL: transformers' own window order, rotary and merger
        return _qwen_reference(model, px, size)
    if index is None and hasattr(model.model, "connector"):  # Idefics3 / SmolVLM: every view, after the pixel shuffle
        with torch.no_grad():
            out = model.model.vision_model(px, output_attentions=True)
            sal = out.attentions[-1].mean(dim=(1, 2))[..., None]  # [V, P, 1] attention received
            conn = model.model.connector
            grouped = conn.pixel_shuffle(sal, conn.scale_factor).sum(-1)  # [V, T]: each token's patches
            proj = conn(out.last_hidden_state)
        return grouped.reshape(-1), proj.reshape(-1, proj.shape[-1])
    with torch.no_grad():
        out = model.model.vision_tower(px, output_attentions=True, output_hidden_states=True)
        fl = cfg.vision_feature_layer
        layer = (fl if fl >= 0 else len(out.hidden_states) + fl) - 1  # the layer whose output is read
        attn = out.attentions[layer]  # [V, H, T, T]
        feats = out.hidden_states[fl]
        if kind == "cls_attention":
            sal, feats = attn[:, :, 0, 1:].mean(dim=1), feats[:, 1:]
        else:
            sal = attn.mean(dim=(1, 2))
        proj = model.model.multi_modal_projector(feats)
        if index is None:
            both = torch.cat([sal[..., None], proj], dim=-1)
            packed = model.model.pack_image_features([both], torch.tensor([size]), image_newline=None,
                                                     vision_aspect_ratio=cfg.vision_aspect_ratio)[0][0]
            return packed[:, 0], packed[:, 1:]
    idx = torch.from_numpy(index)
    return sal.reshape(-1)[idx], proj.reshape(-1, proj.shape[-1])[idx]


def _qwen_reference(model, px: torch.Tensor, size):
    """Qwen2.5-VL / Qwen3-VL: attention received at the last block, computed from the inputs transformers gives that
    block (Qwen2.5-VL: window-ordered hidden states; its rotary cos / sin; the last block attends over the whole
    image), summed over each merged token's patches and put back in raster order with transformers' own window
    index; the merged features are transformers' ``pooler_output``."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
    from transformers.vision_utils import get_vision_window_index

    from atp.runtime.dynamic import DynamicSpec, smart_resize

    visual, vc = model.model.visual, model.config.vision_config
    windows = hasattr(vc, "window_size")  # Qwen2.5-VL
    assert not windows or vc.fullatt_block_indexes[-1] == len(visual.blocks) - 1
    spec = DynamicSpec(vc.patch_size, vc.spatial_merge_size, 2, 16 * 16, 64 * 64, 1)
    h, w = smart_resize(*size, spec)
    thw = torch.tensor([[1, h // vc.patch_size, w // vc.patch_size]])
    seen = {}
    hook = visual.blocks[-1].register_forward_pre_hook(lambda mod, a, kw: seen.update(h=a[0], pe=kw["position_embeddings"]),
                                                       with_kwargs=True)
    try:
        with torch.no_grad():
            merged = visual(px, grid_thw=thw).pooler_output
    finally:
        hook.remove()
    blk = visual.blocks[-1]
    with torch.no_grad():
        x = blk.norm1(seen["h"])
        q, k, _ = blk.attn.qkv(x).reshape(x.shape[0], 3, blk.attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, *seen["pe"])
        probs = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) * blk.attn.scaling, dim=-1)
    unit = vc.spatial_merge_size ** 2
    per_token = probs.mean(dim=(0, 1)).reshape(-1, unit).sum(-1)  # window order (Qwen2.5-VL)
    if not windows:
        return per_token, merged
    window_index, _ = get_vision_window_index(thw, vc.spatial_merge_size, vc.window_size, vc.patch_size)
    return per_token[torch.argsort(window_index)], merged


@pytest.mark.parametrize("ratio", [1 / 16, 0.25, 1.0])
def test_vision_graph_keeps_the_reference_top_k(arch, ratio):
    from atp.config import resolve_keep

    name, _, _, session, model, _ = arch
    for seed in (7, 8):
        img = random_image(seed, SIZES[seed % 3])
        px, index = _views(session, img)
        sal, feats = _reference_saliency_and_features(model, torch.from_numpy(px), index, ARCHS[name][3], img.size[::-1])
        k = resolve_keep(len(sal), None, ratio)
        vis = session.image_tokens(img, None, ratio, "hi")
        ref = torch.topk(sal, k).indices.sort().values
        assert vis["k"] == k and set(vis["kept_index"].tolist()) == set(ref.tolist())
        embeds = vis["embeds"]
        if session.layout.newline:  # anyres: the newline rows the runtime put after kept grid rows
            embeds = embeds[~np.all(embeds == session._newline, axis=1)]
        if session.layout.markers:  # tiled: the graph's own output (the slot interleaves marker runs)
            embeds = session.run_vision(px, k, "hi")[0][0]
        np.testing.assert_allclose(embeds, feats[ref].numpy(), atol=VISION_ATOL, rtol=0)


def test_pruned_answer_equals_the_hf_lm_on_the_same_pruned_sequence(arch):
    """K honoured; the answer is the HF language model's on the pruned sequence (kept tokens at the placeholder,
    positions 0..L-1): the pruned semantics written in atp.runtime.positions, tested against PyTorch."""
    name, _, _, session, model, processor = arch
    n = ARCHS[name][2]
    for k in (1, n // 4):
        img, prompt = random_image(11, SIZES[1]), PROMPTS[0]
        ours = session.generate(img, prompt, keep=k, max_new_tokens=8, ignore_eos=True)
        k = min(k, ours.visual_tokens)  # a count above this image's N keeps all N
        assert ours.kept == k and len(ours.kept_index) == k and ours.kept_index == sorted(ours.kept_index)
        ids = session.prompt_ids(prompt)
        slot = session.image_tokens(img, k, None, prompt)["embeds"]  # K kept tokens (+ a newline per kept grid row)
        markers = len(slot) - k  # newline rows (anyres, at most one per kept token) or marker runs (tiled, all kept)
        assert ours.prompt_tokens == len(ids) - 1 + len(slot) and 0 <= markers <= (k if session.layout.newline else 0) + \
            (max(sum(map(len, runs)) for runs in session.layout.markers.values()) if session.layout.markers else 0)
        seq = torch.from_numpy(session.inputs_embeds(ids, session.image_tokens(img, k, None, prompt)["embeds"]))
        pos = _pruned_positions(name, model, processor, img, prompt, ours.kept_index, seq.shape[1])
        deepstack = _kept_deepstack(model, processor, img, ours.kept_index)
        out = []
        with torch.no_grad():
            for _ in range(8):
                logits = _reference_logits(model, seq, pos, deepstack, ids.index(session.layout.placeholder_id), k)
                out.append(int(logits.argmax()))
                seq = torch.cat([seq, model.get_input_embeddings().weight[out[-1]][None, None]], dim=1)
                pos = torch.cat([pos, pos.amax(dim=-1, keepdim=True) + 1], dim=-1)  # each new token: largest + 1
        assert ours.token_ids == out, (name, k)


def _kept_deepstack(model, processor, img, kept_index):
    """Qwen3-VL: transformers' own DeepStack features of the kept tokens (one [K, D] per level); None elsewhere."""
    if not hasattr(getattr(model.model, "visual", None), "deepstack_merger_list"):
        return None
    inputs = processor(images=img, text=_chat(processor, "hi"), return_tensors="pt")
    with torch.no_grad():
        feats = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).deepstack_features
    return [f[list(kept_index)] for f in feats]


def _reference_logits(model, seq, pos, deepstack, start: int, k: int):
    """Last-position logits of the HF model on ``seq`` at ``pos``; with DeepStack (Qwen3-VL) through its language
    model with the kept tokens' levels added at the image slot (``visual_pos_masks``), as transformers does."""
    if deepstack is None:
        return model(inputs_embeds=seq, position_ids=pos).logits[0, -1]
    mask = torch.zeros(seq.shape[:2], dtype=torch.bool)
    mask[0, start:start + k] = True
    h = model.model.language_model(inputs_embeds=seq, position_ids=pos, visual_pos_masks=mask,
                                   deepstack_visual_embeds=deepstack).last_hidden_state
    return model.lm_head(h)[0, -1]


def _pruned_positions(name, model, processor, img, prompt, kept_index, length) -> torch.Tensor:
    """The reference positions of a pruned prompt: 0..L-1 (1-D schemes), or (M-RoPE) transformers' own
    ``get_rope_index`` of the dense prompt with the pruned visual tokens' columns dropped: kept tokens keep their grid
    positions and the text after the image keeps its dense positions."""
    if POSITION_SCHEME.get(name, "1d") == "1d":
        return torch.arange(length)[None]
    inputs = processor(images=img, text=_chat(processor, prompt), return_tensors="pt")
    dense, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"])
    image = (inputs["input_ids"][0] == model.config.image_token_id).nonzero()[:, 0]
    drop = set(image.tolist()) - {int(image[i]) for i in kept_index}
    cols = [c for c in range(dense.shape[-1]) if c not in drop]
    assert len(cols) == length
    return dense[:, :, cols]


def test_bad_k_and_two_images_are_refused(arch):
    name, _, _, session, _, _ = arch
    n = ARCHS[name][2]
    img = random_image(0)
    for bad in (0, n + 1, -3):
        with pytest.raises(ConfigError, match="keep"):
            session.generate(img, "hi", keep=bad)
    with pytest.raises(InputError, match=r"image placeholder .* exactly once \(found 2\)"):
        session.generate(img, f"{session.layout.placeholder} and {session.layout.placeholder} compare", raw_prompt=True)


def test_manifest_round_trips_through_the_schema(arch):
    from atp.bundle import read_manifest
    from atp.manifest import FORMAT_VERSION, parse

    name, _, bundle, _, _, _ = arch
    raw = read_manifest(bundle)
    spec = parse(raw)
    assert raw["format_version"] == spec.format_version == FORMAT_VERSION
    assert spec.architecture == ARCHS[name][1]
    assert spec.token_layout.to_dict() == raw["token_layout"] and spec.token_layout.num_visual_tokens == ARCHS[name][2]
    assert spec.positions.to_dict() == raw["positions"] and spec.positions.scheme == POSITION_SCHEME.get(name, "1d")
    assert raw["graphs"]["vision"]["tower"]["saliency"] == ARCHS[name][3]
    assert raw["graphs"]["vision"]["gate_position"] == GATE_POSITION.get(name, "before_connector")


def _edited_checkpoint(src, dst, **edit):
    import json
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in edit.items():
        if key.startswith("vision_config."):
            cfg["vision_config"][key.split(".", 1)[1]] = value
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("edit,needle", [
    ({"vision_feature_select_strategy": "default"}, "SigLIP tower has no CLS token"),
    ({"vision_feature_layer": [-2, -1]}, "multi-layer vision_feature_layer"),
    ({"vision_config.model_type": "pixtral"}, "unsupported vision tower 'pixtral'"),
])
def test_unsupported_variants_are_refused(tmp_path, capsys, edit, needle):
    """Exit 2 with a message naming what is supported; nothing written."""
    from atp.cli import main
    from tests.tiny import build_tiny_llava_siglip

    src = build_tiny_llava_siglip(tmp_path / "src")
    ckpt = _edited_checkpoint(src, tmp_path / "edited", **edit)
    out = tmp_path / "out"
    rc = main(["onnx", str(ckpt), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("arch_name,edit,needle", [
    ("onevision", {"vision_aspect_ratio": "anyres"}, r"vision_aspect_ratio 'anyres' is not supported for LLaVA-OneVision"),
    ("onevision", {"vision_feature_select_strategy": "default"}, "needs vision_feature_select_strategy 'full'"),
    ("next", {"vision_aspect_ratio": "anyres_max_9"}, "model_type llava_onevision, take anyres_max_N"),
])
def test_unsupported_anyres_variants_are_refused(tmp_path, capsys, arch_name, edit, needle):
    from atp.cli import main
    from tests.tiny import build_tiny_llava_next, build_tiny_llava_onevision

    build = build_tiny_llava_onevision if arch_name == "onevision" else build_tiny_llava_next
    ckpt = _edited_checkpoint(build(tmp_path / "src"), tmp_path / "edited", **edit)
    out = tmp_path / "out"
    rc = main(["onnx", str(ckpt), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(needle, err) and "Traceback" not in err and not out.exists(), err


@pytest.mark.parametrize("arch_name,edit,needle", [
    ("qwen2.5-vl", {"text_config.rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 2, 2]}},
     r"mrope_section \[2, 2, 2\] must split head_dim / 2 = 8"),
    ("qwen2.5-vl", {"processor.image_processor_type": "CLIPImageProcessor", "processor.merge_size": None,
                    "processor.temporal_patch_size": None}, "a Qwen2-VL image processor is needed"),
    ("qwen3-vl", {"processor.image_processor_type": "SiglipImageProcessor", "processor.merge_size": None},
     "a Qwen2-VL image processor is needed"),
    ("qwen2.5-vl", {"model_type": "qwen3_vl_moe"}, "atp exports: .*qwen2_5_vl"),
])
def test_unsupported_qwen_variants_are_refused(tmp_path, capsys, arch_name, edit, needle):
    """A bad M-RoPE split, an image processor that makes no Qwen2-VL patches (no merge / temporal sizes, so no
    image_grid_thw) or another Qwen-VL generation: exit 2 with the reason, nothing written."""
    import json
    import shutil

    from atp.cli import main

    src = ARCHS[arch_name][0](tmp_path / "src")
    ckpt = tmp_path / "edited"
    shutil.copytree(src, ckpt)
    for key, value in edit.items():
        part, _, field = key.rpartition(".")
        name = "processor_config.json" if part == "processor" else "config.json"
        cfg = json.loads((ckpt / name).read_text())
        node = cfg["image_processor"] if part == "processor" else cfg.get(part, cfg) if part else cfg
        if value is None:
            node.pop(field)
        else:
            node[field] = value
        (ckpt / name).write_text(json.dumps(cfg))
    out = tmp_path / "out"
    rc = main(["onnx", str(ckpt), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(needle, err) and "Traceback" not in err and not out.exists(), err


@pytest.mark.parametrize("arch_name", ["llava-onevision", "smolvlm", "qwen2.5-vl", "qwen3-vl"])
def test_exports_without_torchvision(tmp_path, monkeypatch, arch_name):
    """LLaVA-OneVision's and SmolVLM's processors bundle a video processor that needs torchvision (absent from the
    main job's install): the adapter falls back to tokenizer + image processor + chat template, with the same prompt
    template, image token, preprocessing spec and token layout (SmolVLM's marker runs)."""
    import transformers

    from atp.export.adapters import adapter_for_checkpoint

    ckpt = ARCHS[arch_name][0](tmp_path / "ckpt")
    cls = adapter_for_checkpoint(ckpt)
    full = cls.from_checkpoint(ckpt)

    def no_torchvision(*a, **k):
        raise ImportError("LlavaOnevisionVideoProcessor requires the Torchvision library")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", no_torchvision)
    part = cls.from_checkpoint(ckpt)
    assert type(part.processor).__name__ == "ImageTextProcessor"
    assert part.prompt_template() == full.prompt_template() and full.image_token in part.prompt_template()
    assert part.preprocessing() == full.preprocessing() and part.image_token == full.image_token
    assert part.token_layout() == full.token_layout()


@pytest.mark.parametrize("arch_name", ["llava-onevision", "idefics3", "qwen2.5-vl", "qwen3-vl"])
def test_retention_calibration_refuses_multi_view_architectures(tmp_path, capsys, arch_name):
    """Retention calibration runs one fixed view per image so far: a multi-view architecture is refused with what to
    do instead (exit 2, no artifact)."""
    from atp.cli import main

    ckpt = ARCHS[arch_name][0](tmp_path / "ckpt")
    out = tmp_path / "calib"
    rc = main(["calibrate", str(ckpt), "--data", "easy-vqa", "--out", str(out), "--limit", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "one-view architectures so far" in err and "calibrate --bits only" in err, err
    assert not out.exists() and not (tmp_path / "calib.partial").exists()


@pytest.mark.parametrize("arch_name", ["llava-onevision", "idefics3", "qwen2.5-vl", "qwen3-vl"])
def test_every_per_token_scorer_exports_and_runs_on_multi_view_images(tmp_path, arch_name):
    """The scorers a multi-view image supports (N varies per image) export (each graph validated against PyTorch by
    the exporter) and keep exactly K of this image's N tokens on images with different N."""
    from atp.config import ExportConfig, PruningConfig, resolve_keep
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    ckpt = ARCHS[arch_name][0](tmp_path / "ckpt")
    scorers = ("atp", "idp", "divprune", "visionzip", "qat", "random")
    export_bundle(adapter_for_checkpoint(ckpt).from_checkpoint(ckpt), tmp_path / "b",
                  ExportConfig(pruning=PruningConfig(scorer="cls", extra_scorers=scorers)))
    session = Session(tmp_path / "b")
    ns = set()
    for size in SIZES:
        img = random_image(5, size)
        for name in scorers:
            vis = session.image_tokens(img, None, 0.25, "what colour is the circle", scorer=name)
            ns.add(vis["n"])
            idx = vis["kept_index"]
            assert vis["k"] == len(idx) == resolve_keep(vis["n"], None, 0.25), (name, size)
            assert (np.diff(idx) > 0).all() and idx.min() >= 0 and idx.max() < vis["n"], (name, size)
    assert len(ns) >= 2


@pytest.mark.parametrize("name", ["qwen2.5-vl", "qwen3-vl"])
def test_qwen_fused_decoder_equals_transformers_and_the_traced_graph(tmp_path, name):
    """M-RoPE in the fused decoder graph (rotary outside GroupQueryAttention, from [3, B, S] positions; Qwen3-VL: the
    interleaved axes, q / k norms and DeepStack adds): fp32 greedy ids equal transformers generate; int4 fused equals
    int4 traced (the same MatMulNBits weights); pruned runs too."""
    from atp.config import ExportConfig, QuantConfig
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    ckpt = ARCHS[name][0](tmp_path / "ckpt")
    sessions = {}
    for weights, graph in (("fp32", "fused"), ("int4", "fused"), ("int4", "traced")):
        out = tmp_path / f"{weights}-{graph}"
        export_bundle(adapter_for_checkpoint(ckpt).from_checkpoint(ckpt), out,
                      ExportConfig(quantization=QuantConfig(weights=weights, decoder_graph=graph)))
        sessions[weights, graph] = Session(out)
    model, processor = _hf_model(ckpt), _pil_processor(ckpt)
    for size in SIZES[1:]:
        img = random_image(2, size)
        inputs = processor(images=img, text=_chat(processor, PROMPTS[1]), return_tensors="pt")
        with torch.no_grad():
            ref = model.generate(**inputs, max_new_tokens=10, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
        assert sessions["fp32", "fused"].generate(img, PROMPTS[1], max_new_tokens=10).token_ids == ref, size
        for keep in (None, 3):
            a = sessions["int4", "fused"].generate(img, PROMPTS[1], keep=keep, max_new_tokens=10, ignore_eos=True)
            b = sessions["int4", "traced"].generate(img, PROMPTS[1], keep=keep, max_new_tokens=10, ignore_eos=True)
            assert a.token_ids == b.token_ids and a.kept_index == b.kept_index, (size, keep)


def test_qwen3_deepstack_levels_equal_transformers(tmp_path):
    """Qwen3-VL DeepStack: the vision graph's deepstack_embeds are transformers' own DeepStack features of the kept
    tokens (atol 1e-5), at several sizes and K; keep = N and pruned answers are covered by the contract rows."""
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    ckpt = _qwen3_vl(tmp_path / "ckpt")
    export_bundle(adapter_for_checkpoint(ckpt).from_checkpoint(ckpt), tmp_path / "b")
    session, model, processor = Session(tmp_path / "b"), _hf_model(ckpt), _pil_processor(ckpt)
    assert session.manifest["graphs"]["vision"]["deepstack"]["levels"] == 2
    for size in SIZES:
        img = random_image(4, size)
        for k in (None, 3):
            vis = session.image_tokens(img, k, None, "hi")
            want = _kept_deepstack(model, processor, img, vis["kept_index"])
            assert vis["deepstack"].shape == (2, vis["k"], 64)
            np.testing.assert_allclose(vis["deepstack"], torch.stack(want).numpy(), atol=VISION_ATOL, rtol=0)


@pytest.mark.parametrize("name", ["qwen2.5-vl", "qwen3-vl"])
def test_qwen_cpu_preset_quantizes_the_tower(tmp_path, capsys, name):
    """--preset cpu on the Qwen-VL towers (their linears run on [P, D], which torch.onnx writes as Gemm): every tower
    and merger linear becomes W8A8 but the last block's qkv, which the gate's score path shares; the exporter
    validates the graph against its fake-quant reference, and a pruned run keeps K of this image's N."""
    import json

    from atp.cli import main
    from atp.runtime import Session

    ckpt = ARCHS[name][0](tmp_path / "ckpt")
    assert main(["onnx", str(ckpt), "--out", str(tmp_path / "b"), "--preset", "cpu"]) == 0
    w = json.loads((tmp_path / "b" / "manifest.json").read_text())["graphs"]["vision"]["weights"]
    last = {"qwen2.5-vl": "layers.3.attn.qkv", "qwen3-vl": "layers.2.attn.qkv"}[name]
    assert w["kept_fp32"] == {last: "shared with the gate's score path"} and w["quantized_layers"] >= 10, w
    vis = Session(tmp_path / "b").image_tokens(random_image(1, SIZES[2]), None, 0.25, "hi")
    assert vis["k"] == len(vis["kept_index"]) == max(1, -(-vis["n"] // 4))


@pytest.mark.parametrize("name", ["qwen2.5-vl", "qwen3-vl"])
def test_qwen_mixed_precision_and_int8_kv(tmp_path, name):
    """calibrate --bits, then a mixed int4 / int8 decoder with an int8 KV cache (traced graph, M-RoPE; Qwen3-VL with
    DeepStack): ONNX Runtime matches the PyTorch fake-quant reference with the same quantized cache. The cache every
    layer writes (keys carry the M-RoPE rotation; later layers see the DeepStack adds) within 1e-4; the logits within
    5% of their scale, because MatMulNBits at accuracy level 4 (the shipped fast path) computes with int8 activations
    and the reference does not (about 1-2% on these tiny random models). A pruned run keeps K of this image's N."""
    import json

    from atp.cli import main
    from atp.runtime import Session

    ckpt = ARCHS[name][0](tmp_path / "ckpt")
    assert main(["calibrate", str(ckpt), "--bits", "5", "--out", str(tmp_path / "calib")]) == 0
    assert main(["onnx", str(ckpt), "--out", str(tmp_path / "b"), "--weights", "mixed", "--calibration",
                 str(tmp_path / "calib"), "--kv-cache", "int8"]) == 0
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    rep = m["validation"]["decoder"]
    assert m["precision"]["kv"] == "int8" and m["precision"]["weights"].startswith("mixed-")
    assert rep["present_max_abs_diff"] <= 1e-4 and rep["logits_max_abs_diff"] <= 0.05 * rep["logits_scale"], rep
    out = Session(tmp_path / "b").generate(random_image(3, SIZES[1]), PROMPTS[0], keep=4, max_new_tokens=6, ignore_eos=True)
    assert out.kept == 4 and len(out.token_ids) == 6
