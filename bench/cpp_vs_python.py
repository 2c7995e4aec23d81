"""C++ runtime (runtime/cpp, atp_chat) vs the Python runtime on the same bundle and ONNX Runtime library.

Usage:
    python bench/cpp_vs_python.py                                    # build/demo (exported if missing)
    python bench/cpp_vs_python.py --bundle build/demo-smollm2 --repeats 5 --tokens 32

Both sides run the same request (same image, prompt, K, ``--tokens`` tokens with EOS ignored) on the same
libonnxruntime with the same thread count; the C++ side is one atp_chat process doing ``repeats + 1`` requests
(the first is a warm-up), the Python side one Session doing the same, the two interleaved ``--rounds`` times.
Medians of time to first token and decode ms/token, and their C++/Python ratios, are printed and written to
``bench/results/cpp_vs_python_<bundle>.md``. Builds an optimised (Release, unsanitized) atp_chat into
build/cpp/release if missing (or pass ``--atp-chat PATH``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ort_library() -> str:
    import onnxruntime

    return str(sorted((Path(onnxruntime.__file__).parent / "capi").glob("libonnxruntime.so.1*"))[0])


def cpp_runs(exe: str, args, n: int) -> list[dict]:
    cmd = [exe, args.bundle, "--image", args.image, "--prompt", args.prompt, "--keep", str(args.keep), "--json",
           "--max-new-tokens", str(args.tokens), "--ignore-eos", "--repeat", str(n + 1), "--ort-library", ort_library()]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out)["runs"][1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(ROOT / "build" / "demo"))
    ap.add_argument("--image", default=str(ROOT / "assets" / "shapes.png"))
    ap.add_argument("--prompt", default="what color is the triangle?")
    ap.add_argument("--keep", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--atp-chat", default=str(ROOT / "build" / "cpp" / "release" / "examples" / "atp_chat" / "atp_chat"))
    args = ap.parse_args()

    if not Path(args.atp_chat).is_file():
        build = ROOT / "build" / "cpp" / "release"
        subprocess.run(["cmake", "-S", ROOT / "runtime" / "cpp", "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                        f"-DATP_DEPS_DIR={ROOT / 'build' / 'cpp' / 'deps'}"], check=True)
        subprocess.run(["cmake", "--build", build, "-j2", "--target", "atp_chat"], check=True)
    if not (Path(args.bundle) / "manifest.json").exists():
        name = "demo-smollm2" if "smollm2" in Path(args.bundle).name else "demo"
        subprocess.run(["atp-export", "onnx", name, "--out", args.bundle], check=True)

    from atp.runtime import Session

    sess = Session(args.bundle, threads=args.threads)
    py, cpp = [], []
    kw = dict(keep=args.keep, max_new_tokens=args.tokens, ignore_eos=True)
    sess.generate(args.image, args.prompt, **kw)  # warm-up
    for _ in range(args.rounds):
        cpp += cpp_runs(args.atp_chat, args, args.repeats)
        py += [sess.generate(args.image, args.prompt, **kw).timings for _ in range(args.repeats)]
    med = {side: {k: statistics.median(r[k] for r in runs) for k in ("ttft", "decode_per_token")}
           for side, runs in (("python", py), ("cpp", cpp))}
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}"
    lines = [
        f"# C++ vs Python runtime, {Path(args.bundle).name} (ONNX Runtime CPU)",
        "",
        f"{dt.date.today()}, {machine}; K={args.keep}, {args.tokens} tokens (EOS ignored), "
        f"{args.rounds} rounds x {args.repeats} requests per side, interleaved; medians.",
        "",
        "| | Python | C++ | C++ / Python |",
        "|---|---|---|---|",
        f"| time to first token (ms) | {med['python']['ttft']:.2f} | {med['cpp']['ttft']:.2f} | "
        f"{med['cpp']['ttft'] / med['python']['ttft']:.3f} |",
        f"| decode (ms/token) | {med['python']['decode_per_token']:.3f} | {med['cpp']['decode_per_token']:.3f} | "
        f"{med['cpp']['decode_per_token'] / med['python']['decode_per_token']:.3f} |",
        f"| decode tokens/s | {1000 / med['python']['decode_per_token']:.1f} | {1000 / med['cpp']['decode_per_token']:.1f} | "
        f"{med['python']['decode_per_token'] / med['cpp']['decode_per_token']:.3f} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results" / f"cpp_vs_python_{Path(args.bundle).name}.md"
    out.write_text(text)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
