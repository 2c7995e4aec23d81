// One entry per step for ops.cpp and check.cpp: quantize a row of A, compute a range of output rows, apply the
// SwiGLU epilogue, on the ISA path chosen at kernel creation.
#pragma once

#include "kernels.h"
#include "kernels_arm.h"
#include "kernels_x86.h"

namespace atp_cpu {

inline void quantize_a(const float* a, const Problem& p, int8_t* xq, float* sx, float* corr, int32_t* ncx, Isa isa) {
#if ATP_X86
  if (isa == Isa::kAvx512Vnni) return quantize_row_avx512(a, p, xq, sx, ncx);
#endif
  (void)isa;
  quantize_row(a, p, xq, sx, corr, ncx);
}

inline void run_rows(const Problem& p, int64_t r0, int64_t r1, Isa isa) {
#if ATP_X86
  if (isa == Isa::kAvx512Vnni) return run_avx512(p, r0, r1);
  if (isa == Isa::kAvx2) return gemm_avx2(p, r0, r1);
#endif
#if ATP_NEON_DOT
  if (isa == Isa::kNeonDot) return rows_neon(p, r0, r1);
#endif
  (void)isa;
  rows_scalar(p, r0, r1);
}

inline void swiglu(const float* y, int64_t n, int64_t m, int64_t r0, int64_t r1, float* out, Isa isa) {
#if ATP_X86
  if (isa == Isa::kAvx512Vnni) return swiglu_avx512(y, n, m, r0, r1, out);
#endif
  (void)isa;
  swiglu_scalar(y, n, m, r0, r1, out);
}

// The Problem's shape fields for M rows of A against an N x K weight of `bits` bits in blocks of `bs`.
inline Problem make_problem(int64_t m, int64_t n, int64_t k, int64_t bs, int bits) {
  Problem p;
  p.m = m, p.n = n, p.k = k, p.bs = bs, p.bits = bits;
  p.nblk = (k + bs - 1) / bs;
  p.kp = p.nblk * bs, p.nchunk = p.kp / kChunk;
  while (bs > 32 && (kChunk << p.shift) < bs) ++p.shift;
  p.npairs = bits == 8 ? 0 : p.nchunk / 2, p.units = bits == 8 ? p.nchunk : (p.nchunk + 1) / 2;
  p.stride = size_t(p.kp * bits / 8);
  return p;
}

}  // namespace atp_cpu
