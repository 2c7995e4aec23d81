"""Plugin kernels on the GPU: achieved memory bandwidth vs the device peak and vs the PyTorch equivalent.

Usage (on a machine with an NVIDIA GPU):
    python bench/gpu_kernels.py                       # default shapes, 50 timed runs each
    python bench/gpu_kernels.py --repeats 200 --out bench/results

Runs the exact cubins ``libatp_plugins.so`` embeds (compiled for this GPU's arch by ``atp.plugins.aot``,
launched through the driver API by ``atp.plugins.launch``) side by side in one process with

- TopKGate vs ``torch.topk`` + ``sort`` + ``gather`` (the same result);
- MixedGemm vs ``dequantize + matmul`` in fp16 (what a framework without the kernel does) and vs a
  plain fp16 ``matmul`` on pre-dequantized weights (2-4x the bytes: the bandwidth reference).

Times are CUDA-event medians; bandwidth = bytes the kernel must move / time; peak from the driver's
memory clock and bus width. Prints a Markdown table and writes ``bench/results/kernels_<gpu>.md``.
Without a GPU it says so and exits with status 1 (nothing is measured on the CPU).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import os
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the AOT compile needs Triton's real compiler

ROOT = Path(__file__).resolve().parent.parent


def peak_bandwidth() -> float | None:
    """Device peak DRAM bandwidth in bytes/s (2 x memory clock x bus width), or None if the driver does not say."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
        dev, clock, bus = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        cuda.cuInit(0)
        cuda.cuDeviceGet(ctypes.byref(dev), 0)
        cuda.cuDeviceGetAttribute(ctypes.byref(clock), 36, dev)  # MEMORY_CLOCK_RATE, kHz
        cuda.cuDeviceGetAttribute(ctypes.byref(bus), 37, dev)  # GLOBAL_MEMORY_BUS_WIDTH, bits
        return 2.0 * clock.value * 1e3 * bus.value / 8 if clock.value and bus.value else None
    except OSError:
        return None


def timed(torch, fn, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` CUDA-event-timed calls (after 5 warm-ups)."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return times[len(times) // 2]


def bench_gate(torch, lau, launch, rows: list, repeats: int) -> None:
    for b, n, d, k in ((1, 576, 1024, 144), (1, 2304, 1024, 576), (4, 4096, 1152, 1024)):
        rows.append(_gate_case(torch, lau, launch, b, n, d, k, repeats))


def _gate_case(torch, lau, launch, b, n, d, k, repeats):
    s = torch.randn(b, n, device="cuda")
    t = torch.randn(b, n, d, device="cuda", dtype=torch.float16)

    def ours():
        return launch.topk_gate(lau, s, t, k)

    def ref():
        idx = torch.topk(s, k, dim=1).indices.sort(dim=1).values
        return torch.gather(t, 1, idx[:, :, None].expand(-1, -1, d))

    assert torch.equal(ours()[0], ref())
    nbytes = b * n * 4 + 2 * b * k * d * 2 + b * k * 4  # scores in, kept rows in and out, index out
    return ("TopKGate", f"B={b} N={n} D={d} K={k}", nbytes, timed(torch, ours, repeats), timed(torch, ref, repeats),
            "topk+sort+gather")


def bench_gemm(torch, lau, launch, rows: list, repeats: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for m, kin, nout, frac8, g in ((1, 4096, 4096, 0.125, 128), (8, 4096, 11008, 0.125, 128), (512, 4096, 4096, 0.125, 128),
                                   (1, 576, 1536, 0.125, 64)):
        rows.extend(_gemm_case(torch, lau, launch, rng, m, kin, nout, frac8, g, repeats))


def _gemm_case(torch, lau, launch, rng, m, kin, nout, frac8, g, repeats):
    import numpy as np

    from atp.plugins.mixed_gemm import reference as R

    n8 = int(nout * frac8)
    lay = R.quantize_mixed(rng.standard_normal((nout, kin)).astype(np.float32), n8, g)
    dev = {k: (torch.from_numpy(v.view(np.int8) if v.dtype == np.uint8 else v).cuda() if isinstance(v, np.ndarray) else v)
           for k, v in lay.items()}
    x = torch.randn(m, kin, device="cuda", dtype=torch.float16)
    w16 = torch.from_numpy(R.dequantize(lay)).cuda().half()
    q4 = torch.from_numpy(R.unpack_int4(lay["w4"]).astype(np.int8)).cuda()
    s4 = dev["s4"]

    def ours():
        return launch.mixed_gemm(lau, x, dev)

    def deq_matmul():  # what a framework without the kernel does per call
        w4 = ((q4.view(nout - n8, kin // g, g).half() - 8) * s4[:, :, None].half()).view(nout - n8, kin)
        w8 = dev["w8"].half() * dev["s8"][:, None].half()
        return x @ torch.cat([w8, w4]).T

    def fp16_matmul():
        return x @ w16.T

    nbytes = n8 * kin + (nout - n8) * kin // 2 + 4 * (n8 + lay["s4"].size) + m * kin * 2 + m * nout * 2
    shape = f"M={m} Kin={kin} Nout={nout} int8 {frac8:.1%} g={g}"
    t_ours = timed(torch, ours, repeats)
    return [("MixedGemm", shape, nbytes, t_ours, timed(torch, deq_matmul, repeats), "dequantize+matmul fp16"),
            ("MixedGemm", shape, nbytes, t_ours, timed(torch, fp16_matmul, repeats), "matmul fp16 (pre-dequantized)")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU: bench/gpu_kernels.py measures GPU kernels only; nothing measured", file=sys.stderr)
        return 1
    from atp.plugins import launch

    lau = launch.Launcher()
    name = torch.cuda.get_device_name()
    peak = peak_bandwidth()
    rows: list = []
    bench_gate(torch, lau, launch, rows, args.repeats)
    bench_gemm(torch, lau, launch, rows, args.repeats)
    lines = [f"# Plugin kernels on {name} (sm_{lau.compute_capability()})", "",
             f"{dt.date.today()}, `python bench/gpu_kernels.py --repeats {args.repeats}`; CUDA-event medians; peak DRAM bandwidth "
             + (f"{peak / 1e9:.0f} GB/s" if peak else "unknown"), "",
             "| kernel | shape | ours (us) | GB/s | % of peak | PyTorch equivalent | theirs (us) | speed-up |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for kernel, shape, nbytes, ours, theirs, what in rows:
        bw = nbytes / ours
        pct = f"{100 * bw / peak:.0f}%" if peak else "-"
        lines.append(f"| {kernel} | {shape} | {ours * 1e6:.1f} | {bw / 1e9:.0f} | {pct} | {what} | {theirs * 1e6:.1f} | "
                     f"{theirs / ours:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    (args.out / f"kernels_{slug}.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
