"""Build ``libatp_plugins.so`` with CMake (used by the tests, ``bench/gpu_kernels.py`` and by hand).

``python -m atp.plugins.build --out build/plugins [--archs 87 86 89 90]``
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from atp.plugins import HERE, PluginError

log = logging.getLogger(__name__)


def missing_tools() -> list[str]:
    """Tools the build needs that are not on PATH (cmake, a C++ compiler)."""
    missing = [t for t in ("cmake",) if shutil.which(t) is None]
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        missing.append("a C++17 compiler (g++ or clang++)")
    return missing


def build_library(out: str | Path, archs=(87, 86, 89, 90), python: str | None = None, tensorrt_root: str | None = None,
                  jobs: int = 2, tests: bool = False) -> tuple[Path, str]:
    """Configure and build the plugin library in ``out`` (and ``out/test_plugins`` with ``tests``).

    Returns:
        (path of libatp_plugins.so, the build log).

    Raises:
        PluginError: a tool is missing, or configure/build failed (the message carries the log's tail).
    """
    out = Path(out)
    missing = missing_tools()
    if missing:
        raise PluginError(f"cannot build the plugin library: {', '.join(missing)} not found")
    cfg = ["cmake", "-S", str(HERE), "-B", str(out), f"-DATP_PYTHON={python or sys.executable}",
           f"-DATP_CUDA_ARCHS={';'.join(str(a) for a in archs)}", "-DCMAKE_BUILD_TYPE=Release"]
    if tensorrt_root:
        cfg.append(f"-DTensorRT_ROOT={tensorrt_root}")
    if tests:
        cfg.append("-DATP_BUILD_TESTS=ON")
    logs = []
    for cmd in (cfg, ["cmake", "--build", str(out), "-j", str(jobs)]):
        res = subprocess.run(cmd, capture_output=True, text=True)
        logs.append(res.stdout + res.stderr)
        if res.returncode != 0:
            raise PluginError(f"{' '.join(cmd[:2])} failed:\n{''.join(logs)[-3000:]}")
    lib = out / "libatp_plugins.so"
    if not lib.is_file():
        raise PluginError(f"the build finished without {lib}")
    return lib, "".join(logs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Build libatp_plugins.so (Triton AOT cubins + IPluginV3 plugins).")
    ap.add_argument("--out", type=Path, default=Path("build/plugins"))
    ap.add_argument("--archs", type=int, nargs="+", default=[87, 86, 89, 90])
    ap.add_argument("--tensorrt-root", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    lib, _ = build_library(args.out, args.archs, tensorrt_root=args.tensorrt_root)
    log.info("built %s", lib)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
