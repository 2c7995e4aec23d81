"""Launch the ahead-of-time cubins from Python through the CUDA driver API (ctypes), as the C++ plugin does.

Used by ``tests/gpu`` and ``bench/gpu_kernels.py`` to run exactly the cubins that ``libatp_plugins.so``
embeds (same variants, same launch geometry) on torch CUDA tensors, without TensorRT. Needs a GPU.
Each launch pays a few microseconds of ctypes overhead that the C++ plugin does not.
Run it in a process where ``TRITON_INTERPRET`` is unset (the AOT compile needs Triton's real compiler).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from atp.plugins import PluginError


def _cuda():
    try:
        return ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise PluginError(f"the CUDA driver (libcuda.so.1) is not available: {exc}") from None


@dataclass
class Kernel:
    """A loaded cubin function and its launch metadata."""

    function: ctypes.c_void_p
    num_warps: int
    shared: int
    tile: dict


class Launcher:
    """Loads cubins into the current CUDA context (torch's) and launches them on torch's current stream."""

    def __init__(self):
        import torch

        if not torch.cuda.is_available():
            raise PluginError("no CUDA GPU")
        torch.cuda.init()
        torch.empty(1, device="cuda")  # make the primary context current on this thread
        self.torch = torch
        self.cuda = _cuda()
        self._cache: dict = {}

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            msg = ctypes.c_char_p()
            self.cuda.cuGetErrorString(rc, ctypes.byref(msg))
            raise PluginError(f"{what} failed: {msg.value.decode() if msg.value else rc}")

    def compute_capability(self) -> int:
        major, minor = self.torch.cuda.get_device_capability()
        return major * 10 + minor

    def kernel(self, key: str) -> Kernel:
        """Compile (once) the variant ``key`` for this GPU's arch and load it."""
        if key in self._cache:
            return self._cache[key]
        from atp.plugins import aot

        variant = {v.key: v for v in aot.variants()}[key]
        compiled = aot.compile_variant(variant, self.compute_capability())
        module, fn = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self.cuda.cuModuleLoadData(ctypes.byref(module), compiled.asm["cubin"]), "cuModuleLoadData")
        self._check(self.cuda.cuModuleGetFunction(ctypes.byref(fn), module, compiled.metadata.name.encode()),
                    "cuModuleGetFunction")
        k = Kernel(fn, compiled.metadata.num_warps, compiled.metadata.shared, dict(variant.constexprs))
        self._cache[key] = k
        return k

    def launch(self, key: str, grid: tuple[int, int, int], args: list) -> None:
        """Launch ``key`` with ``args`` (torch tensors -> pointers, ints -> int32) plus the two null scratch pointers."""
        k = self.kernel(key)
        values = []
        for a in args:
            if isinstance(a, self.torch.Tensor):
                values.append(ctypes.c_void_p(a.data_ptr()))
            elif isinstance(a, int):
                values.append(ctypes.c_int32(a))
            else:
                raise TypeError(f"unsupported kernel argument {type(a)}")
        values += [ctypes.c_void_p(0), ctypes.c_void_p(0)]
        params = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        stream = ctypes.c_void_p(self.torch.cuda.current_stream().cuda_stream)
        self._check(self.cuda.cuLaunchKernel(k.function, *grid, 32 * k.num_warps, 1, 1, k.shared, stream, params, None),
                    f"cuLaunchKernel({key})")


def topk_gate(launcher: Launcher, scores, tokens, keep: int):
    """TopKGate on CUDA tensors with the plugin's cubins and launch geometry.

    Returns:
        (kept [B,K,D], kept_index int64 [B,K], the size-tensor output: int64 [1] on the GPU).
    """
    from atp.plugins.aot import TOPK_BLOCKS

    torch = launcher.torch
    b, n = scores.shape
    d = tokens.shape[2]
    dt = {torch.float32: "fp32", torch.float16: "fp16"}
    block = next(bn for bn in TOPK_BLOCKS if n <= bn)
    keep_t = torch.tensor([keep], dtype=torch.int64, device="cuda")
    size = torch.zeros(1, dtype=torch.int64, device="cuda")
    index = torch.empty(b, keep, dtype=torch.int32, device="cuda")
    out = torch.empty(b, keep, d, dtype=tokens.dtype, device="cuda")
    launcher.launch(f"topk_index/{dt[scores.dtype]}/{block}", (b, 1, 1), [scores, keep_t, index, size, n, n])
    gather = launcher.kernel(f"gather_rows/{dt[tokens.dtype]}")
    rows = -(-n // gather.tile["BLOCK_K"])
    launcher.launch(f"gather_rows/{dt[tokens.dtype]}", (b, rows, 1), [tokens, index, keep_t, out, n, d, n * d, d])
    return out, index.long(), size


def mixed_gemm(launcher: Launcher, x, layout: dict):
    """MixedGemm on CUDA tensors (x fp16 [M, Kin], layout tensors on the GPU) with the plugin's cubins: y fp16 [M, Nout]."""
    from atp.plugins.mixed_gemm.kernel import GEMV_MAX_M

    torch = launcher.torch
    m, kin = x.shape
    w8, s8, w4, s4, z4 = (layout[k] for k in ("w8", "s8", "w4", "s4", "z4"))
    n8, n4, group = w8.shape[0], w4.shape[0], int(layout["group"])
    y = torch.empty(m, n8 + n4, dtype=torch.float16, device="cuda")
    path = "gemv" if m <= GEMV_MAX_M else "prefill"
    for key, w, s, z, col, n, g, swn, ssn in (
            (f"mixed_gemm/int8/{path}", w8, s8, s8, 0, n8, kin, kin, 1),
            (f"mixed_gemm/int4/{'zp/' if z4 is not None else ''}{path}", w4, s4, z4 if z4 is not None else s4, n8, n4, group,
             kin // 2, kin // group)):
        if n == 0:
            continue
        k = launcher.kernel(key)
        grid = (-(-m // k.tile["BLOCK_M"]), -(-n // k.tile["BLOCK_N"]), 1)
        launcher.launch(key, grid, [x, w, s, z, y[:, col:], m, n, kin, g, kin, swn, ssn, n8 + n4])
    return y
