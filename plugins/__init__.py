"""atp.plugins: TensorRT plugins TopKGate and MixedGemm (Triton kernels, IPluginV3, ``libatp_plugins.so``).

Each plugin folder holds its Triton kernel, numpy reference, ``contract.yaml`` (the single
source of its name, version, fields and I/O), C++ plugin and README. This module reads the
contracts and loads a built library, checking what it was built for.
"""

from __future__ import annotations

import ctypes
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from atp.errors import AtpError, MissingDependencyError

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PLUGINS = ("topk_gate", "mixed_gemm")
NAMESPACE = "atp"
TENSORRT_MAJOR = 10  # the plugin ABI (IPluginV3) the library is compiled against


class PluginError(AtpError):
    """The plugin library is missing, unloadable or built for something else."""


def contract(plugin: str) -> dict:
    """The parsed ``contract.yaml`` of ``plugin`` (``topk_gate`` or ``mixed_gemm``)."""
    try:
        import yaml
    except ImportError as exc:
        raise MissingDependencyError("pyyaml is needed to read plugin contracts: pip install pyyaml") from exc
    if plugin not in PLUGINS:
        raise PluginError(f"unknown plugin {plugin!r}; known: {', '.join(PLUGINS)}")
    return yaml.safe_load((HERE / plugin / "contract.yaml").read_text())


def contracts() -> dict[str, dict]:
    """Every plugin's contract, keyed by its TensorRT plugin name (``TopKGate``, ``MixedGemm``)."""
    out = {}
    for p in PLUGINS:
        c = contract(p)
        out[c["name"]] = c
    return out


@dataclass
class PluginLibrary:
    """A loaded ``libatp_plugins.so`` and the metadata it exports."""

    path: Path
    handle: ctypes.CDLL

    def _str(self, fn: str) -> str:
        f = getattr(self.handle, fn)
        f.restype = ctypes.c_char_p
        return f().decode()

    def tensorrt_version(self) -> int:
        """NV_TENSORRT_VERSION the library was compiled against (e.g. 101400)."""
        f = self.handle.atpPluginTensorRTVersion
        f.restype = ctypes.c_int
        return int(f())

    def archs(self) -> list[int]:
        """Compute capabilities with embedded cubins."""
        return [int(a) for a in self._str("atpPluginArchs").split(";") if a]

    def contracts(self) -> list[dict]:
        """The creators' metadata as the library reports it (name, version, namespace, fields, I/O)."""
        return json.loads(self._str("atpPluginContracts"))

    def info(self) -> dict:
        return {"tensorrt_version": self.tensorrt_version(), "archs": [f"sm_{a}" for a in self.archs()],
                "plugins": [c["name"] for c in self.contracts()]}


def load_library(path: str | Path) -> PluginLibrary:
    """Load ``libatp_plugins.so`` and check its TensorRT major.

    Raises:
        PluginError: file missing, not loadable, not an atp plugin library, or built for another TensorRT major.
    """
    path = Path(path)
    if not path.is_file():
        raise PluginError(f"plugin library {path} does not exist; build it with cmake -S plugins -B build/plugins && "
                          f"cmake --build build/plugins (see plugins/README.md)")
    try:
        handle = ctypes.CDLL(str(path.resolve()), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise PluginError(f"cannot load plugin library {path}: {exc}") from None
    if not hasattr(handle, "atpPluginContracts"):
        raise PluginError(f"{path} is not an atp plugin library (no atpPluginContracts symbol)")
    lib = PluginLibrary(path, handle)
    major = lib.tensorrt_version() // 10000
    if major != TENSORRT_MAJOR:
        raise PluginError(f"{path} was built against TensorRT {major}, this atp needs TensorRT {TENSORRT_MAJOR} "
                          f"plugins; rebuild it with TensorRT_ROOT pointing at TensorRT {TENSORRT_MAJOR} headers")
    return lib
