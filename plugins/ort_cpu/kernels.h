// atp.cpu::MatMulInt4 / MatMulInt8: what every CPU runs. The layout of A's codes, A's quantization (the numerics of
// MatMulNBits accuracy_level 4), the portable scalar kernels and the SwiGLU epilogue. No ONNX Runtime dependency.
// The x86 SIMD paths are in kernels_x86.h, the ORT op in ops.cpp.
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ATP_X86 1
#else
#define ATP_X86 0
#endif
#if defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#define ATP_NEON_DOT 1
#else
#define ATP_NEON_DOT 0
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace atp_cpu {

constexpr int64_t kChunk = 64;  // elements of A per 32-byte load of B

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2, kNeonDot = 3 };
inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Vnni: return "avx512vnni";
    case Isa::kAvx2: return "avx2";
    case Isa::kNeonDot: return "neondot";
    default: return "scalar";
  }
}

// The best path this CPU runs; ATP_ORT_CPU_ISA=scalar|avx2|avx512vnni|neondot picks another one it also runs.
inline Isa detect_isa() {
  std::vector<Isa> have = {Isa::kScalar};
#if ATP_X86 && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) have.push_back(Isa::kAvx2);
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni"))
    have.push_back(Isa::kAvx512Vnni);
#endif
#if ATP_NEON_DOT
  have.push_back(Isa::kNeonDot);  // compiled for dot-product CPUs (Jetson Orin / Xavier): the builder checks the host
#endif
  const char* want = std::getenv("ATP_ORT_CPU_ISA");
  if (want && *want)
    for (Isa isa : have)
      if (std::strcmp(want, isa_name(isa)) == 0) return isa;
  return have.back();
}

// One MatMulInt4 problem: y[M, N] = A[M, K] x W[N, K]^T.
//
// Layout of A's int8 codes (xq), chosen so that B needs no shuffles: K (padded to whole blocks) is cut into pairs
// of 64-element chunks (128 elements = 64 packed bytes of B, one 512-bit load) and, when the chunk count is odd,
// one trailing chunk. In a pair, bytes 0..63 hold its even elements and bytes 64..127 its odd ones: byte j of B
// holds elements 2j (low nibble) and 2j + 1 (high nibble), so (B & 0x0F) lines up with the even codes and
// (B & 0xF0) = 16 x high nibble with the odd ones. The trailing chunk holds its 32 even codes, then its 32 odd ones
// (one 256-bit load of B, unpacked to low nibbles then high nibbles).
struct Problem {
  const uint8_t* b = nullptr;    // [N, nblk * bs / 2]
  const float* sw = nullptr;     // [N, nblk]
  const int8_t* xq = nullptr;    // [M, kp] (layout above)
  const float* sx = nullptr;     // [M, nblk]
  const float* corr = nullptr;   // [M, nblk]: 8 * sx * sum(q) (the unsigned-code correction, scalar/AVX2 paths)
  const int32_t* ncx = nullptr;  // [M, units, 16]: -8 * (sum of the A codes under int32 lane l), AVX-512 path
  float* y = nullptr;            // [M, N]
  int64_t m = 0, n = 0, k = 0, bs = 0, nblk = 0, kp = 0, nchunk = 0, npairs = 0, units = 0;
  int shift = 0;                 // log2(chunks per block) for block_size >= 64
  int bits = 4;                  // 4: the layout above; 8: B one code per byte (q + 128), A codes in natural order
  size_t stride = 0;             // bytes of B per row
  int32_t offset() const { return bits == 8 ? 128 : 8; }  // the unsigned codes' zero point
};

// position of element i (of the padded row) in xq
inline int64_t code_pos(const Problem& p, int64_t i) {
  if (p.bits == 8) return i;
  const int64_t pair = i / 128;
  if (pair < p.npairs) {
    const int64_t e = i % 128;
    return pair * 128 + (e % 2) * 64 + e / 2;
  }
  const int64_t e = i - p.npairs * 128;  // the trailing chunk
  return p.npairs * 128 + (e % 2) * 32 + e / 2;
}

// xq offsets of chunk c's even and odd codes (32 each)
inline void chunk_offsets(const Problem& p, int64_t c, int64_t* even, int64_t* odd) {
  if (c < 2 * p.npairs) {
    *even = (c / 2) * 128 + (c % 2) * 32;
    *odd = *even + 64;
  } else {
    *even = p.npairs * 128;
    *odd = *even + 32;
  }
}

// ---------------------------------------------------------------------------------------------- A quantization
inline void quantize_row(const float* a, const Problem& p, int8_t* xq, float* sx, float* corr, int32_t* ncx) {
  std::memset(xq, 0, size_t(p.kp));
  for (int64_t b = 0; b < p.nblk; ++b) {
    const int64_t lo = b * p.bs, hi = std::min(p.k, lo + p.bs);
    float amax = 0.f;
    for (int64_t i = lo; i < hi; ++i) amax = std::max(amax, std::fabs(a[i]));
    const float s = amax / 127.f;
    const float inv = s > 0.f ? 1.f / s : 0.f;  // as the AVX-512 path (and reference.py) compute it
    int sum = 0;
    for (int64_t i = lo; i < hi; ++i) {
      const int q = std::clamp(int(std::nearbyint(a[i] * inv)), -127, 127);
      xq[code_pos(p, i)] = int8_t(q);
      sum += q;
    }
    sx[b] = s;
    corr[b] = float(p.offset()) * s * float(sum);
  }
  // dpbusd lane l sums 4 (code x A) products per input; starting it from -offset * (sum of the A codes it meets)
  // makes it the signed dot (codes are q + offset), so the AVX-512 path needs no correction pass. int4 pair lane l
  // meets bytes 4l..4l+3 of the even and of the odd half, trailing-chunk and int8 lane l bytes 4l..4l+3 of the unit.
  const int64_t unit = p.bits == 8 ? 64 : 128;
  for (int64_t u = 0; u < p.units; ++u)
    for (int l = 0; l < 16; ++l) {
      int32_t sum = 0;
      for (int j = 0; j < 4; ++j) sum += xq[u * unit + 4 * l + j];
      if (p.bits == 4 && u < p.npairs)
        for (int j = 0; j < 4; ++j) sum += xq[u * unit + 64 + 4 * l + j];
      ncx[u * 16 + l] = -p.offset() * sum;
    }
}

inline float correction(const float* sw, const float* corr, int64_t nblk) {
  float c = 0.f;
  for (int64_t b = 0; b < nblk; ++b) c += sw[b] * corr[b];
  return c;
}

// ---------------------------------------------------------------------------------------------- per-output driver
// One output at a time, for the paths that compute y[m, r] as one dot over K (scalar, AVX2, NEON):
// y[m, r] = dot(weight row r, its block scales, A row m's codes, its block scales, m).
template <class Dot>
inline void for_each_output(const Problem& p, int64_t r0, int64_t r1, const Dot& dot) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = p.b + size_t(r) * p.stride;
    const float* sw = p.sw + r * p.nblk;
    for (int64_t m = 0; m < p.m; ++m) p.y[m * p.n + r] = dot(row, sw, p.xq + m * p.kp, p.sx + m * p.nblk, m);
  }
}

// ---------------------------------------------------------------------------------------------- scalar
inline void rows_scalar(const Problem& p, int64_t r0, int64_t r1) {
  for_each_output(p, r0, r1, [&p](const uint8_t* row, const float* sw, const int8_t* xq, const float* sx, int64_t m) {
    float acc = 0.f;
    for (int64_t b = 0; b < p.nblk; ++b) {
      int32_t dot = 0;
      for (int64_t i = b * p.bs; i < (b + 1) * p.bs; ++i) {
        const uint8_t byte = p.bits == 8 ? row[i] : row[i / 2];
        const int u = p.bits == 8 ? byte : (i % 2) ? (byte >> 4) : (byte & 15);
        dot += u * xq[code_pos(p, i)];
      }
      acc += sw[b] * sx[b] * float(dot);
    }
    return acc - correction(sw, p.corr + m * p.nblk, p.nblk);
  });
}

// ---------------------------------------------------------------------------------------------- SwiGLU epilogue
// swiglu = 1: the weight rows are [gate; up] (N = 2H) and the op returns silu(gate) * up, [.., H], the MLP's
// Split + Sigmoid + Mul + Mul in one pass over rows the task just computed.
inline void swiglu_scalar(const float* y, int64_t n, int64_t m, int64_t r0, int64_t r1, float* out) {
  const int64_t h = n / 2;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = r0; j < r1; ++j) {
      const float g = y[i * n + j];
      out[i * h + j] = g / (1.f + std::exp(-g)) * y[i * n + h + j];
    }
}


}  // namespace atp_cpu
