"""Triton kernels of TopKGate: per-row top-K selection by bisection, then a row gather.

Selection (``topk_index_kernel``, one program per batch row, the whole row in registers,
N <= 4096): scores are mapped to int32 keys that order like the floats; a 32-step
bisection finds the K-th largest key ``t``; every key above ``t`` is kept, and of the keys
equal to ``t`` the lowest-index ones fill the remaining slots. An exclusive prefix sum of
the kept mask gives each kept token its output slot, so ``kept_index`` comes out in
ascending index order with no sort. Work per row: 34 passes over N values, O(N) memory.

Gather (``gather_rows_kernel``): one program per (batch, block of kept rows), copying
``BLOCK_D`` features at a time.

The same kernels run in the Triton interpreter on the CPU (``TRITON_INTERPRET=1``,
tested against ``reference.py``) and are compiled ahead of time into cubins (``plugins/aot.py``).
"""

from __future__ import annotations

import triton
import triton.language as tl

MAX_N = 4096


@triton.jit
def topk_index_kernel(scores_ptr, keep_ptr, index_ptr, size_ptr, N, stride_sb, BLOCK_N: tl.constexpr):
    """scores [B, N] (fp32 or fp16), keep_ptr -> int64 K (on the device) -> index [B, K] int32, ascending.

    K is clamped to 1..N (the engine's profile already bounds it). Program 0 also writes K to
    ``size_ptr`` (int64): the plugin's size-tensor output. ``index`` is contiguous with row
    stride K, which only the device knows.
    """
    b = tl.program_id(0)
    keep = tl.minimum(tl.maximum(tl.load(keep_ptr).to(tl.int32), 1), N)
    tl.store(size_ptr, keep.to(tl.int64), mask=b == 0)
    offs = tl.arange(0, BLOCK_N)
    valid = offs < N
    s = tl.load(scores_ptr + b * stride_sb + offs, mask=valid, other=0.0).to(tl.float32)
    s = tl.where(s == 0.0, 0.0, s)  # -0.0 ties with +0.0, as in the reference
    bits = s.to(tl.int32, bitcast=True)
    # order-preserving int32 key: negative floats have their magnitude bits flipped
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = key.to(tl.int64)
    key = tl.where(valid, key, -(2**31) - 1)  # padding sorts below every real key
    lo = tl.full((), -(2**31), tl.int64)
    hi = tl.full((), 2**31 - 1, tl.int64)
    # largest t with count(key >= t) >= keep: the keep-th largest key
    for _ in range(32):
        mid = lo + (hi - lo + 1) // 2
        cnt = tl.sum((key >= mid).to(tl.int32), axis=0)
        take = cnt >= keep
        lo = tl.where(take, mid, lo)
        hi = tl.where(take, hi, mid - 1)
    greater = key > lo
    ties = key == lo
    need = keep - tl.sum(greater.to(tl.int32), axis=0)
    tie_rank = tl.cumsum(ties.to(tl.int32), axis=0) - 1
    kept = greater | (ties & (tie_rank < need))
    slot = tl.cumsum(kept.to(tl.int32), axis=0) - 1
    tl.store(index_ptr + b * keep + slot, offs, mask=kept)


@triton.jit
def gather_rows_kernel(tokens_ptr, index_ptr, keep_ptr, out_ptr, N, D, stride_tb, stride_tn,
                       BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """tokens [B, N, D], index [B, K] int32 -> out [B, K, D] contiguous (same dtype as tokens).

    The grid covers N rows (K is only known on the device); rows past K are masked off.
    """
    b = tl.program_id(0)
    keep = tl.minimum(tl.maximum(tl.load(keep_ptr).to(tl.int32), 1), N)
    rows = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    rmask = rows < keep
    src = tl.load(index_ptr + b * keep + rows, mask=rmask, other=0).to(tl.int64)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = rmask[:, None] & (cols < D)[None, :]
        v = tl.load(tokens_ptr + b * stride_tb + src[:, None] * stride_tn + cols[None, :], mask=m)
        tl.store(out_ptr + (b * keep + rows[:, None]).to(tl.int64) * D + cols[None, :], v, mask=m)


def block_n(n: int) -> int:
    """Row width in registers: the next power of two >= n (at least 16)."""
    if not 1 <= n <= MAX_N:
        raise ValueError(f"TopKGate supports 1 <= N <= {MAX_N} tokens per row, got {n}")
    return max(16, triton.next_power_of_2(n))


def topk_gate(scores, tokens, keep: int, block_k: int = 16, block_d: int = 64):
    """Run both kernels on torch tensors (CPU under the interpreter, or CUDA).

    Args:
        scores: ``[B, N]`` float32/float16.
        tokens: ``[B, N, D]`` float32/float16, contiguous.
        keep: 1 <= keep <= N.

    Returns:
        (kept tokens ``[B, keep, D]``, kept_index ``[B, keep]`` int64).
    """
    import torch

    b, n = scores.shape
    if tokens.shape[:2] != (b, n):
        raise ValueError(f"tokens {tuple(tokens.shape)} do not match scores {tuple(scores.shape)}")
    if not 1 <= keep <= n:
        raise ValueError(f"keep must be in 1..{n}, got {keep}")
    scores, tokens = scores.contiguous(), tokens.contiguous()
    d = tokens.shape[2]
    keep_t = torch.tensor([keep], dtype=torch.int64, device=scores.device)
    size = torch.zeros(1, dtype=torch.int64, device=scores.device)
    index = torch.empty(b, keep, dtype=torch.int32, device=scores.device)
    topk_index_kernel[(b,)](scores, keep_t, index, size, n, scores.stride(0), BLOCK_N=block_n(n))
    if int(size) != keep:
        raise RuntimeError(f"size tensor {int(size)} != keep {keep}")
    out = torch.empty(b, keep, d, dtype=tokens.dtype, device=tokens.device)
    gather_rows_kernel[(b, triton.cdiv(n, block_k))](tokens, index, keep_t, out, n, d, tokens.stride(0), tokens.stride(1),
                                                     BLOCK_K=block_k, BLOCK_D=block_d)
    return out, index.to(torch.int64)
