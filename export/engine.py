"""TensorRT engines for a bundle: one engine per graph, optimization profiles from the manifest.

Uses the ``tensorrt`` Python API; where only TensorRT-RTX (``tensorrt_rtx``) is installed it
stands in (same API names; it builds ahead of time, without a GPU, for the compute
capabilities it lists). Differences handled here:

- compute capability: TensorRT-RTX builds for any capability in ``trt.ComputeCapability``
  (set on the builder config); full TensorRT builds for the GPU it runs on, so the target's
  capability must match the local GPU.
- precision: TensorRT-RTX is strongly typed (precision comes from the graph: fp16 tensors or
  QDQ); ``fp16``/``int8`` builder flags exist only in full TensorRT.
- timing cache: reused between builds with full TensorRT (``--timing-cache``); a no-op in
  TensorRT-RTX, which tunes at run time instead.

Engines land in ``engines/<target>/<graph>.engine`` and the manifest gains
``engines.<target>`` (builder, version, compute capabilities, profiles, plugins) and the new
files' sha256. The engines are built in a staging directory inside the bundle, moved into
place, then the manifest is replaced (write + rename).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from atp.bundle import MANIFEST_NAME, read_manifest, sha256_file
from atp.errors import AtpError, ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"


class EngineError(AtpError):
    """An engine could not be built (parser or builder failure)."""


@dataclass(frozen=True)
class Target:
    """A deployment target: its compute capabilities (major*10+minor) and what it is."""

    name: str
    archs: tuple[int, ...]
    description: str


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("orin", (87,), "Jetson AGX Orin / Orin NX / Orin Nano (sm_87, JetPack 6)"),
    Target("ampere", (86,), "desktop RTX 30xx / A-series (sm_86)"),
    Target("ada", (89,), "desktop RTX 40xx / L4 / L40 (sm_89)"),
    Target("hopper", (90,), "H100 / H200 / GH200 (sm_90)"),
    Target("blackwell", (120,), "desktop RTX 50xx (sm_120)"),
    Target("desktop", (86, 89), "desktop RTX 30xx and 40xx in one engine (sm_86 + sm_89)"),
)}


@dataclass(frozen=True)
class EngineConfig:
    """What to build. Validated on construction.

    Args:
        target: A name in :data:`TARGETS`.
        fp16, int8: Builder precision flags (full TensorRT only; TensorRT-RTX is strongly typed).
        workspace_mb: Workspace memory pool limit.
        max_batch: Largest batch in every profile (opt is 1).
        max_sequence: Largest prefill length (prompt + kept visual tokens).
        max_context: Largest past length (KV cache) in the decode profile.
        graphs: Manifest graph keys to build (default: every graph).
        plugins: Path of ``libatp_plugins.so`` to load (for graphs with ``atp`` plugin nodes).
        timing_cache: Timing cache file (full TensorRT), read before and written after the builds.
    """

    target: str
    fp16: bool = False
    int8: bool = False
    workspace_mb: int = 1024
    max_batch: int = 1
    max_sequence: int = 1024
    max_context: int = 2048
    graphs: tuple[str, ...] | None = None
    plugins: str | None = None
    timing_cache: str | None = None

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ConfigError(f"unknown target {self.target!r}; choose from: "
                              + ", ".join(f"{t.name} ({t.description})" for t in TARGETS.values()))
        for name in ("workspace_mb", "max_batch", "max_sequence", "max_context"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {v!r}")


@dataclass
class Builder:
    """The TensorRT module in use, and what it can target."""

    trt: object
    name: str  # "tensorrt" or "tensorrt_rtx"
    version: str

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"

    def supported_archs(self) -> tuple[int, ...]:
        """Capabilities the builder can target ahead of time (RTX) or the local GPU's (full TensorRT)."""
        if self.is_rtx:
            return tuple(sorted(int(n[2:]) for n in self.trt.ComputeCapability.__members__ if n.startswith("SM")))
        cc = local_compute_capability()
        return (cc,) if cc else ()


def find_builder(prefer: str | None = None) -> Builder:
    """Import ``tensorrt``, else ``tensorrt_rtx``.

    Args:
        prefer: Force one module ("tensorrt" or "tensorrt_rtx").

    Raises:
        MissingDependencyError: neither is installed.
    """
    import importlib

    names = [prefer] if prefer else ["tensorrt", "tensorrt_rtx"]
    errors = []
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError as exc:  # also a broken install (missing libnvinfer)
            errors.append(f"{name}: {exc}")
            continue
        return Builder(mod, name, getattr(mod, "__version__", "unknown"))
    raise MissingDependencyError(
        "no TensorRT builder is installed (" + "; ".join(errors) + "): install TensorRT with "
        "pip install 'atp-edge[trt]' (on Jetson: JetPack's python3-libnvinfer), or TensorRT-RTX with "
        "pip install tensorrt-rtx-cu13 to build ahead of time for sm_75/80/86/89/120/121 without a GPU")


def local_compute_capability() -> int | None:
    """The first CUDA device's compute capability as major*10+minor, or None without a GPU/driver."""
    import ctypes

    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGet(ctypes.byref(dev), 0) != 0:
        return None
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
    return major.value * 10 + minor.value


def check_target(builder: Builder, target: Target) -> None:
    """Raise a ConfigError when the builder cannot produce engines for ``target``.

    TensorRT-RTX must support every capability of the target; full TensorRT builds for the local
    GPU, which must be one of the target's (multi-arch targets then use hardware compatibility).
    """
    supported = builder.supported_archs()
    if builder.is_rtx:
        missing = [a for a in target.archs if a not in supported]
        if not missing:
            return
        arch = ", ".join(f"sm_{a}" for a in missing)
        raise ConfigError(
            f"target {target.name} needs {arch}, which TensorRT-RTX {builder.version} cannot build for (it builds "
            f"{', '.join(f'sm_{a}' for a in supported)}); build on the device with full TensorRT "
            f"(JetPack 6 ships TensorRT 10 for Jetson Orin) or choose another --target")
    if any(a in target.archs for a in supported):
        return
    arch = ", ".join(f"sm_{a}" for a in target.archs)
    here = f"this machine's GPU is sm_{supported[0]}" if supported else "this machine has no CUDA GPU"
    raise ConfigError(f"target {target.name} needs {arch}, but TensorRT builds for the GPU it runs on and {here}; "
                      f"run `atp-export engine` on the target device, or install TensorRT-RTX to build ahead of time")


def _dim(name_or_value, sizes: dict) -> int:
    if isinstance(name_or_value, int):
        return name_or_value
    if name_or_value not in sizes:
        raise EngineError(f"no profile range for dynamic axis {name_or_value!r}; the manifest names an axis the builder "
                          f"does not know")
    return sizes[name_or_value]


def graph_profiles(manifest: dict, key: str, cfg: EngineConfig) -> list[dict]:
    """Optimization profiles of one graph as ``[{"name", "shapes": {input: {min, opt, max}}, "values": {...}}]``.

    Dynamic axes are resolved by name: ``batch`` 1..max_batch, ``keep`` (the kept-token count
    K, a shape input) 1..N so one engine serves every K, ``sequence``/``past_sequence``/
    ``total_sequence`` from the prefill and decode limits. Decoders get two profiles: prefill
    (past 0, sequence 1..max_sequence) and decode (sequence 1, past 1..max_context).
    """
    graph = manifest["graphs"][key]
    n = int(manifest["pruning"]["num_visual_tokens"])
    default_keep = int(manifest["pruning"].get("default_keep", n))
    b = (1, 1, cfg.max_batch)
    if key.startswith("vision"):
        # multi-view layouts (LLaVA-NeXT anyres): one image's views and the tokens it gates over vary per image, up to
        # the manifest's token layout (tiles = the most views, N = the most tokens)
        # the manifest's token layout (tiles = the most views, N = the most tokens); dynamic resolution (Qwen2.5-VL):
        # one image's patches, from one merged token (merge^2 patches) to the pixel bound's N (opt: half of it, and at
        # least the default K, which TopK needs at every profile point); its attention windows, at most one per token
        tiles = int((manifest.get("token_layout") or {}).get("tiles", 1))
        unit = int(((manifest.get("preprocessing") or {}).get("dynamic") or {}).get("merge", 1)) ** 2
        ranges = [{"name": "vision", "batch": b, "keep": (1, default_keep, n), "views": (1, tiles, tiles), "tokens": (1, n, n),
                   "patches": (unit, unit * max(1, n // 2, default_keep), unit * n), "windows": (1, max(1, n // 8), n)}]
    elif key == "decoder":
        s, c = cfg.max_sequence, cfg.max_context
        ranges = [
            {"name": "prefill", "batch": b, "sequence": (1, min(s, n + 32), s), "past_sequence": (0, 0, 0),
             "total_sequence": (1, min(s, n + 32), s)},
            {"name": "decode", "batch": b, "sequence": (1, 1, 1), "past_sequence": (1, min(c, n + 64), c),
             "total_sequence": (2, min(c, n + 64) + 1, c + 1)},
        ]
    else:
        raise EngineError(f"graph {key!r} has no profile rule (known: vision*, decoder)")
    profiles = []
    for r in ranges:
        shapes, values = {}, {}
        for inp in graph["inputs"]:
            shape = inp["shape"]
            if inp["name"] == graph.get("keep_input", "keep") and not shape:
                values[inp["name"]] = dict(zip(("min", "opt", "max"), ([v] for v in r["keep"])))
                continue
            dims = [tuple(_dim(d, {k: v[i] for k, v in r.items() if k != "name"}) for d in shape) for i in range(3)]
            shapes[inp["name"]] = {"min": list(dims[0]), "opt": list(dims[1]), "max": list(dims[2])}
        profiles.append({"name": r["name"], "shapes": shapes, "values": values})
    return profiles


def _parse(builder: Builder, path: Path, network, logger):
    trt = builder.trt
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(str(path))
    if not ok:
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        hint = ""
        if "atp" in errs or "plugin" in errs.lower():
            hint = " (graphs with atp plugin nodes need --plugins path/to/libatp_plugins.so)"
        raise EngineError(f"{builder.name} could not parse {path.name}: {errs}{hint}")
    return parser


def check_plugin_limits(manifest: dict) -> None:
    """Refuse, before any build, a bundle whose visual-token count exceeds TopKGate's ``max_n`` (contract.yaml).

    Raises:
        ConfigError: N is above the plugin's limit (build without ``--plugins``: the standard-op gate has none).
    """
    from atp.plugins import contract

    max_n = int((contract("topk_gate").get("limits") or {}).get("max_n", 0))
    n = int(manifest["pruning"]["num_visual_tokens"])
    if max_n and n > max_n:
        raise ConfigError(f"this bundle gates {n} visual tokens per image, more than the TopKGate plugin's limit of {max_n} "
                          "(plugins/topk_gate/contract.yaml): build without --plugins (the standard-op gate has no limit)")


def _load_plugins(builder: Builder, path: str | None):
    if path is None:
        return None
    if builder.is_rtx:
        # observed with tensorrt_rtx 1.7.1: the registry loads the library and creates TopKGate, then the ONNX
        # parser calls std::terminate inside libtensorrt_onnxparser_rtx; refuse instead of aborting the process
        raise ConfigError("TensorRT-RTX cannot build graphs with atp plugin nodes (its ONNX parser aborts on them); "
                          "build with full TensorRT (pip install 'atp-edge[trt]', or JetPack on the device), or drop --plugins")
    from atp.plugins import load_library

    lib = load_library(path)  # checks the file and its TensorRT major
    registry = builder.trt.get_plugin_registry()
    handle = registry.load_library(str(path))
    if handle is None:
        raise EngineError(f"{builder.name} refused to load the plugin library {path}")
    return lib


_LOGGERS: dict = {}


def _logger(builder: Builder):
    """A TensorRT logger that forwards to ``logging`` (one per builder module)."""
    if builder.name in _LOGGERS:
        return _LOGGERS[builder.name]
    trt = builder.trt
    sev = trt.ILogger.Severity
    levels = {sev.INTERNAL_ERROR: logging.ERROR, sev.ERROR: logging.ERROR, sev.WARNING: logging.WARNING,
              sev.INFO: logging.DEBUG, sev.VERBOSE: logging.DEBUG}

    class _Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            level = levels.get(severity, logging.INFO)
            if builder.is_rtx and "cudaError 35" in msg:  # ahead-of-time build on a machine without a driver
                level = logging.DEBUG
            if "Make sure input" in msg or "Make sure output" in msg:  # int64 bindings: intended
                level = logging.DEBUG
            log.log(level, "%s: %s", builder.name, msg)

    _LOGGERS[builder.name] = _Log()
    return _LOGGERS[builder.name]


def build_engine(builder: Builder, onnx_path: Path, profiles: list[dict], target: Target, cfg: EngineConfig,
                 timing_cache: bytes | None = None) -> tuple[bytes, bytes | None]:
    """Parse one ONNX graph and build a serialized engine.

    Returns:
        (engine bytes, timing cache bytes to keep, or None with TensorRT-RTX).
    """
    trt = builder.trt
    logger = _logger(builder)
    b = trt.Builder(logger)
    flags = 0
    if not builder.is_rtx and hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = b.create_network(flags)
    _parse(builder, onnx_path, network, logger)
    conf = b.create_builder_config()
    conf.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    if builder.is_rtx:
        if cfg.fp16 or cfg.int8:
            raise ConfigError("TensorRT-RTX is strongly typed: precision comes from the graph (fp16 tensors or QDQ "
                              "nodes), so --fp16/--int8 apply to full TensorRT only; drop them or quantize the bundle")
        conf.num_compute_capabilities = len(target.archs)
        for i, arch in enumerate(target.archs):
            conf.set_compute_capability(getattr(trt.ComputeCapability, f"SM{arch}"), i)
    else:
        if cfg.fp16:
            conf.set_flag(trt.BuilderFlag.FP16)
        if cfg.int8:
            conf.set_flag(trt.BuilderFlag.INT8)
        if len(target.archs) > 1:  # one engine for several GPUs (e.g. desktop = sm_86 + sm_89)
            conf.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        cache = conf.create_timing_cache(timing_cache or b"")
        conf.set_timing_cache(cache, ignore_mismatch=False)
    inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
    for prof in profiles:
        p = b.create_optimization_profile()
        for name, s in prof["shapes"].items():
            if name not in inputs:
                raise EngineError(f"{onnx_path.name} has no input {name!r} that the manifest lists; re-export the bundle")
            p.set_shape(name, s["min"], s["opt"], s["max"])
        for name, v in prof["values"].items():
            if name not in inputs:
                raise EngineError(f"{onnx_path.name} has no input {name!r} (the keep count K); re-export the bundle")
            if inputs[name].is_shape_tensor:  # standard-op gate: K is a shape input, bounded by the profile
                p.set_shape_input(name, v["min"], v["opt"], v["max"])
            # else: TopKGate plugin graph: K is 0-d device data (static shape, nothing to profile); the plugin's size
            # tensor carries it and the kernel clamps it to 1..N (atp.engines.check_keep refuses bad K on the host)
        conf.add_optimization_profile(p)
    t0 = time.perf_counter()
    plan = b.build_serialized_network(network, conf)
    if plan is None:
        raise EngineError(f"{builder.name} failed to build an engine for {onnx_path.name} (see the TensorRT log above)")
    log.info("built %s in %.1f s (%d bytes)", onnx_path.name, time.perf_counter() - t0, plan.nbytes)
    new_cache = None
    if not builder.is_rtx:
        new_cache = bytes(conf.get_timing_cache().serialize())
    return bytes(plan), new_cache


def default_timing_cache(builder: Builder, target: Target) -> Path:
    """``$XDG_CACHE_HOME/atp/timing-<builder>-<version>-<archs>.cache``."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atp"
    return root / f"timing-{builder.name}-{builder.version}-{'_'.join(map(str, target.archs))}.cache"


def build_bundle_engines(bundle: str | Path, cfg: EngineConfig, builder: Builder | None = None) -> dict:
    """Build the engines of a bundle for ``cfg.target`` and record them in its manifest.

    Args:
        bundle: Bundle directory (verified before anything is built).
        cfg: Target, precision, limits.
        builder: A :class:`Builder` (default: :func:`find_builder`).

    Returns:
        The manifest's new ``engines.<target>`` entry.

    Raises:
        MissingDependencyError: no TensorRT builder installed.
        ConfigError: the builder cannot target the target's compute capability, bad options.
        EngineError: a graph failed to parse or build.
    """
    bundle = Path(bundle)
    manifest = read_manifest(bundle, verify=True)
    builder = builder or find_builder()
    target = TARGETS[cfg.target]
    check_target(builder, target)
    keys = list(cfg.graphs) if cfg.graphs else list(manifest["graphs"])
    unknown = [k for k in keys if k not in manifest["graphs"]]
    if unknown:
        raise ConfigError(f"bundle has no graph(s) {unknown}; it has: {', '.join(manifest['graphs'])}")
    plugins = _load_plugins(builder, cfg.plugins)
    if plugins is not None:
        check_plugin_limits(manifest)
    cache_path = None if builder.is_rtx else Path(cfg.timing_cache) if cfg.timing_cache else default_timing_cache(builder, target)
    cache = cache_path.read_bytes() if cache_path and cache_path.is_file() else None
    if builder.is_rtx and cfg.timing_cache:
        log.warning("TensorRT-RTX has no build timing cache (it tunes at run time); --timing-cache is ignored")

    engines_root = bundle / ENGINES_DIR
    engines_root.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=engines_root))
    try:
        entry = {"builder": builder.name, "tensorrt_version": builder.version, "target": target.name,
                 "compute_capabilities": [f"sm_{a}" for a in target.archs],
                 "precision": {"fp16": cfg.fp16, "int8": cfg.int8} if not builder.is_rtx else "strongly typed (from the graph)",
                 "plugins": None if plugins is None else {"library": Path(cfg.plugins).name, **plugins.info()},
                 "graphs": {}}
        for i, key in enumerate(keys, 1):
            graph = manifest["graphs"][key]
            profiles = graph_profiles(manifest, key, cfg)
            log.info("[%d/%d] building %s for %s (%s)", i, len(keys), graph["file"], target.name,
                     ", ".join(p["name"] for p in profiles))
            onnx_path, rewritten = bundle / graph["file"], None
            with tempfile.TemporaryDirectory(prefix=".atp-rewrite-") as tmp:
                if plugins is not None:
                    # plugin nodes replace the standard-op gate and mixed GEMMs for this build only; the bundle keeps
                    # standard ops
                    from atp.export.plugin_rewrite import rewrite_file

                    onnx_path = Path(tmp) / Path(graph["file"]).name
                    rewritten = rewrite_file(bundle / graph["file"], onnx_path)
                plan, cache = build_engine(builder, onnx_path, profiles, target, cfg, cache)
            name = f"{key}.engine"
            (staging / name).write_bytes(plan)
            entry["graphs"][key] = {"file": f"{ENGINES_DIR}/{target.name}/{name}", "onnx": graph["file"],
                                    "plugin_nodes": rewritten, "profiles": profiles}
        if cache_path and cache:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_bytes(cache)
            os.replace(tmp, cache_path)
        _install(bundle, manifest, staging, target.name, entry)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if engines_root.is_dir() and not any(engines_root.iterdir()):
            engines_root.rmdir()  # leave the bundle as it was
        raise
    return entry


def _install(bundle: Path, manifest: dict, staging: Path, target: str, entry: dict) -> None:
    """Move the staged engines into ``engines/<target>`` and replace the manifest (write + rename)."""
    final = bundle / ENGINES_DIR / target
    prefix = f"{ENGINES_DIR}/{target}/"
    files = {k: v for k, v in manifest["files"].items() if not k.startswith(prefix)}
    for p in sorted(staging.iterdir()):
        files[prefix + p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = dict(manifest, files=files)
    manifest["engines"] = {**manifest.get("engines", {}), target: entry}
    trash = None
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{target}.old-", dir=final.parent))
        os.replace(final, trash / target)
    os.replace(staging, final)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=bundle)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, bundle / MANIFEST_NAME)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
