"""Run the plugins' AOT cubins on this GPU against reference.py; prints one JSON line of results.

Invoked by tests/gpu/test_plugin_cubins.py in a subprocess without TRITON_INTERPRET (the AOT compile needs
Triton's real compiler). ``python tests/gpu/cubin_check.py``
"""

from __future__ import annotations

import json

import numpy as np
import torch

from atp.plugins import launch
from atp.plugins.mixed_gemm import reference as gemm_ref
from atp.plugins.topk_gate import reference as gate_ref

GATE_CASES = [(1, 16, 8, 4), (2, 257, 33, 128), (2, 576, 64, 144), (1, 4096, 7, 1000), (3, 1024, 1024, 1), (2, 4096, 16, 4096)]
GEMM_CASES = [(1, 256, 192, 0.125, 32, False), (8, 512, 256, 0.5, 128, True), (9, 256, 96, 0.25, 64, False),
              (128, 512, 256, 0.125, 128, True), (512, 1024, 512, 0.0, 128, False), (64, 256, 128, 1.0, 32, False)]


def main() -> None:
    lau = launch.Launcher()
    rng = np.random.default_rng(0)
    out = {"sm": lau.compute_capability(), "gate": [], "gemm": []}
    for b, n, d, k in GATE_CASES:
        for dt in (np.float32, np.float16):
            s = rng.integers(0, 50, (b, n)).astype(dt)  # many ties
            t = rng.standard_normal((b, n, d)).astype(dt)
            kept, idx, size = launch.topk_gate(lau, torch.from_numpy(s).cuda(), torch.from_numpy(t).cuda(), k)
            ref_kept, ref_idx = gate_ref.topk_gate(s.astype(np.float32), t, k)
            out["gate"].append({"case": [b, n, d, k, np.dtype(dt).name], "size": int(size.item()),
                                "index_equal": bool((idx.cpu().numpy() == ref_idx).all()),
                                "tokens_equal": bool((kept.cpu().numpy() == ref_kept).all())})
    for m, kin, nout, frac8, group, zp in GEMM_CASES:
        w = rng.standard_normal((nout, kin)).astype(np.float32)
        layout = gemm_ref.quantize_mixed(w, int(round(nout * frac8)), group, zero_points=zp)
        x = rng.standard_normal((m, kin)).astype(np.float32)
        dev = {k: (torch.from_numpy(v.view(np.int8) if v.dtype == np.uint8 else v).cuda() if isinstance(v, np.ndarray) else v)
               for k, v in layout.items()}
        y = launch.mixed_gemm(lau, torch.from_numpy(x).half().cuda(), dev).float().cpu().numpy()
        ref = gemm_ref.mixed_gemm(x, layout, "fp16" if m <= 8 else "int8")
        out["gemm"].append({"case": [m, kin, nout, frac8, group, zp], "rel_err": float(np.abs(y - ref).max() / np.abs(ref).max())})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
