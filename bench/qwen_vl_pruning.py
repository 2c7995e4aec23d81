"""Qwen2.5-VL with the in-graph gate: vision, prefill and time to first token vs keep ratio, as ratios in one run.

Usage:
    python bench/qwen_vl_pruning.py                         # builds + exports build/qwen2_5_vl-shape once
    python bench/qwen_vl_pruning.py --repeats 5 --preset cpu --side 896

The model is Qwen2.5-VL-3B-shaped at real widths with random weights (timing only; no accuracy claim): a vision tower
of width 1280 (16 heads, MLP 3420, patch 14, windows of 112 px, 2 x 2 merger) with ``--vision-depth`` blocks (full
attention in every fourth, the last included), and a language model of width 2048 (16 heads, 2 KV heads, MLP 11008)
with ``--lm-layers`` layers and M-RoPE; the tokenizer is the tests' small one. A ``--side`` px square image
(``assets/shapes.png``, resized; content is irrelevant with random weights) is smart-resized to 896 x 896: 32 x 32 =
1,024 visual tokens. All keep ratios run
in one process, interleaved (``atp.runtime.benchmark``). Writes
``bench/results/qwen_vl_pruning_v<vision depth>-l<LM layers>_<precision>.md``. Qwen2.5-VL-3B itself has 32 vision
blocks and 36 LM layers: ``--vision-depth 8 --lm-layers 9`` keeps that ratio at a quarter of the depth.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = "What is in this picture? Describe it."


def build_checkpoint(out: Path, vision_depth: int, lm_layers: int) -> Path:
    """Save a seeded random Qwen2.5-VL-3B-shaped checkpoint (real widths, fewer blocks) with its processor to ``out``."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig, Qwen2_5_VLVisionConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from tests.tiny import QWEN_VL_TEMPLATE, save_qwen, qwen_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tok, ids = qwen_tokenizer(out)
    vc = Qwen2_5_VLVisionConfig(depth=vision_depth, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                                window_size=112, out_hidden_size=2048,
                                fullatt_block_indexes=list(range(3, vision_depth, 4)) or [vision_depth - 1])
    if vision_depth - 1 not in vc.fullatt_block_indexes:
        vc.fullatt_block_indexes = [*vc.fullatt_block_indexes, vision_depth - 1]
    tc = Qwen2_5_VLTextConfig(hidden_size=2048, intermediate_size=11008, num_hidden_layers=lm_layers, num_attention_heads=16,
                              num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=32768,
                              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}  # the real processor's bounds
    return save_qwen(out, "Qwen2_5_VL", vc, tc, tok, ids, 0, Qwen2VLImageProcessorPil(size=size),
                      Qwen2VLVideoProcessor(size=size), QWEN_VL_TEMPLATE)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "build" / "qwen2_5_vl-shape"), help="checkpoint + bundles go here")
    ap.add_argument("--vision-depth", type=int, default=8)
    ap.add_argument("--lm-layers", type=int, default=4)
    ap.add_argument("--side", type=int, default=896, help="square image side in px before the smart resize")
    ap.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--preset", default=None, help="export preset (cpu: int4 decoder + W8A8 vision); default fp32")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    from PIL import Image

    from atp.runtime import Session
    from atp.runtime.benchmark import benchmark, machine_line

    work = Path(args.work)
    ckpt = work / f"ckpt-v{args.vision_depth}-l{args.lm_layers}"
    if not (ckpt / "config.json").exists():
        print(f"building {ckpt} ...", file=sys.stderr)
        build_checkpoint(ckpt, args.vision_depth, args.lm_layers)
    label = args.preset or "fp32"
    bundle = work / f"bundle-v{args.vision_depth}-l{args.lm_layers}-{label}"
    if not (bundle / "manifest.json").exists():
        cmd = [sys.executable, "-m", "atp.cli", "onnx", str(ckpt), "--out", str(bundle), "--overwrite"]
        subprocess.run(cmd + (["--preset", args.preset] if args.preset else []), check=True)
    image = Image.open(ROOT / "assets" / "shapes.png").convert("RGB").resize((args.side, args.side), Image.Resampling.BICUBIC)
    session = Session(bundle, threads=args.threads)
    rep = benchmark(session, image, PROMPT, args.ratios, repeats=args.repeats, decode_tokens=4)
    lines = [
        f"# Qwen2.5-VL-shaped model: vision, prefill and TTFT vs keep ratio ({label}, ONNX Runtime CPU)",
        "",
        f"- machine: {machine_line()}",
        f"- model: Qwen2.5-VL-3B widths, random weights (timing only): vision 1280 wide, {args.vision_depth} blocks "
        f"(full attention in every fourth and the last), LM 2048 wide, {args.lm_layers} layers, M-RoPE; the tests' "
        "small tokenizer (so the LM head is small)",
        f"- image: {args.side} x {args.side} px -> N = {rep['rows'][0]['n']} visual tokens; {args.repeats} repeats after a "
        "warm-up, ratios interleaved; median (min..max); `x` = speed-up against keep 1 in the same run",
        f"- date: {dt.date.today().isoformat()}; command: `python bench/qwen_vl_pruning.py --repeats {args.repeats} "
        f"--vision-depth {args.vision_depth} --lm-layers {args.lm_layers}{' --preset ' + args.preset if args.preset else ''}`",
        "",
        "| keep ratio | K | prompt tokens | vision ms | prefill ms | prefill x | TTFT ms | TTFT x |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rep["rows"]:
        v = r["vs_dense"]
        lines.append(f"| {r['keep_ratio']:g} | {r['k']} | {r['prompt_tokens']} | {r['vision_ms']:.0f} | {r['prefill_ms']:.0f} "
                     f"({r['prefill_spread_ms'][0]:.0f}..{r['prefill_spread_ms'][1]:.0f}) | {1 / v['prefill']:.2f} | "
                     f"{r['ttft_ms']:.0f} ({r['ttft_spread_ms'][0]:.0f}..{r['ttft_spread_ms'][1]:.0f}) | {1 / v['ttft']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = ROOT / "bench" / "results" / f"qwen_vl_pruning_v{args.vision_depth}-l{args.lm_layers}_{label}.md"
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
