"""Triton kernel of MixedGemm: ``y = x @ W^T`` with W split into int8 rows and int4 rows.

One kernel, specialised by constexprs, covers both parts of the layout (``reference.py``)
and both numeric paths:

- ``IS_INT4``: weights are packed 4-bit codes (low nibble = even k), unpacked in registers
  and shifted by their zero point into signed int8; otherwise plain int8 rows. The int8 part
  is the special case of one group spanning Kin with one scale per output feature.
- ``INT8_ACT`` (prefill, large M): each program quantizes its BLOCK_M tokens to int8 on the
  fly (per-token scale ``max|x| / 127``, found in a first pass over Kin) and runs int8 MMA
  (``mma.sync ... s8.s8.s32`` / IMMA), accumulating int32 within a group, then scaling the
  group's sum by the group scale in fp32 (MixLLM's two-step dequantization), and the token
  scale at the end. Otherwise (decode, M <= 8: the GEMV path) x is fp16 and the integer
  weights are exact in fp16, so fp16 MMA with fp32 accumulation reads each weight byte once;
  the tile is BLOCK_M = 16 rows, of which only M are live (the path is bandwidth-bound).

Grid: ``(cdiv(M, BLOCK_M), cdiv(N_part, BLOCK_N))``; the output pointer and stride address
the part's columns of ``y [M, n8 + n4]`` fp16.
"""

from __future__ import annotations

import triton
import triton.language as tl

BLOCK_K = 32          # Kin step; int4 group sizes must be multiples of it
GEMV_MAX_M = 8        # M <= this: fp16 (GEMV) path; above: int8-MMA prefill path
GEMV_BLOCKS = {"BLOCK_M": 16, "BLOCK_N": 64}
PREFILL_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64}


@triton.jit
def mixed_gemm_kernel(x_ptr, w_ptr, s_ptr, z_ptr, y_ptr, M, N, KIN, GROUP, stride_xm, stride_wn, stride_sn, stride_ym,
                      IS_INT4: tl.constexpr, HAS_ZP: tl.constexpr, INT8_ACT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mmask = rm < M
    nmask = rn < N
    x_rows = x_ptr + rm[:, None].to(tl.int64) * stride_xm
    if INT8_ACT:
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, KIN, BLOCK_K):
            xv = tl.load(x_rows + (k0 + rk)[None, :], mask=mmask[:, None], other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(xv), axis=1))
        sx = amax / 127.0
        sx = tl.where(sx > 0, sx, 1.0)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_groups = KIN // GROUP
    for gi in range(0, n_groups):
        if INT8_ACT:
            acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        else:
            acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if HAS_ZP:
            zp = tl.load(z_ptr + rn * stride_sn + gi, mask=nmask, other=8).to(tl.int32)
        else:
            zp = tl.full((BLOCK_N,), 8, tl.int32)
        for kk in range(0, GROUP, BLOCK_K):
            k = gi * GROUP + kk + rk
            xv = tl.load(x_rows + k[None, :], mask=mmask[:, None], other=0.0).to(tl.float32)
            if IS_INT4:
                packed = tl.load(w_ptr + rn[None, :].to(tl.int64) * stride_wn + (k // 2)[:, None],
                                 mask=nmask[None, :], other=0).to(tl.int32)
                code = (packed >> ((k % 2) * 4)[:, None]) & 0xF
                wq = (code - zp[None, :]).to(tl.int8)            # [BLOCK_K, BLOCK_N] in -15..15
            else:
                wq = tl.load(w_ptr + rn[None, :].to(tl.int64) * stride_wn + k[:, None], mask=nmask[None, :], other=0)
            if INT8_ACT:
                v = xv / sx[:, None]
                xq = tl.minimum(tl.maximum((v + 0.5 * tl.where(v >= 0, 1.0, -1.0)).to(tl.int32), -127), 127).to(tl.int8)
                acc_g += tl.dot(xq, wq.to(tl.int8), out_dtype=tl.int32)
            else:
                acc_g += tl.dot(xv.to(tl.float16), wq.to(tl.float16), out_dtype=tl.float32)
        scale = tl.load(s_ptr + rn * stride_sn + gi, mask=nmask, other=0.0).to(tl.float32)
        acc += acc_g.to(tl.float32) * scale[None, :]
    if INT8_ACT:
        acc = acc * sx[:, None]
    tl.store(y_ptr + rm[:, None].to(tl.int64) * stride_ym + rn[None, :], acc.to(tl.float16),
             mask=mmask[:, None] & nmask[None, :])


def mixed_gemm(x, layout: dict, mode: str | None = None):
    """Run the kernel on torch tensors (CPU under the interpreter, or CUDA).

    Args:
        x: ``[M, Kin]`` float16/float32 activations.
        layout: numpy or torch arrays as from ``reference.quantize_mixed``.
        mode: ``"fp16"`` or ``"int8"``; default picks by M (``<= GEMV_MAX_M``: fp16).

    Returns:
        ``[M, n8 + n4]`` float16.
    """
    import torch

    def t(a):
        return a if isinstance(a, torch.Tensor) else torch.from_numpy(a)

    m, kin = x.shape
    mode = mode or ("fp16" if m <= GEMV_MAX_M else "int8")
    if mode not in ("fp16", "int8"):
        raise ValueError(f"mode must be 'fp16' or 'int8', got {mode!r}")
    group = int(layout["group"])
    if group % BLOCK_K or kin % group:
        raise ValueError(f"group size {group} must be a multiple of {BLOCK_K} and divide Kin={kin}")
    w8, s8, w4, s4 = (t(layout[k]).contiguous().to(x.device) for k in ("w8", "s8", "w4", "s4"))
    z4 = layout.get("z4")
    n8, n4 = w8.shape[0], w4.shape[0]
    x = x.contiguous()
    y = torch.empty(m, n8 + n4, dtype=torch.float16, device=x.device)
    blocks = GEMV_BLOCKS if mode == "fp16" else PREFILL_BLOCKS
    common = {"INT8_ACT": mode == "int8", "BLOCK_K": BLOCK_K, **blocks}
    if n8:
        grid = (triton.cdiv(m, blocks["BLOCK_M"]), triton.cdiv(n8, blocks["BLOCK_N"]))
        mixed_gemm_kernel[grid](x, w8, s8, s8, y, m, n8, kin, kin, x.stride(0), w8.stride(0), 1, y.stride(0),
                                IS_INT4=False, HAS_ZP=False, **common)
    if n4:
        z = t(z4).contiguous().to(x.device) if z4 is not None else s4
        grid = (triton.cdiv(m, blocks["BLOCK_M"]), triton.cdiv(n4, blocks["BLOCK_N"]))
        mixed_gemm_kernel[grid](x, w4, s4, z, y[:, n8:], m, n4, kin, group, x.stride(0), w4.stride(0), s4.stride(0),
                                y.stride(0), IS_INT4=True, HAS_ZP=z4 is not None, **common)
    return y
