"""``atp-export bench``: latency, memory and analytic FLOPs per keep ratio, as ratios against dense.

All keep ratios run in one process, interleaved round-robin over the repeats so machine drift
hits them alike; medians with min..max spread are reported. The first ratio is the reference.
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from atp.bundle import kv_bytes_per_token, precision_label

log = logging.getLogger(__name__)


def machine() -> dict:
    """Where the numbers come from: CPU model, cores, OS, runtime versions."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import onnxruntime as ort

    return {"cpu": cpu, "logical_cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "onnxruntime": ort.__version__}


def machine_line() -> str:
    """One line naming the machine for a bench table: CPU model, logical cores, AVX-512 VNNI where present."""
    m = machine()
    try:
        with open("/proc/cpuinfo") as f:
            vnni = " avx512_vnni" in f.read()
    except OSError:
        vnni = False
    return f"{m['cpu']}, {m['logical_cores']} logical cores{', AVX-512 VNNI' if vnni else ''}; onnxruntime {m['onnxruntime']}"


def emit(lines: list[str], out: str | Path | None) -> int:
    """Print a bench report (markdown lines) and write it to ``out`` when given; returns 0 (the script's exit code)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        Path(out).write_text(text)
    return 0


def analytic_flops(cost: dict, model: dict, k: int, prompt_tokens: int) -> dict:
    """FLOPs (multiply-add = 2) of the vision tower, projector (K tokens) and LM prefill."""
    t, d, i = cost["vision_tokens"], cost["vision_hidden"], cost["vision_intermediate"]
    per_layer = 2 * t * (4 * d * d + 2 * d * i) + 4 * t * t * d
    vision = cost["vision_layers_used"] * per_layer + 2 * (t - 1) * 3 * cost["patch_size"] ** 2 * d
    projector = 2 * k * cost["projector_params"]
    s, h = prompt_tokens, model["num_attention_heads"] * model["head_dim"]
    prefill = 2 * s * cost["lm_linear_params"] + model["num_layers"] * 4 * s * s * h / 2 + 2 * cost["lm_head_params"]
    return {"vision": vision, "projector": projector, "prefill": prefill, "prefill_per_token": prefill / s}


def benchmark(session, image, prompt: str, keep_ratios, repeats: int = 5, decode_tokens: int = 16, scorer=None) -> dict:
    """Measure every keep ratio; returns ``{"machine", "rows": [...]}`` with ratios against the first."""
    from atp.runtime.preprocess import load_image

    m = session.manifest
    image = load_image(image)
    ids = session.prompt_ids(prompt)
    info = m["model"]
    cases = []
    for r in keep_ratios:  # K is a share of this image's N (multi-view and dynamic-resolution images have their own)
        vis = session.image_tokens(image, None, r, prompt, scorer)
        embeds, pos, extra = session.prompt_inputs(ids, vis)
        cases.append({"keep_ratio": r, "k": vis["k"], "n": vis["n"], "embeds": embeds, "positions": pos, "extra": extra, "vision": [],
                      "prefill": [], "ttft": [], "decode": []})

    def once(c):
        c["vision"].append(session.image_tokens(image, c["k"], None, prompt, scorer)["vision"] * 1e3)
        n = c["embeds"].shape[1]
        t = time.perf_counter()
        session._step(c["embeds"], np.ones((1, n), np.int64), c["positions"], {**session._empty_past(1), **c["extra"]})
        c["prefill"].append((time.perf_counter() - t) * 1e3)
        res = session.generate(image, prompt, keep=c["k"], max_new_tokens=decode_tokens, ignore_eos=True, scorer=scorer)
        c["ttft"].append(res.timings["ttft"])
        c["decode"].append(res.timings["decode_per_token"])

    for c in cases:  # warm-up
        once(c)
        for key in ("vision", "prefill", "ttft", "decode"):
            c[key].clear()
    for _ in range(repeats):
        for c in cases:
            once(c)
    rows = []
    for c in cases:
        n = c["embeds"].shape[1]
        row = {"keep_ratio": c["keep_ratio"], "k": c["k"], "n": c["n"], "prompt_tokens": n,
               "kv_bytes": kv_bytes_per_token(m) * n,
               "flops": analytic_flops(info["cost"], info, c["k"], n) if "cost" in info else None}
        for key in ("vision", "prefill", "ttft", "decode"):
            row[f"{key}_ms"] = statistics.median(c[key])
            row[f"{key}_spread_ms"] = [min(c[key]), max(c[key])]
        row["decode_tokens_per_s"] = 1e3 / row["decode_ms"] if row["decode_ms"] else None
        rows.append(row)
    base = rows[0]
    for row in rows:
        row["vs_dense"] = {key: row[f"{key}_ms"] / base[f"{key}_ms"] for key in ("vision", "prefill", "ttft", "decode")}
        if row["flops"]:
            row["vs_dense"]["prefill_flops"] = row["flops"]["prefill"] / base["flops"]["prefill"]
            total = lambda f: f["vision"] + f["projector"] + f["prefill"]  # noqa: E731
            row["vs_dense"]["ttft_flops"] = total(row["flops"]) / total(base["flops"])
    return {"machine": machine(), "backend": type(session.backend).__name__, "precision": precision_label(m),
            "repeats": repeats, "decode_tokens": decode_tokens, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "source": m["source"]["checkpoint"], "rows": rows}


def markdown(report: dict, title: str) -> str:
    mc = report["machine"]
    lines = [f"# {title}", "",
             f"- machine: {mc['cpu']}, {mc['logical_cores']} logical cores, {mc['os']}, Python {mc['python']}, onnxruntime {mc['onnxruntime']}",
             f"- model: {report['source']}; precision {report['precision']}; backend {report['backend']}",
             f"- {report['repeats']} repeats after a warm-up, keep ratios interleaved; median (min..max); "
             f"decode over {report['decode_tokens']} tokens; peak RSS of the process {report['peak_rss_mb']:.0f} MB",
             "", "| keep ratio | K | prompt | vision ms | prefill ms | TTFT ms | decode tok/s | KV MB | prefill x | TTFT x | prefill FLOPs x | TTFT FLOPs x |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def speed(v: dict, key: str) -> str:  # speed-up (or FLOP reduction) against dense
        return f"{1 / v[key]:.2f}" if key in v else "n/a"

    for r in report["rows"]:
        v = r["vs_dense"]
        lines.append(
            f"| {r['keep_ratio']:g} | {r['k']} | {r['prompt_tokens']} | {r['vision_ms']:.1f} | {r['prefill_ms']:.1f} "
            f"({r['prefill_spread_ms'][0]:.0f}..{r['prefill_spread_ms'][1]:.0f}) | {r['ttft_ms']:.1f} | "
            f"{r['decode_tokens_per_s']:.1f} | {r['kv_bytes'] / 1e6:.2f} | {speed(v, 'prefill')} | {speed(v, 'ttft')} | "
            f"{speed(v, 'prefill_flops')} | {speed(v, 'ttft_flops')} |")
    lines += ["", "`x` columns: speed-up (or FLOP reduction) against the first row, measured in the same run."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path, title: str) -> bool:
    from atp.runtime.plotting import plot_vs_keep_ratio

    rows = report["rows"]
    series = {label: [(r["keep_ratio"], r[key]) for r in rows]
              for key, label in (("prefill_ms", "prefill"), ("ttft_ms", "time to first token"), ("vision_ms", "vision"))}
    return plot_vs_keep_ratio(series, path, title, "ms (median)")


def run_bench(bundle, out, image, prompt: str, keep_ratios, repeats: int = 5, backend: str = "ort", threads=None,
              decode_tokens: int = 16, scorer=None) -> dict:
    """Benchmark a bundle; writes ``bench.json``, ``bench.md`` and ``bench.png`` into ``out``."""
    from atp.config import resolve_keep
    from atp.runtime import Session

    for r in keep_ratios:
        resolve_keep(1, keep_ratio=r)
    session = Session(bundle, backend=backend, threads=threads)
    report = benchmark(session, image, prompt, keep_ratios, repeats, decode_tokens, scorer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{Path(bundle).name}: latency vs keep ratio ({backend})"
    (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "bench.md").write_text(markdown(report, title))
    plot(report, out / "bench.png", title)
    return report
