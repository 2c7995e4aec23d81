"""ONNX Runtime backends: ``ort`` (CPU, the embedded default) and ``ort-cuda``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from atp.errors import BundleError, MissingDependencyError, require
from atp.registry import BACKENDS

log = logging.getLogger(__name__)


class _OrtBackend:
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    extra = "gpu"
    cpu_kernels = False  # run the decoder's MatMulNBits on atp's MatMulInt4/8 CPU ops where that is faster (plugins/ort_cpu)

    def __init__(self, bundle: Path, manifest: dict, threads: int | None = None):
        ort = require("onnxruntime", self.extra)
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            raise MissingDependencyError(
                f"ONNX Runtime here lacks {', '.join(missing)}; install it with: pip install 'atp-edge[{self.extra}]'"
            )
        self._ort, self._bundle, self._graphs = ort, bundle, manifest["graphs"]
        self._options = so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = threads or (os.cpu_count() or 1)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        required = sorted(g for g, info in self._graphs.items() if info.get("custom_ops"))
        if required:
            self.kernels = _required_kernels(so, bundle, required)
        else:  # only a quantized decoder has GEMMs for the kernels: fp32 bundles never build them
            self.kernels = _cpu_kernels(so) if self.cpu_kernels and _quantized(self._graphs.get("decoder") or {}) else None
        self.swapped: dict[str, dict] = {}  # graph -> {"matmulint4"/"matmulint8": nodes swapped, "swiglu": folded}
        self.sessions = {}
        for name in ("vision", "decoder"):
            self._session(name)
        self.decoder_outputs = [o.name for o in self.sessions["decoder"].get_outputs()]

    def _session(self, graph: str):
        """The ORT session of a manifest graph, created on first use (alternative vision graphs are lazy)."""
        if graph not in self.sessions:
            path = self._bundle / self._graphs[graph]["file"]
            model = self._swapped_model(graph, path) if self.kernels else None
            try:
                self.sessions[graph] = self._ort.InferenceSession(model or str(path), self._options, providers=list(self.providers))
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
                raise BundleError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from exc
        return self.sessions[graph]

    def _swapped_model(self, graph: str, path: Path) -> bytes | None:
        """The serialized decoder with its MatMulNBits nodes on MatMulInt4/8 (:func:`atp.plugins.ort_cpu.rewrite_for_cpu`),
        or None (nothing to swap)."""
        if self._graphs[graph].get("custom_ops"):  # specialized on disk already
            self.swapped[graph] = {k: v for k, v in self._graphs[graph]["custom_ops"].items() if k in ("matmulint4", "matmulint8", "swiglu")}
            return None
        # decoder only: at the vision tower's M = patches MatMulInt8 is slower than fp32 and MatMulNBits
        # (bench/results/quant_vision_gemm_xeon_atpcpu.md)
        if graph != "decoder" or not _quantized(self._graphs[graph]):
            return None
        import onnx

        from atp.plugins.ort_cpu import rewrite_for_cpu

        try:
            model = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError/ValueError/OSError for bad files
            raise BundleError(f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        counts = rewrite_for_cpu(model)
        if not counts["matmulint4"] + counts["matmulint8"]:
            return None
        if model.ByteSize() > 2_000_000_000:  # protobuf's limit for an in-memory model
            log.warning("%s: over 2 GB, kept on MatMulNBits (atp CPU kernels need an in-memory rewrite)", graph)
            return None
        self.swapped[graph] = counts
        log.info("%s: %d int4 / %d int8 MatMulNBits nodes run by atp.cpu::MatMulInt4 / MatMulInt8 (%s), %d SwiGLU "
                 "epilogues folded in", graph, counts["matmulint4"], counts["matmulint8"], self.kernels.isa, counts["swiglu"])
        return model.SerializeToString()

    def run_vision(self, pixel_values: np.ndarray, keep: int, graph: str = "vision",
                   text_embeds: np.ndarray | None = None, extra: dict[str, np.ndarray] | None = None,
                   outputs: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(image_embeds, kept_index) of a vision graph; the graph's other outputs (``kept_count``,
        ``deepstack_embeds``) go into ``outputs`` by name when a dict is given."""
        feeds = {"pixel_values": pixel_values, "keep": np.array(keep, dtype=np.int64)}
        if text_embeds is not None:
            feeds["text_embeds"] = text_embeds
        feeds.update(extra or {})
        sess = self._session(graph)
        embeds, index, *rest = sess.run(None, feeds)  # auto-K graphs add kept_count (= rows of index >= 0)
        if outputs is not None:
            outputs.update(zip([o.name for o in sess.get_outputs()[2:]], rest))
        return embeds, index

    def run_graph(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run any manifest graph (e.g. the CLIP ``text`` graph) on ``feeds``."""
        return self._session(graph).run(None, feeds)

    def run_decoder(self, feeds: dict[str, np.ndarray], graph: str = "decoder") -> dict[str, np.ndarray]:
        """One decoder step on ``graph`` (``decoder``, or ``decoder_prefill`` for the prompt where the bundle has one)."""
        sess = self._session(graph)
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _quantized(graph: dict) -> bool:
    """Whether a manifest graph's weights are int4 / int8 / mixed (MatMulNBits the CPU kernels can run)."""
    weights = graph.get("weights") or {}
    return (weights.get("precision") if isinstance(weights, dict) else weights) in ("int4", "int8", "mixed")


def _required_kernels(options, bundle: Path, graphs: list[str]):
    """Register the kernel library a specialized bundle's graphs need (``python -m atp.plugins.ort_cpu specialize``)."""
    from atp.plugins import ort_cpu

    setting = os.environ.get(ort_cpu.ENV) or "auto"
    why = f"{bundle}'s {', '.join(graphs)} graph runs atp.cpu ops from {ort_cpu.LIB_NAME}"
    if setting == "off":
        raise BundleError(f"{why}; {ort_cpu.ENV}=off cannot apply to it (use the bundle it was specialized from)")
    try:
        lib = ort_cpu.find(setting)
    except ort_cpu.OrtCpuKernelError as exc:
        raise BundleError(f"{why}: {exc}") from None
    if lib is None:
        raise BundleError(f"{why}; build it with: python -m atp.plugins.ort_cpu build (or set {ort_cpu.ENV} to its path)")
    options.register_custom_ops_library(str(lib.path))
    return lib


def _cpu_kernels(options):
    """Register atp's ORT CPU kernel library in ``options`` and return it, or None where it is not used:
    ``$ATP_ORT_CPU_KERNELS`` is ``off``; ``auto`` (default) on a CPU where MatMulInt4/8 are not measured faster
    (anything but AVX-512 VNNI), or where the first-use build failed (logged once); no ``onnx`` to rewrite graphs
    with. ``auto`` builds the library into the user cache on first use. A library named by path must load and is
    used on any CPU."""
    from atp.plugins import ort_cpu

    setting = os.environ.get(ort_cpu.ENV) or "auto"
    try:
        lib = ort_cpu.find(setting)
    except ort_cpu.OrtCpuKernelError as exc:
        if setting != "auto":
            raise
        log.warning("atp CPU kernels not used: %s", exc)
        return None
    if lib is None:
        if setting == "auto" and not ort_cpu.host_is_fast():
            log.info("atp CPU kernels not used: this CPU lacks AVX-512 VNNI; quantized GEMMs run on ONNX Runtime's "
                     "MatMulNBits (%s)", _cpu_path())
        return None
    if setting in ("auto", "cached") and not lib.fast:
        log.info("atp CPU kernels not used: they are measured faster than MatMulNBits on AVX-512 VNNI only, this CPU "
                 "runs their %s path (set %s to the library's path to use it anyway)", lib.isa, ort_cpu.ENV)
        return None
    try:
        import onnx  # noqa: F401  (the op swap edits the graph)
    except ImportError:
        log.info("atp CPU kernels not used: the graph rewrite needs onnx (pip install onnx)")
        return None
    options.register_custom_ops_library(str(lib.path))
    return lib


@BACKENDS.register("ort")
class OrtCpuBackend(_OrtBackend):
    """ONNX Runtime on the CPU (quantized decoder GEMMs on atp's MatMulInt4/8 ops where built and faster: plugins/ort_cpu)."""

    cpu_kernels = True


@BACKENDS.register("ort-cuda")
class OrtCudaBackend(_OrtBackend):
    """ONNX Runtime with the CUDA execution provider (``pip install 'atp-edge[gpu]'``)."""

    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")


def _cpu_path() -> str:
    """A short name of the ISA family ORT's own kernels use here, for the log line."""
    import platform

    return f"{platform.machine()}, ORT MLAS"
