"""Int8 vision graphs on ONNX Runtime CPU: speed of fp32 vs ``int8`` (W8A8 dynamic: DynamicQuantizeMatMul) vs
``int8-blocks`` (MatMulNBits bits=8), one live session at a time, and how often the gate keeps the fp32 graph's tokens.

Speed: the 577-token LLaVA-1.5-shaped tower (``demo-smollm2-576``: seeded CLIP ViT 384 x 6 layers at 336 px, the
shapes are what matters for speed). Agreement: the trained demo VLM (real weights) on easy-VQA / multi-object images
and on scikit-image's sample photos (resized by the bundle's own preprocessing): the share of the fp32 graph's K = N/4
kept tokens the int8 graph also keeps, per image.

Usage::

    python bench/vision_int8.py --repeats 7 --out bench/results/vision_int8.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from atp.runtime.benchmark import emit, machine_line

ROOT = Path(__file__).resolve().parents[1]
FORMS = ("fp32", "int8", "int8-blocks")


def export_forms(adapter, out: Path) -> dict[str, Path]:
    """The default scorer's vision graph in each form (fp32, then int8-rewritten copies)."""
    import shutil

    from atp.config import ExportConfig
    from atp.export.exporter import _export_vision
    from atp.export.quantize_vision import rewrite_vision_file
    from atp.registry import SCORERS

    scorer = SCORERS.get("cls")().eval()
    out.mkdir(parents=True, exist_ok=True)
    _export_vision(adapter, scorer, out, ExportConfig(), file="fp32.onnx")
    paths = {"fp32": out / "fp32.onnx"}
    for form in FORMS[1:]:
        shutil.copy(out / "fp32.onnx", out / f"{form}.onnx")
        rewrite_vision_file(out / f"{form}.onnx", adapter.vision_module(scorer), form)
        paths[form] = out / f"{form}.onnx"
    return paths


def session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def time_forms(paths: dict, size: int, n: int, repeats: int, rounds: int, threads: int) -> dict[str, list[float]]:
    px = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    feeds = {"pixel_values": px, "keep": np.array(max(1, n // 4), np.int64)}
    out: dict[str, list[float]] = {f: [] for f in paths}
    for _ in range(rounds):
        for form, path in paths.items():  # one live session at a time
            s = session(path, threads)
            s.run(None, feeds)
            ts = []
            for _ in range(repeats):
                t = time.perf_counter()
                s.run(None, feeds)
                ts.append(time.perf_counter() - t)
            out[form].append(statistics.median(ts) * 1000)
            del s
    return out


def images(limit: int):
    """(name, PIL image): easy-VQA and multi-object test images, then scikit-image's sample photos (if installed)."""
    from PIL import Image

    from atp.datasets import load

    for data in ("easy-vqa", "multi-object"):
        seen = set()
        for q in load(data, split="test"):
            if q.image_id in seen:
                continue
            seen.add(q.image_id)
            yield data, q.image
            if len(seen) >= limit:
                break
    try:
        import skimage.data as sk
    except ImportError:
        print("scikit-image not installed: no photos (pip install scikit-image)", file=sys.stderr)
        return
    for name in ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry", "motorcycle_left"):
        if hasattr(sk, name):
            arr = getattr(sk, name)()
            arr = arr[..., :3] if arr.ndim == 3 else np.stack([arr] * 3, -1)
            yield "photos", Image.fromarray(arr.astype(np.uint8))


def agreement(paths: dict, pre: dict, n: int, limit: int, threads: int) -> dict[str, dict[str, list[float]]]:
    from atp.runtime.preprocess import preprocess

    k = max(1, n // 4)
    sessions = {f: session(p, threads) for f, p in paths.items()}
    out: dict[str, dict[str, list[float]]] = {}
    for source, img in images(limit):
        feeds = {"pixel_values": preprocess(img, pre), "keep": np.array(k, np.int64)}
        ref = set(sessions["fp32"].run(None, feeds)[1][0].tolist())
        for form in FORMS[1:]:
            got = set(sessions[form].run(None, feeds)[1][0].tolist())
            out.setdefault(form, {}).setdefault(source, []).append(len(got & ref) / k)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=100, help="images per VQA set for the agreement columns")
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    logging.basicConfig(level=logging.WARNING)
    from atp.export.demo import build_demo_adapter, trained_demo_adapter

    lines = [f"# int8 vision graphs, ONNX Runtime CPU, {args.threads} threads ({machine_line()})", ""]
    with tempfile.TemporaryDirectory() as tmp:
        big = build_demo_adapter(image_size=336)
        paths = export_forms(big, Path(tmp) / "576")
        t = time_forms(paths, 336, big.num_visual_tokens, args.repeats, args.rounds, args.threads)
        base = statistics.median(t["fp32"])
        lines += ["| vision graph, 577 tokens (demo-smollm2-576 shapes) | median ms per round | x fp32 |", "|---|---|---:|"]
        for form, ms in t.items():
            lines.append(f"| {form} | {' / '.join(f'{x:.1f}' for x in ms)} | {base / statistics.median(ms):.2f} |")
        demo = trained_demo_adapter()
        paths = export_forms(demo, Path(tmp) / "demo")
        agree = agreement(paths, demo.preprocessing(), demo.num_visual_tokens, args.images, args.threads)
    lines += ["", "| kept-token agreement with fp32 at K = N/4 (trained demo VLM, N = 64) | "
              + " | ".join(sorted(next(iter(agree.values())))) + " |",
              "|---|" + "---:|" * len(next(iter(agree.values())))]
    for form, by_source in agree.items():
        cells = [f"{np.mean(v):.3f} (min {np.min(v):.2f}, {len(v)} images)" for _, v in sorted(by_source.items())]
        lines.append(f"| {form} | " + " | ".join(cells) + " |")
    lines += ["", f"command: `python bench/vision_int8.py --repeats {args.repeats} --rounds {args.rounds} "
              f"--images {args.images}`; one live ORT session at a time while timing."]
    return emit(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
