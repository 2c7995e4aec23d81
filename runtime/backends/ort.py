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
        self.sessions = {}
        for name in ("vision", "decoder"):
            self._session(name)
        self.decoder_outputs = [o.name for o in self.sessions["decoder"].get_outputs()]

    def _session(self, graph: str):
        """The ORT session of a manifest graph, created on first use (alternative vision graphs are lazy)."""
        if graph not in self.sessions:
            path = self._bundle / self._graphs[graph]["file"]
            try:
                self.sessions[graph] = self._ort.InferenceSession(str(path), self._options, providers=list(self.providers))
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
                raise BundleError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from exc
        return self.sessions[graph]

    def run_vision(self, pixel_values: np.ndarray, keep: int, graph: str = "vision",
                   text_embeds: np.ndarray | None = None, extra: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        feeds = {"pixel_values": pixel_values, "keep": np.array(keep, dtype=np.int64)}
        if text_embeds is not None:
            feeds["text_embeds"] = text_embeds
        feeds.update(extra or {})
        embeds, index, *_ = self._session(graph).run(None, feeds)  # auto-K graphs add kept_count (= rows of index >= 0)
        return embeds, index

    def run_graph(self, graph: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run any manifest graph (e.g. the CLIP ``text`` graph) on ``feeds``."""
        return self._session(graph).run(None, feeds)

    def run_decoder(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.decoder_outputs, self.sessions["decoder"].run(None, feeds)))


@BACKENDS.register("ort")
class OrtCpuBackend(_OrtBackend):
    """ONNX Runtime on the CPU."""


@BACKENDS.register("ort-cuda")
class OrtCudaBackend(_OrtBackend):
    """ONNX Runtime with the CUDA execution provider (``pip install 'atp-edge[gpu]'``)."""

    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
