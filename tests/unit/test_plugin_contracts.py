"""libatp_plugins.so: builds warning-free, exports TensorRT's plugin entry points, and its creators,
the ONNX nodes of the graph rewrite and reference.py agree with each plugin's contract.yaml.

The library is built once per session with CMake for sm_87 only (the four-arch build is the slow test);
the build fetches TensorRT headers (kernel-lens wheel) and skips with the reason when that or a tool is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import inspect
import subprocess

import numpy as np
import pytest

from atp import plugins
from atp.plugins import PluginError, contract, contracts, load_library


def _build(tmp_path_factory, archs, tests=False):
    from atp.plugins.build import build_library, missing_tools

    missing = missing_tools()
    if missing:
        pytest.skip(f"cannot build the plugin library: {', '.join(missing)} not found")
    try:
        return build_library(tmp_path_factory.mktemp("plugins-build"), archs=archs, tests=tests)
    except PluginError as exc:
        text = str(exc)
        if "could not fetch TensorRT headers" in text or "cuda.h" in text or "ATP_CUDA_INCLUDE" in text:
            pytest.skip(f"plugin build prerequisites unavailable: {text[-400:]}")
        raise


@pytest.fixture(scope="session")
def built_library(tmp_path_factory):
    return _build(tmp_path_factory, archs=(87,), tests=True)


def test_plugin_build_phase_cpp(built_library):
    """tests/cpp/test_plugins.cpp: output shapes (size tensor for K), types, formats, fields round trip and errors
    through the TensorRT logger, with fake expression builders (no TensorRT library, no GPU)."""
    exe = built_library[0].parent / "test_plugins"
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "OK: 0 failure(s)" in res.stdout, res.stdout + res.stderr


def test_library_builds_without_warnings(built_library):
    lib, log = built_library
    warnings = [line for line in log.splitlines() if "warning" in line.lower()]
    assert not warnings, warnings[:5]
    for target in ("atp_plugins", "atp_plugin_objects"):
        assert "-Wall" in (lib.parent / f"CMakeFiles/{target}.dir/flags.make").read_text()


def test_exports_tensorrt_entry_points(built_library):
    lib, _ = built_library
    syms = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True, check=True).stdout
    exported = {line.split()[-1] for line in syms.splitlines() if " T " in line}
    assert {"getCreators", "setLoggerFinder", "atpPluginContracts", "atpPluginTensorRTVersion", "atpPluginArchs"} <= exported
    # nothing else leaks (C++ symbols are hidden)
    assert not [s for s in exported if s.startswith("_Z")]


def test_library_metadata(built_library):
    lib = load_library(built_library[0])
    assert lib.tensorrt_version() // 10000 == plugins.TENSORRT_MAJOR
    assert lib.archs() == [87]
    assert lib.info()["plugins"] == ["TopKGate", "MixedGemm"]


def test_creators_match_contracts(built_library):
    lib = load_library(built_library[0])
    got = {c["name"]: c for c in lib.contracts()}
    want = contracts()
    assert set(got) == set(want)
    for name, c in want.items():
        g = got[name]
        assert (g["version"], g["namespace"]) == (c["version"], c["namespace"])
        assert [(f["name"], f["type"], f["default"]) for f in g["fields"]] == \
               [(a["name"], a["type"], a["default"]) for a in c["attributes"]]
        assert g["nb_outputs"] == len(c["outputs"])


@pytest.mark.parametrize("plugin", plugins.PLUGINS)
def test_reference_matches_contract(plugin):
    c = contract(plugin)
    module_name, fn_name = c["reference"].rsplit(".", 1)
    import importlib

    fn = getattr(importlib.import_module(module_name), fn_name)
    params = list(inspect.signature(fn).parameters)
    rng = np.random.default_rng(0)
    if plugin == "topk_gate":
        assert params[:3] == [i["name"] for i in c["inputs"]]
        kept, index = fn(rng.standard_normal((2, 10)).astype(np.float32), rng.standard_normal((2, 10, 3)).astype(np.float32), 4)
        data_outputs = [o for o in c["outputs"] if not o.get("size_tensor")]
        assert len(data_outputs) == 2 and kept.shape == (2, 4, 3) and index.shape == (2, 4)
        assert [o["name"] for o in c["outputs"]] == ["kept_tokens", "kept_index", "num_kept"]
    else:
        from atp.plugins.mixed_gemm.reference import quantize_mixed

        assert params[0] == c["inputs"][0]["name"]
        layout = quantize_mixed(rng.standard_normal((96, 64)).astype(np.float32), 32, 32, zero_points=True)
        names = [i["name"] for i in c["inputs"]]
        assert names[1:] == ["w8", "s8", "w4", "s4", "z4"] and all(k in layout for k in names[1:])
        assert layout["w4"].shape == (64, 32) and layout["s4"].shape == (64, 64 // 32)
        y = fn(rng.standard_normal((3, 64)).astype(np.float32), layout)
        assert y.shape == (3, 96)
        assert {a["name"] for a in c["attributes"]} == {"group_size", "has_zero_points"}


def test_load_library_errors(tmp_path):
    with pytest.raises(PluginError, match="does not exist.*cmake"):
        load_library(tmp_path / "libatp_plugins.so")
    (tmp_path / "junk.so").write_bytes(b"not an ELF file")
    with pytest.raises(PluginError, match="cannot load plugin library"):
        load_library(tmp_path / "junk.so")
    libm = ctypes.util.find_library("m")  # a real shared library that is not ours
    if libm:
        with pytest.raises(PluginError, match="not an atp plugin library"):
            load_library(_resolve(libm))


def _resolve(soname: str) -> str:
    import os

    for d in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/lib64", "/usr/lib"):
        if os.path.exists(os.path.join(d, soname)):
            return os.path.join(d, soname)
    pytest.skip(f"cannot locate {soname}")


@pytest.mark.slow
def test_full_arch_build(tmp_path_factory):
    lib = load_library(_build(tmp_path_factory, archs=(87, 86, 89, 90))[0])
    assert lib.archs() == [87, 86, 89, 90]


@pytest.mark.trt
def test_tensorrt_rtx_registers_the_creators(built_library):
    """TensorRT-RTX loads the library through its plugin registry and finds both creators under namespace atp.

    (Run in a subprocess: a plugin library loaded into a TensorRT process cannot be unloaded.)
    """
    import json
    import sys

    pytest.importorskip("tensorrt_rtx")
    code = (
        "import json, sys, tensorrt_rtx as trt\n"
        "reg = trt.get_plugin_registry()\n"
        "assert reg.load_library(sys.argv[1]) is not None\n"
        "print(json.dumps(sorted([c.name, c.plugin_version, c.plugin_namespace] for c in reg.all_creators "
        "if c.plugin_namespace == 'atp')))\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(built_library[0])], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == [["MixedGemm", "1", "atp"], ["TopKGate", "1", "atp"]]
