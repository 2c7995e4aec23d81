"""atp.plugins.ort_cpu: ONNX Runtime CPU custom ops (``libatp_ort_cpu.so``).

``atp.cpu::MatMulInt4`` / ``MatMulInt8``: int4 / int8 x int8 GEMMs with the numerics of ``com.microsoft.MatMulNBits``
(bits 4 or 8, symmetric, ``accuracy_level=4``) that read MatMulNBits' own initializers, so a graph rewrite
(:func:`swap_matmulnbits`) only changes op types. It exists because MatMulNBits streams its packed weights at
about a third of fp32 MatMul's rate at decode on AVX-512 CPUs (``bench/decode_gemv.py``); see README.md here.

Build once (needs a C++17 compiler and ONNX Runtime's C/C++ headers, fetched from Debian when missing)::

    python -m atp.plugins.ort_cpu build            # into the user cache, where the runtime finds it
    python -m atp.plugins.ort_cpu info             # path, ISA path in use, version

The Python runtime (``ort`` backend) then runs quantized decoders' MatMulNBits on MatMulInt4 / MatMulInt8 on CPUs
with AVX-512 VNNI (``ATP_ORT_CPU_KERNELS=off`` disables it, ``=PATH`` names a library).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from atp.errors import AtpError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "ops.cpp"  # includes kernels.h and kernels_x86.h
LIB_NAME = "libatp_ort_cpu.so"
DOMAIN = "atp.cpu"
OP = "MatMulInt4"
OPS = {4: OP, 8: "MatMulInt8"}  # MatMulNBits bits -> our op (same inputs and attributes)
MS_DOMAIN = "com.microsoft"
# where MatMulInt4/8 beat MatMulNBits (measured); elsewhere `auto` keeps MatMulNBits. `neondot` (Arm sdot) is
# checked under qemu but not yet timed on a device: name the library in ATP_ORT_CPU_KERNELS to use it.
FAST_ISAS = ("avx512vnni",)
ENV = "ATP_ORT_CPU_KERNELS"
_FETCH_DEPS = HERE.parent.parent / "runtime" / "cpp" / "tools" / "fetch_deps.py"


class OrtCpuKernelError(AtpError):
    """The ORT CPU kernel library cannot be built or loaded."""


@dataclass(frozen=True)
class OrtCpuKernels:
    """A built ``libatp_ort_cpu.so``: where it is and which code path it runs on this CPU."""

    path: Path
    isa: str
    version: str

    @property
    def fast(self) -> bool:
        """True where MatMulInt4 is faster than MatMulNBits (AVX-512 VNNI)."""
        return self.isa in FAST_ISAS


def source_hash() -> str:
    """Hash of every source file of the library (the cache folder's name)."""
    h = hashlib.sha256()
    for f in sorted([*HERE.glob("*.cpp"), *HERE.glob("*.h")]):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def default_dir() -> Path:
    """The user cache folder for this source version: ``$XDG_CACHE_HOME/atp/ort_cpu/<hash of the source>``."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "atp" / "ort_cpu" / source_hash()


def ort_headers(deps_dir: Path) -> Path:
    """The folder holding ``onnxruntime_cxx_api.h``: ``$ATP_ORT_INCLUDE_DIR``, the system's, or Debian's
    ``libonnxruntime-dev`` fetched into ``deps_dir`` (runtime/cpp/tools/fetch_deps.py; nothing under /etc/apt)."""
    candidates = [os.environ.get("ATP_ORT_INCLUDE_DIR"), "/usr/include/onnxruntime", "/usr/local/include/onnxruntime",
                  deps_dir / "ort" / "include" / "onnxruntime"]
    for c in candidates:
        if c and (Path(c) / "onnxruntime_cxx_api.h").is_file():
            return Path(c)
    if not _FETCH_DEPS.is_file():
        raise OrtCpuKernelError("ONNX Runtime C++ headers not found; set ATP_ORT_INCLUDE_DIR to the folder holding "
                                "onnxruntime_cxx_api.h (Debian: apt install libonnxruntime-dev)")
    log.info("fetching ONNX Runtime headers (Debian libonnxruntime-dev) into %s", deps_dir)
    deps_dir.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([sys.executable, str(_FETCH_DEPS), "--dest", str(deps_dir), "--what", "ort"],
                         capture_output=True, text=True)
    inc = deps_dir / "ort" / "include" / "onnxruntime"
    if not (inc / "onnxruntime_cxx_api.h").is_file():
        raise OrtCpuKernelError(f"ONNX Runtime C++ headers not found and the fetch failed ({res.stdout.strip()} "
                                f"{res.stderr.strip()[-300:]}); set ATP_ORT_INCLUDE_DIR or apt install libonnxruntime-dev")
    return inc


def arch_flags() -> list[str]:
    """Extra compiler flags for this host: on 64-bit Arm with the dot-product extension (Jetson Orin / Xavier:
    ``asimddp`` in /proc/cpuinfo) the NEON sdot path; x86 paths need none (function target attributes)."""
    import platform

    if platform.machine() in ("aarch64", "arm64"):
        info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        if " asimddp" in info:
            return ["-march=armv8.2-a+dotprod"]
    return []


def build(out_dir: str | Path | None = None, cxx: str | None = None, deps_dir: str | Path | None = None) -> Path:
    """Compile ``libatp_ort_cpu.so`` into ``out_dir`` (default: :func:`default_dir`); returns its path.

    One translation unit, no link-time dependency on ONNX Runtime (the op reaches ORT through the API table ORT
    hands ``RegisterCustomOps``). The ISA paths are compiled with function target attributes and chosen at load,
    so the library is portable across x86-64 CPUs; written to a temp file and renamed.

    Raises:
        OrtCpuKernelError: no compiler, no headers, or the compiler failed (with its output's tail).
    """
    out_dir = Path(out_dir) if out_dir else default_dir()
    cxx = cxx or os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if not cxx or not shutil.which(cxx):
        raise OrtCpuKernelError("cannot build the ORT CPU kernels: no C++ compiler (c++, g++ or clang++) on PATH")
    inc = ort_headers(Path(deps_dir) if deps_dir else out_dir.parent / "deps")
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / LIB_NAME
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_lib = Path(tmp) / LIB_NAME
        cmd = [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wno-uninitialized",
               "-Wno-maybe-uninitialized", *arch_flags(), f"-I{inc}", str(SOURCE), "-o", str(tmp_lib)]
        log.info("building %s", lib)
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise OrtCpuKernelError(f"compiling {SOURCE.name} failed:\n{(res.stdout + res.stderr)[-3000:]}")
        os.replace(tmp_lib, lib)
    (out_dir / FAILED_MARKER).unlink(missing_ok=True)
    return lib


def load(path: str | Path) -> OrtCpuKernels:
    """Open a built library and ask it which ISA path it runs.

    Raises:
        OrtCpuKernelError: the file is missing, not loadable, or not this library.
    """
    path = Path(path)
    if not path.is_file():
        raise OrtCpuKernelError(f"ORT CPU kernel library {path} does not exist; build it with: "
                                f"python -m atp.plugins.ort_cpu build")
    try:
        handle = ctypes.CDLL(str(path.resolve()))
    except OSError as exc:
        raise OrtCpuKernelError(f"cannot load {path}: {exc}") from None
    if not hasattr(handle, "atp_ort_cpu_isa"):
        raise OrtCpuKernelError(f"{path} is not libatp_ort_cpu (no atp_ort_cpu_isa symbol)")
    handle.atp_ort_cpu_isa.restype = handle.atp_ort_cpu_version.restype = ctypes.c_char_p
    return OrtCpuKernels(path, handle.atp_ort_cpu_isa().decode(), handle.atp_ort_cpu_version().decode())


FAILED_MARKER = "build-failed.txt"  # in the cache folder: a first-use build failed; `build` retries


def host_is_fast() -> bool:
    """Whether this CPU runs the measured-faster path (AVX-512 VNNI), read from /proc/cpuinfo (no build needed)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return all(f in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"))


def ensure_built() -> OrtCpuKernels | None:
    """The cached library, built on first use where it would be used (AVX-512 VNNI CPUs); None elsewhere.

    The first build (~20-40 s: compiler, plus ONNX Runtime's headers fetched from Debian when missing) is logged;
    a failed one is logged once as a warning, recorded in the cache folder (later runs fall back at once and say so
    at debug level), and retried only by ``python -m atp.plugins.ort_cpu build``.
    """
    lib = default_dir() / LIB_NAME
    if lib.is_file():
        return load(lib)
    if not host_is_fast():
        log.debug("atp CPU kernels not built: this CPU has no AVX-512 VNNI (MatMulNBits is as fast here)")
        return None
    marker = default_dir() / FAILED_MARKER
    if marker.is_file():
        log.debug("atp CPU kernels not built (an earlier build failed: %s); python -m atp.plugins.ort_cpu build retries",
                  marker.read_text().strip()[:200])
        return None
    log.info("building atp's CPU kernels once (AVX-512 VNNI int4/int8 GEMMs, ~30 s) into %s", default_dir())
    try:
        built = load(build())
    except (OrtCpuKernelError, OSError) as exc:
        log.warning("atp CPU kernels could not be built; quantized decoders stay on MatMulNBits (%s)",
                    str(exc).splitlines()[0])
        try:
            default_dir().mkdir(parents=True, exist_ok=True)
            marker.write_text(str(exc)[:2000] + "\n")
        except OSError:
            pass
        return None
    log.info("built %s (ISA path %s)", built.path, built.isa)
    return built


def find(setting: str | None = None) -> OrtCpuKernels | None:
    """The library the runtime should use, per ``setting`` (default ``$ATP_ORT_CPU_KERNELS`` or ``auto``):
    ``off`` -> None; ``auto`` -> the cached build, built on first use on CPUs where it is faster
    (:func:`ensure_built`); ``cached`` -> the cached build if there is one, never building; a path -> that library
    (must load)."""
    setting = setting or os.environ.get(ENV) or "auto"
    if setting == "off":
        return None
    if setting == "auto":
        return ensure_built()
    if setting == "cached":
        lib = default_dir() / LIB_NAME
        if not lib.is_file():
            log.debug("no %s at %s (python -m atp.plugins.ort_cpu build)", LIB_NAME, lib)
            return None
        return load(lib)
    return load(setting)


# ---------------------------------------------------------------------------------------------- graph rewrite
def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _value_types(graph) -> dict[str, tuple[int, list]]:
    """name -> (element type, dims: int, str for a named dimension, None for an unknown one) of every value the
    graph types (inputs, value_info, outputs, initializers)."""
    out: dict[str, tuple[int, list]] = {}
    for vi in [*graph.input, *graph.value_info, *graph.output]:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        dims = None
        if t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
        out[vi.name] = (t.elem_type, dims)
    for init in graph.initializer:
        out[init.name] = (init.data_type, list(init.dims))
    return out


def why_not_swappable(node, types: dict | None = None) -> str | None:
    """None when MatMulInt4 / MatMulInt8 compute ``node`` identically, else the reason it stays MatMulNBits.

    The op covers: bits 4 or 8, accuracy_level 4, no zero points / g_idx / bias, block size 32 or a power of two
    >= 64 with the padded K a multiple of 64, float32 A whose last dimension (where the graph states it) is K.
    ``types`` (:func:`_value_types`) adds the A checks; without it only the attributes are checked."""
    if node.op_type != "MatMulNBits" or node.domain != MS_DOMAIN:
        return "not a com.microsoft MatMulNBits node"
    a = _attrs(node)
    k, bs, bits = a.get("K", 0), a.get("block_size", 0), a.get("bits", 4)
    if bits not in OPS:
        return f"bits = {bits} (the ops run 4 and 8)"
    if a.get("accuracy_level", 0) != 4:
        return f"accuracy_level = {a.get('accuracy_level', 0)} (the ops compute level 4's int8 activations)"
    if k < 1:
        return f"K = {k}"
    if not (bs == 32 or (bs >= 64 and bs & (bs - 1) == 0)) or (-(-k // bs) * bs) % 64:
        return f"block_size = {bs} with K = {k} (needs 32 or a power of two >= 64, padded K a multiple of 64)"
    if len([i for i in node.input if i]) != 3 or len(node.input) > 3:
        return "zero points, g_idx or bias inputs"
    if types and node.input[0] in types:
        from onnx import TensorProto

        elem, dims = types[node.input[0]]
        if elem and elem != TensorProto.FLOAT:
            return f"A is {TensorProto.DataType.Name(elem)} (the ops take float32)"
        if dims is not None and (not dims or (isinstance(dims[-1], int) and dims[-1] not in (0, k))):
            return f"A's shape {dims} does not end in K = {k}"
    return None


def swappable(node, types: dict | None = None) -> bool:
    """A MatMulNBits node MatMulInt4 / MatMulInt8 computes identically (:func:`why_not_swappable` is None)."""
    return why_not_swappable(node, types) is None


def swap_matmulnbits(model) -> int:
    """Turn every :func:`swappable` MatMulNBits node of ``model`` (in place) into ``atp.cpu::MatMulInt4`` (bits 4)
    or ``MatMulInt8`` (bits 8) with the same inputs and K / N / bits / block_size; returns how many were swapped.
    A MatMulNBits node the ops do not cover stays as it is, and the reason is logged."""
    from onnx import helper

    types = _value_types(model.graph)
    count, kept = 0, {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        why = why_not_swappable(node, types)
        if why is not None:
            kept.setdefault(why, []).append(node.name or node.output[0])
            continue
        keep = [a for a in node.attribute if a.name in ("K", "N", "bits", "block_size")]
        node.op_type, node.domain = OPS[_attrs(node).get("bits", 4)], DOMAIN
        del node.attribute[:]
        node.attribute.extend(keep)
        count += 1
    for why, names in kept.items():
        log.info("%d MatMulNBits node(s) kept (%s): %s", len(names), why, ", ".join(names[:3]) + (" ..." if len(names) > 3 else ""))
    if count and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return count


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                out.setdefault(name, []).append(node)
    return out


def fuse_swiglu(model) -> int:
    """Fold each MLP's ``Split -> Sigmoid -> Mul -> Mul`` (silu(gate) * up) into the MatMulInt4/8 that computes the
    fused gate/up rows (attribute ``swiglu=1``: the op returns silu(gate) * up, half the columns), in place; returns
    how many were folded. Only the exact pattern is touched: a two-way equal Split on the last axis whose halves
    feed nothing else, and no intermediate is a graph output."""
    from onnx import helper, numpy_helper

    graph = model.graph
    users = _consumers(graph)
    inits = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    drop, sizes_inits, count = set(), set(), 0

    def only(name, op_type):
        us = users.get(name, [])
        return us[0] if len(us) == 1 and us[0].op_type == op_type and name not in graph_outputs else None

    for node in graph.node:
        if node.op_type not in OPS.values() or node.domain != DOMAIN or any(a.name == "swiglu" for a in node.attribute):
            continue
        split = only(node.output[0], "Split")
        if split is None or len(split.output) != 2:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in split.attribute}
        n = next(a.i for a in node.attribute if a.name == "N")
        sizes = numpy_helper.to_array(inits[split.input[1]]).tolist() if len(split.input) > 1 and split.input[1] in inits else None
        if attrs.get("axis", 0) != -1 or sizes != [n // 2, n // 2] or n % 2:
            continue
        gate, up = split.output
        gate_users = users.get(gate, [])
        sig = next((u for u in gate_users if u.op_type == "Sigmoid"), None)
        silu = only(sig.output[0], "Mul") if sig is not None else None
        if (silu is None or len(gate_users) != 2 or silu not in gate_users or sorted(silu.input) != sorted([gate, sig.output[0]])
                or gate in graph_outputs):
            continue
        prod = only(silu.output[0], "Mul")
        if prod is None or only(up, "Mul") is not prod or sorted(prod.input) != sorted([silu.output[0], up]):
            continue
        node.output[0] = prod.output[0]
        node.attribute.append(helper.make_attribute("swiglu", 1))
        drop.update(id(x) for x in (split, sig, silu, prod))
        sizes_inits.add(split.input[1])
        count += 1
    if count:
        keep = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(keep)
        used = {i for n in graph.node for i in n.input}
        keep_inits = [t for t in graph.initializer if t.name not in sizes_inits or t.name in used]  # the folded Splits' sizes
        del graph.initializer[:]
        graph.initializer.extend(keep_inits)
    return count


def rewrite_for_cpu(model) -> dict:
    """The whole CPU rewrite of a graph, in place: :func:`swap_matmulnbits`, then :func:`fuse_swiglu`; returns
    ``{"matmulint4": n, "matmulint8": n, "swiglu": folded}``."""
    swapped = swap_matmulnbits(model)
    ops = [n.op_type for n in model.graph.node if n.domain == DOMAIN]
    return {"matmulint4": ops.count(OPS[4]), "matmulint8": ops.count(OPS[8]), "swiglu": fuse_swiglu(model) if swapped else 0}


# ---------------------------------------------------------------------------------------------- specialized bundles
def specialize_bundle(bundle: str | Path, out: str | Path, overwrite: bool = False) -> dict:
    """Copy ``bundle`` to ``out`` with its decoder rewritten for atp's CPU ops (:func:`rewrite_for_cpu`) and the
    manifest saying so (``graphs.decoder.custom_ops``), for runtimes that cannot rewrite graphs themselves: the
    embedded C++ runtime registers the library named by ``$ATP_ORT_CPU_KERNELS``. The copy needs the library
    wherever it runs; the original stays portable. Written to a temp dir and renamed; returns the new manifest.

    Raises:
        OrtCpuKernelError: nothing to swap, or the bundle is already specialized.
        BundleError: the bundle is missing or fails verification, or ``out`` exists (without ``overwrite``).
    """
    import onnx

    from atp.bundle import finalize_manifest, read_manifest, staged_bundle

    bundle, out = Path(bundle), Path(out)
    manifest = read_manifest(bundle)
    dec = manifest["graphs"]["decoder"]
    if dec.get("custom_ops"):
        raise OrtCpuKernelError(f"{bundle}'s decoder already runs {dec['custom_ops'].get('domain')} ops")
    with staged_bundle(out, overwrite) as staging:
        for f in manifest["files"]:
            (staging / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bundle / f, staging / f)
        model = onnx.load(str(staging / dec["file"]))
        counts = rewrite_for_cpu(model)
        if not counts["matmulint4"] + counts["matmulint8"]:
            raise OrtCpuKernelError(f"{bundle}'s decoder has no MatMulNBits node atp's ops run (export it with "
                                    f"--weights int4, int8 or mixed and the ort quantization target)")
        for ext in dec.get("external_data") or []:
            (staging / ext).unlink(missing_ok=True)
        onnx.save_model(model, str(staging / dec["file"]), save_as_external_data=False)
        new = {k: v for k, v in manifest.items() if k not in ("files", "format_version")}
        new["graphs"] = {**manifest["graphs"], "decoder": {**dec, "external_data": [],
                                                           "custom_ops": {"domain": DOMAIN, "library": LIB_NAME, "version": "1", **counts}}}
        return finalize_manifest(staging, new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atp.plugins.ort_cpu", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile libatp_ort_cpu.so (default: into the user cache the runtime reads)")
    b.add_argument("--out", default=None, help="output folder (default: the user cache folder the runtime reads)")
    sub.add_parser("info", help="where the library is and which ISA path it runs")
    sp = sub.add_parser("specialize", help="copy a bundle with its decoder rewritten for these ops (for the C++ runtime)")
    sp.add_argument("bundle")
    sp.add_argument("--out", required=True)
    sp.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "build":
            lib = load(build(args.out))
            log.info("built %s (ISA path: %s%s)", lib.path, lib.isa, "" if lib.fast else
                     "; the runtime keeps MatMulNBits on this CPU, MatMulInt4 is faster only with AVX-512 VNNI")
        elif args.cmd == "specialize":
            m = specialize_bundle(args.bundle, args.out, args.overwrite)
            log.info("wrote %s: decoder on %s", args.out, m["graphs"]["decoder"]["custom_ops"])
        else:
            lib = find("cached")
            log.info("%s", f"{lib.path}: ISA path {lib.isa}, op version {lib.version}" if lib else
                     f"not built (expected at {default_dir() / LIB_NAME}); python -m atp.plugins.ort_cpu build")
    except AtpError as exc:
        log.error("error: %s", exc)
        return 2
    return 0
