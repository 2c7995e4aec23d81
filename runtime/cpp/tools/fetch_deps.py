#!/usr/bin/env python3
"""Fetch the C++ runtime's build-time dependencies into a cache directory (never into the repo).

What it fetches (each into DEST/<name>/, with a DEST/<name>/.ok stamp when complete):
- ``ort``:  ONNX Runtime C/C++ headers, Debian trixie ``libonnxruntime-dev=1.21.0+dfsg-1`` (API 21).
- ``json``: nlohmann/json headers, Debian trixie ``nlohmann-json3-dev=3.11.3-2.1``.
- ``stb``:  stb_image.h, Debian trixie ``libstb-dev=0.0~git20241109.5c20573+ds-1``.
- ``trt``:  TensorRT 10.14 headers from the PyPI wheel ``kernel-lens==2.0.1`` and the TensorRT 10.15 lean
            runtime library from ``tensorrt-lean-cu13-libs==10.15.1.29``.

Debian packages are fetched with a private apt state dir (nothing under /etc/apt or /var/lib/apt is
touched). Prints one line per dependency: ``name OK path`` or ``name FAILED reason``; exit code 0 even
when some fail (CMake decides what is required).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEBS = {
    "ort": "libonnxruntime-dev=1.21.0+dfsg-1",
    "json": "nlohmann-json3-dev=3.11.3-2.1",
    "stb": "libstb-dev=0.0~git20241109.5c20573+ds-1",
}
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR = "http://deb.debian.org/debian"


def _mirror() -> str:
    """The Debian mirror this machine is configured with (fallback: deb.debian.org)."""
    for f in ["/etc/apt/sources.list", *glob.glob("/etc/apt/sources.list.d/*.sources"), *glob.glob("/etc/apt/sources.list.d/*.list")]:
        try:
            text = Path(f).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("URIs:") and "/debian" in line and "security" not in line:
                return line.split()[1]
            if line.startswith("deb ") and "/debian" in line and "security" not in line:
                return next(t for t in line.split()[1:] if t.startswith("http"))
    return MIRROR


def fetch_debs(dest: Path, names: list[str]) -> dict[str, str]:
    state = dest / "_apt"
    for d in ("lists/partial", "cache/archives/partial"):
        (state / d).mkdir(parents=True, exist_ok=True)
    signed = f"[signed-by={KEYRING}] " if os.path.exists(KEYRING) else "[trusted=yes] "
    (state / "sources.list").write_text(f"deb {signed}{_mirror()} trixie main\n")
    opts = [f"-o=Dir::Etc::SourceList={state / 'sources.list'}", "-o=Dir::Etc::SourceParts=/nonexistent",
            f"-o=Dir::State::Lists={state / 'lists'}", f"-o=Dir::Cache={state / 'cache'}", "-o=Debug::NoLocking=1",
            *(["-o=APT::Sandbox::User=root"] if os.geteuid() == 0 else [])]
    out: dict[str, str] = {}
    try:
        subprocess.run(["apt-get", *opts, "update"], check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return {n: f"apt-get update failed: {exc}" for n in names}
    for name in names:
        target = dest / name
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            try:
                subprocess.run(["apt-get", *opts, "download", DEBS[name]], check=True, capture_output=True, cwd=tmp, timeout=300)
                deb = next(Path(tmp).glob("*.deb"))
                root = Path(tmp) / "root"
                subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, capture_output=True)
            except (OSError, StopIteration, subprocess.SubprocessError) as exc:
                out[name] = f"apt-get download {DEBS[name]} failed: {exc}"
                continue
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            shutil.move(str(root / "usr" / "include"), str(target / "include"))
            (target / ".ok").write_text(DEBS[name] + "\n")
    return out


def fetch_trt(dest: Path) -> str | None:
    target = dest / "trt"
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        try:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                            "kernel-lens==2.0.1", "tensorrt-lean-cu13-libs==10.15.1.29"],
                           check=True, capture_output=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as exc:
            err = getattr(exc, "stderr", b"") or b""
            return f"pip download failed: {exc} {err.decode(errors='replace')[-300:]}"
        shutil.rmtree(target, ignore_errors=True)
        (target / "lib").mkdir(parents=True)
        for whl in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(whl) as z:
                for info in z.infolist():
                    n = info.filename
                    if "kernel_lens/include/tensorrt/" in n and not n.endswith("/"):
                        rel = n.split("kernel_lens/include/tensorrt/", 1)[1]
                        (target / "include" / rel).parent.mkdir(parents=True, exist_ok=True)
                        (target / "include" / rel).write_bytes(z.read(info))
                    elif ".so" in Path(n).name and "libnvinfer" in Path(n).name:
                        (target / "lib" / Path(n).name).write_bytes(z.read(info))
        if not (target / "include" / "NvInfer.h").is_file():
            return "kernel-lens wheel holds no kernel_lens/include/tensorrt/NvInfer.h"
        libs = sorted((target / "lib").glob("libnvinfer_lean.so*"))
        if not libs:
            return "tensorrt-lean-cu13-libs wheel holds no libnvinfer_lean.so*"
        link = target / "lib" / "libnvinfer_lean.so"
        if not link.exists():
            link.symlink_to(libs[0].name)
        (target / ".ok").write_text("kernel-lens==2.0.1 tensorrt-lean-cu13-libs==10.15.1.29\n")
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", required=True, type=Path)
    ap.add_argument("--what", default="ort,json,stb", help="comma list of: ort,json,stb,trt")
    args = ap.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    want = [w for w in args.what.split(",") if w]
    errors: dict[str, str] = {}
    debs = [w for w in want if w in DEBS and not (args.dest / w / ".ok").exists()]
    if debs:
        errors.update(fetch_debs(args.dest, debs))
    if "trt" in want and not (args.dest / "trt" / ".ok").exists():
        err = fetch_trt(args.dest)
        if err:
            errors["trt"] = err
    for w in want:
        print(f"{w} FAILED {errors[w]}" if w in errors else f"{w} OK {args.dest / w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
