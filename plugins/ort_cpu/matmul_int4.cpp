// libatp_ort_cpu: ONNX Runtime CPU custom op `atp.cpu::MatMulInt4`, an int4 x int8 GEMM that reads
// com.microsoft.MatMulNBits' own initializers (bits 4, symmetric: no zero points), so a graph rewrite swaps
// the op type and keeps every tensor (atp.plugins.ort_cpu.swap_matmulnbits).
//
// Why: at decode (M = 1) MatMulNBits (accuracy_level 4) streams its packed weights at ~6.6 GB/s per thread on
// the Xeon we measure on, a third of fp32 MatMul's rate, which kept int4 decode near 3x fp32. This op runs one
// decode step's GEMVs 1.6-1.8x faster (bench/decode_gemv.py --atpcpu); the prototype is bench/int4_gemv_cpu/.
//
// Numerics = MatMulNBits accuracy_level 4: each row of A is quantized to int8 per block of `block_size`
// (symmetric, scale = max|a| / 127, round half to even), y = sum_b sw[n,b] * sa[m,b] * dot(q_w, q_a), the block
// dots exact in int32. Weights: B uint8 [N, nblk, block_size / 2] (byte j of a block: element 2j in the low
// nibble, 2j + 1 in the high one, unsigned code = q + 8), scales fp32 [N * nblk]; K is padded to
// nblk * block_size with zeros. A's codes are laid out to match B's packing (see Problem); reference.py is the
// numpy reference. Optional `swiglu = 1`: rows are [gate; up] and the output is silu(gate) * up.
//
// Paths: AVX-512 VNNI (the fast one), AVX2 (maddubs) and portable scalar C++; the best the CPU has is picked at
// kernel creation (ATP_ORT_CPU_ISA=scalar|avx2|avx512vnni picks a lower one, e.g. for tests). Threads: ORT's intra-op pool
// (KernelContext_ParallelFor), so the op never competes with ORT's own spinning workers.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define ATP_X86 1
#else
#define ATP_X86 0
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr const char* kDomain = "atp.cpu";
constexpr const char* kVersion = "1";
constexpr int64_t kChunk = 64;  // elements of A per 32-byte load of B

enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512Vnni = 2 };
const char* isa_name(Isa isa) {
  return isa == Isa::kAvx512Vnni ? "avx512vnni" : isa == Isa::kAvx2 ? "avx2" : "scalar";
}

Isa detect_isa() {
  Isa best = Isa::kScalar;
#if ATP_X86 && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni"))
    best = Isa::kAvx512Vnni;
#endif
  const char* want = std::getenv("ATP_ORT_CPU_ISA");
  if (want && *want) {
    for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512Vnni})
      if (std::strcmp(want, isa_name(isa)) == 0 && int(isa) <= int(best)) return isa;
  }
  return best;
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
void quantize_row(const float* a, const Problem& p, int8_t* xq, float* sx, float* corr, int32_t* ncx) {
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

// ---------------------------------------------------------------------------------------------- scalar
void rows_scalar(const Problem& p, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = p.b + size_t(r) * p.stride;
    const float* sw = p.sw + r * p.nblk;
    for (int64_t m = 0; m < p.m; ++m) {
      const int8_t* xq = p.xq + m * p.kp;
      const float* sx = p.sx + m * p.nblk;
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
      p.y[m * p.n + r] = acc - correction(sw, p.corr + m * p.nblk, p.nblk);
    }
  }
}

#if ATP_X86
// ---------------------------------------------------------------------------------------------- AVX-512 VNNI
#define ATP_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))

// Block size classes the AVX-512 path is specialised for: 32, 64, and >= 128 (kLarge, block = unit >> shift).
constexpr int kLarge = 128;

// Scale of each int32 lane of pair u's dot, from per-block scales s. Pair lane l covers elements 8l..8l+7 of the
// pair: block 4u + l / 4 (bs 32), 2u + l / 8 (bs 64), or one block (bs >= 128).
template <int kBs>
ATP_AVX512 inline __m512 pair_scale(const float* s, int64_t u, int shift) {
  if (kBs == 32) {
    const __m512i idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_loadu_ps(s + 4 * u)));
  }
  if (kBs == 64) {
    const __m512i idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s + 2 * u)))));
  }
  return _mm512_set1_ps(s[(2 * u) >> shift]);
}

// Scale of each int32 lane of the trailing chunk c: lane l covers elements of half (l % 8) / 4, i.e. blocks 2c and
// 2c + 1 for bs 32, else block c >> shift.
template <int kBs>
ATP_AVX512 inline __m512 chunk_scale(const float* s, int64_t c, int shift) {
  if (kBs == 32) return _mm512_mask_blend_ps(0xF0F0, _mm512_set1_ps(s[2 * c]), _mm512_set1_ps(s[2 * c + 1]));
  return _mm512_set1_ps(s[c >> shift]);
}

// signed dot lanes of one pair: (B & 0x0F) . even codes + ((B & 0xF0) . odd codes) / 16, started at ncx
ATP_AVX512 inline __m512i pair_dot(__m512i v, __m512i xe, __m512i xo, __m512i nc) {
  const __m512i lo = _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
  const __m512i hi = _mm512_and_si512(v, _mm512_set1_epi8(int8_t(0xF0)));
  return _mm512_add_epi32(_mm512_dpbusd_epi32(nc, lo, xe), _mm512_srai_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), hi, xo), 4));
}

ATP_AVX512 inline __m512i unpack512(const uint8_t* q) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, low)), _mm256_and_si256(_mm256_srli_epi16(v, 4), low), 1);
}

ATP_AVX512 inline __m128 hsum256(__m512 a) {
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// [sum(a0), sum(a1), sum(a2), sum(a3)]
ATP_AVX512 inline __m128 hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  return _mm_hadd_ps(_mm_hadd_ps(hsum256(a0), hsum256(a1)), _mm_hadd_ps(hsum256(a2), hsum256(a3)));
}

ATP_AVX512 inline __m512 load16(const float* a, int64_t i, int64_t k) {  // 16 floats of A from element i, zero past K
  const int64_t left = k - i;
  if (left >= 16) return _mm512_loadu_ps(a + i);
  return left > 0 ? _mm512_maskz_loadu_ps(__mmask16((1u << left) - 1), a + i) : _mm512_setzero_ps();
}

// quantize_row for the AVX-512 path, same numbers (round half to even, scale = amax / 127): per block amax, then per
// 32 elements: scale, round, split even/odd elements, narrow to int8, store at their layout positions; ncx from
// dpbusd with all-ones bytes. Elements past K (the last block's padding) read as zero.
ATP_AVX512 void quantize_row_avx512(const float* a, const Problem& p, int8_t* xq, float* sx, int32_t* ncx) {
  for (int64_t b = 0; b < p.nblk; ++b) {
    __m512 m = _mm512_setzero_ps();
    for (int64_t i = b * p.bs; i < (b + 1) * p.bs; i += 16) m = _mm512_max_ps(m, _mm512_abs_ps(load16(a, i, p.k)));
    sx[b] = _mm512_reduce_max_ps(m) / 127.f;
  }
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t i = 0; i < p.kp; i += 32) {
    const float s = sx[i / p.bs];
    const __m512 inv = _mm512_set1_ps(s > 0.f ? 1.f / s : 0.f);
    const __m512 v0 = load16(a, i, p.k), v1 = load16(a, i + 16, p.k);
    if (p.bits == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + i), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, inv))));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + i + 16), _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, inv))));
      continue;
    }
    const int64_t pos = code_pos(p, i);  // element i is even: its code's slot; the odd ones sit 64 (pair) or 32 later
    const int64_t odd_off = i / 128 < p.npairs ? 64 : 32;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + pos),
                     _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_permutex2var_ps(v0, even, v1), inv))));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(xq + pos + odd_off),
                     _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_permutex2var_ps(v0, odd, v1), inv))));
  }
  const __m512i ones = _mm512_set1_epi8(1);
  const int64_t unit = p.bits == 8 ? 64 : 128;
  const __m512i off = _mm512_set1_epi32(-p.offset());
  for (int64_t u = 0; u < p.units; ++u) {
    const int8_t* base = xq + u * unit;
    __m512i sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(base));
    if (p.bits == 4 && u < p.npairs) sums = _mm512_dpbusd_epi32(sums, ones, _mm512_loadu_si512(base + 64));
    _mm512_storeu_si512(ncx + u * 16, _mm512_mullo_epi32(sums, off));
  }
}

// M = 1: four rows per iteration (four independent chains), prefetching two row groups ahead: the hardware
// prefetcher does not keep up with a stream consumed this slowly (measured: 6.5 vs 11 GB/s per thread).
template <int kBs>
ATP_AVX512 void gemv_avx512(const Problem& p, int64_t r0, int64_t r1) {
  const size_t st = p.stride;
  const int sh = p.shift;
  const int64_t tail = 2 * p.npairs;  // chunk index of the trailing chunk (if nchunk is odd)
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const uint8_t* row = p.b + size_t(r) * st;
    const float *w0 = p.sw + r * p.nblk, *w1 = w0 + p.nblk, *w2 = w1 + p.nblk, *w3 = w2 + p.nblk;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int64_t u = 0; u < p.npairs; ++u) {
      const __m512i xe = _mm512_loadu_si512(p.xq + u * 128), xo = _mm512_loadu_si512(p.xq + u * 128 + 64);
      const __m512i nc = _mm512_loadu_si512(p.ncx + u * 16);
      const __m512 sx = pair_scale<kBs>(p.sx, u, sh);
      const uint8_t* q = row + u * 64;
      _mm_prefetch(reinterpret_cast<const char*>(q + 8 * st), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(q + 9 * st), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(q + 10 * st), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(q + 11 * st), _MM_HINT_T0);
      const __m512 d0 = _mm512_mul_ps(_mm512_cvtepi32_ps(pair_dot(_mm512_loadu_si512(q), xe, xo, nc)), sx);
      const __m512 d1 = _mm512_mul_ps(_mm512_cvtepi32_ps(pair_dot(_mm512_loadu_si512(q + st), xe, xo, nc)), sx);
      const __m512 d2 = _mm512_mul_ps(_mm512_cvtepi32_ps(pair_dot(_mm512_loadu_si512(q + 2 * st), xe, xo, nc)), sx);
      const __m512 d3 = _mm512_mul_ps(_mm512_cvtepi32_ps(pair_dot(_mm512_loadu_si512(q + 3 * st), xe, xo, nc)), sx);
      a0 = _mm512_fmadd_ps(d0, pair_scale<kBs>(w0, u, sh), a0);
      a1 = _mm512_fmadd_ps(d1, pair_scale<kBs>(w1, u, sh), a1);
      a2 = _mm512_fmadd_ps(d2, pair_scale<kBs>(w2, u, sh), a2);
      a3 = _mm512_fmadd_ps(d3, pair_scale<kBs>(w3, u, sh), a3);
    }
    if (p.nchunk % 2) {
      const __m512i xv = _mm512_loadu_si512(p.xq + p.npairs * 128);
      const __m512i nc = _mm512_loadu_si512(p.ncx + p.npairs * 16);
      const __m512 sx = chunk_scale<kBs>(p.sx, tail, sh);
      const uint8_t* q = row + tail * 32;
      const __m512 d0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, unpack512(q), xv)), sx);
      const __m512 d1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, unpack512(q + st), xv)), sx);
      const __m512 d2 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, unpack512(q + 2 * st), xv)), sx);
      const __m512 d3 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, unpack512(q + 3 * st), xv)), sx);
      a0 = _mm512_fmadd_ps(d0, chunk_scale<kBs>(w0, tail, sh), a0);
      a1 = _mm512_fmadd_ps(d1, chunk_scale<kBs>(w1, tail, sh), a1);
      a2 = _mm512_fmadd_ps(d2, chunk_scale<kBs>(w2, tail, sh), a2);
      a3 = _mm512_fmadd_ps(d3, chunk_scale<kBs>(w3, tail, sh), a3);
    }
    _mm_storeu_ps(p.y + r, hsum4(a0, a1, a2, a3));
  }
  for (; r < r1; ++r) {
    const uint8_t* row = p.b + size_t(r) * st;
    const float* w = p.sw + r * p.nblk;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t u = 0; u < p.npairs; ++u) {
      const __m512i d = pair_dot(_mm512_loadu_si512(row + u * 64), _mm512_loadu_si512(p.xq + u * 128),
                                 _mm512_loadu_si512(p.xq + u * 128 + 64), _mm512_loadu_si512(p.ncx + u * 16));
      acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d), pair_scale<kBs>(p.sx, u, sh)), pair_scale<kBs>(w, u, sh), acc);
    }
    if (p.nchunk % 2) {
      const __m512i d = _mm512_dpbusd_epi32(_mm512_loadu_si512(p.ncx + p.npairs * 16), unpack512(row + tail * 32),
                                            _mm512_loadu_si512(p.xq + p.npairs * 128));
      acc = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d), chunk_scale<kBs>(p.sx, tail, sh)), chunk_scale<kBs>(w, tail, sh), acc);
    }
    p.y[r] = _mm512_reduce_add_ps(acc);
  }
}

// M > 1 (prefill): a tile of R weight rows x MT rows of A; each loaded pair of B serves MT rows of A.
template <int kBs, int R, int MT>
ATP_AVX512 void tile_avx512(const Problem& p, int64_t r, int64_t m0) {
  const int sh = p.shift;
  const int64_t tail = 2 * p.npairs;
  __m512 acc[R][MT];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < MT; ++j) acc[i][j] = _mm512_setzero_ps();
  const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8(int8_t(0xF0));
  for (int64_t u = 0; u < p.npairs; ++u) {
    __m512i lo[R], hi[R];
    __m512 sw[R];
    for (int i = 0; i < R; ++i) {
      const __m512i v = _mm512_loadu_si512(p.b + size_t(r + i) * p.stride + u * 64);
      lo[i] = _mm512_and_si512(v, low);
      hi[i] = _mm512_and_si512(v, high);
      sw[i] = pair_scale<kBs>(p.sw + (r + i) * p.nblk, u, sh);
    }
    for (int j = 0; j < MT; ++j) {
      const int8_t* xq = p.xq + (m0 + j) * p.kp + u * 128;
      const __m512i xe = _mm512_loadu_si512(xq), xo = _mm512_loadu_si512(xq + 64);
      const __m512i nc = _mm512_loadu_si512(p.ncx + ((m0 + j) * p.units + u) * 16);
      const __m512 sx = pair_scale<kBs>(p.sx + (m0 + j) * p.nblk, u, sh);
      for (int i = 0; i < R; ++i) {
        const __m512i d = _mm512_add_epi32(_mm512_dpbusd_epi32(nc, lo[i], xe),
                                           _mm512_srai_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), hi[i], xo), 4));
        acc[i][j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(d), sx), sw[i], acc[i][j]);
      }
    }
  }
  if (p.nchunk % 2) {
    for (int i = 0; i < R; ++i) {
      const __m512i wv = unpack512(p.b + size_t(r + i) * p.stride + tail * 32);
      const __m512 sw = chunk_scale<kBs>(p.sw + (r + i) * p.nblk, tail, sh);
      for (int j = 0; j < MT; ++j) {
        const __m512i xv = _mm512_loadu_si512(p.xq + (m0 + j) * p.kp + p.npairs * 128);
        const __m512i nc = _mm512_loadu_si512(p.ncx + ((m0 + j) * p.units + p.npairs) * 16);
        const __m512 sx = chunk_scale<kBs>(p.sx + (m0 + j) * p.nblk, tail, sh);
        acc[i][j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, wv, xv)), sx), sw, acc[i][j]);
      }
    }
  }
  for (int j = 0; j < MT; ++j) {
    float* y = p.y + (m0 + j) * p.n + r;
    if (R == 4) {
      _mm_storeu_ps(y, hsum4(acc[0][j], acc[R > 1 ? 1 : 0][j], acc[R > 2 ? 2 : 0][j], acc[R > 3 ? 3 : 0][j]));
    } else {
      for (int i = 0; i < R; ++i) y[i] = _mm512_reduce_add_ps(acc[i][j]);
    }
  }
}

template <int kBs, int R>
ATP_AVX512 void tiles_avx512(const Problem& p, int64_t r) {
  int64_t m = 0;
  for (; m + 4 <= p.m; m += 4) tile_avx512<kBs, R, 4>(p, r, m);
  switch (p.m - m) {
    case 3: tile_avx512<kBs, R, 3>(p, r, m); break;
    case 2: tile_avx512<kBs, R, 2>(p, r, m); break;
    case 1: tile_avx512<kBs, R, 1>(p, r, m); break;
    default: break;
  }
}

template <int kBs>
ATP_AVX512 void rows_avx512(const Problem& p, int64_t r0, int64_t r1) {
  if (p.m == 1) return gemv_avx512<kBs>(p, r0, r1);
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) tiles_avx512<kBs, 4>(p, r);
  for (; r < r1; ++r) tiles_avx512<kBs, 1>(p, r);
}

// ---- int8 weights (bits = 8): one 64-byte load of B = 64 codes of one chunk, A codes in natural order. Lane l
// covers elements 4l..4l+3: blocks 2c (lanes 0-7) and 2c + 1 (lanes 8-15) for bs 32, else block c >> shift.
template <int kBs>
ATP_AVX512 inline __m512 scale8(const float* s, int64_t c, int shift) {
  if (kBs == 32) return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s[2 * c]), _mm512_set1_ps(s[2 * c + 1]));
  return _mm512_set1_ps(s[c >> shift]);
}

template <int kBs, int R, int MT>
ATP_AVX512 void tile8_avx512(const Problem& p, int64_t r, int64_t m0) {
  const int sh = p.shift;
  const size_t st = p.stride;
  __m512 acc[R][MT];
  for (int i = 0; i < R; ++i)
    for (int j = 0; j < MT; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int64_t c = 0; c < p.nchunk; ++c) {
    __m512i w[R];
    __m512 sw[R];
    for (int i = 0; i < R; ++i) {
      const uint8_t* q = p.b + size_t(r + i) * st + c * 64;
      if (MT == 1 && R == 4) _mm_prefetch(reinterpret_cast<const char*>(q + 8 * st), _MM_HINT_T0);  // decode: stream
      w[i] = _mm512_loadu_si512(q);
      sw[i] = scale8<kBs>(p.sw + (r + i) * p.nblk, c, sh);
    }
    for (int j = 0; j < MT; ++j) {
      const __m512i xv = _mm512_loadu_si512(p.xq + (m0 + j) * p.kp + c * 64);
      const __m512i nc = _mm512_loadu_si512(p.ncx + ((m0 + j) * p.units + c) * 16);
      const __m512 sx = scale8<kBs>(p.sx + (m0 + j) * p.nblk, c, sh);
      for (int i = 0; i < R; ++i)
        acc[i][j] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(nc, w[i], xv)), sx), sw[i], acc[i][j]);
    }
  }
  for (int j = 0; j < MT; ++j) {
    float* y = p.y + (m0 + j) * p.n + r;
    if (R == 4) {
      _mm_storeu_ps(y, hsum4(acc[0][j], acc[R > 1 ? 1 : 0][j], acc[R > 2 ? 2 : 0][j], acc[R > 3 ? 3 : 0][j]));
    } else {
      for (int i = 0; i < R; ++i) y[i] = _mm512_reduce_add_ps(acc[i][j]);
    }
  }
}

template <int kBs, int R>
ATP_AVX512 void tiles8_avx512(const Problem& p, int64_t r) {
  int64_t m = 0;
  for (; m + 4 <= p.m; m += 4) tile8_avx512<kBs, R, 4>(p, r, m);
  switch (p.m - m) {
    case 3: tile8_avx512<kBs, R, 3>(p, r, m); break;
    case 2: tile8_avx512<kBs, R, 2>(p, r, m); break;
    case 1: tile8_avx512<kBs, R, 1>(p, r, m); break;
    default: break;
  }
}

template <int kBs>
ATP_AVX512 void rows8_avx512(const Problem& p, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) tiles8_avx512<kBs, 4>(p, r);
  for (; r < r1; ++r) tiles8_avx512<kBs, 1>(p, r);
}

void run_avx512(const Problem& p, int64_t r0, int64_t r1) {
  if (p.bits == 8) {
    if (p.bs == 32) return rows8_avx512<32>(p, r0, r1);
    return rows8_avx512<kLarge>(p, r0, r1);
  }
  if (p.bs == 32) return rows_avx512<32>(p, r0, r1);
  if (p.bs == 64) return rows_avx512<64>(p, r0, r1);
  return rows_avx512<kLarge>(p, r0, r1);
}

// ---------------------------------------------------------------------------------------------- AVX2
#define ATP_AVX2 __attribute__((target("avx2,fma")))

// A chunk unpacks into two 256-bit halves (low nibbles = chunk elements 0, 2, .., 62; high = 1, 3, .., 63); int32
// lane l of either half covers elements of block (chunk * 64 + 8 * l) / bs, so one lane scale serves both.
ATP_AVX2 inline __m256 lane_scale256(const float* s, int64_t c, bool split, int shift) {
  if (split) return _mm256_blend_ps(_mm256_set1_ps(s[2 * c]), _mm256_set1_ps(s[2 * c + 1]), 0xF0);
  return _mm256_set1_ps(s[c >> shift]);
}

// dot of 32 unsigned codes (<= 15) with 32 int8 values, as 8 int32 lanes (maddubs pairs fit int16: 2 * 15 * 127)
ATP_AVX2 inline __m256i dot_u4_s8(__m256i u, __m256i x, __m256i ones) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), ones);
}

ATP_AVX2 void gemm_avx2(const Problem& p, int64_t r0, int64_t r1) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const bool split = p.bs == 32;
  std::vector<int64_t> off(size_t(2 * p.nchunk));
  for (int64_t c = 0; c < p.nchunk; ++c) chunk_offsets(p, c, &off[2 * c], &off[2 * c + 1]);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = p.b + size_t(r) * p.stride;
    const float* sw = p.sw + r * p.nblk;
    for (int64_t m = 0; m < p.m; ++m) {
      const int8_t* xq = p.xq + m * p.kp;
      const float* sx = p.sx + m * p.nblk;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t c = 0; c < p.nchunk; ++c) {
        const uint8_t* q = row + c * 32;
        if (p.m == 1) _mm_prefetch(reinterpret_cast<const char*>(q + 4 * p.stride), _MM_HINT_T0);
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
        const __m256i lo = _mm256_and_si256(v, low), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + off[2 * c]));
        const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + off[2 * c + 1]));
        const __m256 s = _mm256_mul_ps(lane_scale256(sw, c, split, p.shift), lane_scale256(sx, c, split, p.shift));
        const __m256i d = _mm256_add_epi32(dot_u4_s8(lo, x0, ones), dot_u4_s8(hi, x1, ones));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, acc);
      }
      __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
      p.y[m * p.n + r] = _mm_cvtss_f32(h) - correction(sw, p.corr + m * p.nblk, p.nblk);
    }
  }
}
// int8 weights: codes as signed q = u - 128 (xor 0x80); maddubs(|q|, sign(x, q)) keeps every pair sum within int16
ATP_AVX2 void gemm8_avx2(const Problem& p, int64_t r0, int64_t r1) {
  const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(int8_t(0x80));
  const bool split = p.bs == 32;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = p.b + size_t(r) * p.stride;
    const float* sw = p.sw + r * p.nblk;
    for (int64_t m = 0; m < p.m; ++m) {
      const int8_t* xq = p.xq + m * p.kp;
      const float* sx = p.sx + m * p.nblk;
      __m256 acc = _mm256_setzero_ps();
      for (int64_t c = 0; c < p.nchunk; ++c) {
        for (int h = 0; h < 2; ++h) {  // 32 codes = one block half of the chunk
          const __m256i q = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c * 64 + 32 * h)), flip);
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c * 64 + 32 * h));
          const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(x, q)), ones);
          const int64_t b = split ? 2 * c + h : c >> p.shift;
          acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(sw[b] * sx[b]), acc);
        }
      }
      __m128 hs = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
      hs = _mm_add_ps(hs, _mm_movehl_ps(hs, hs));
      hs = _mm_add_ss(hs, _mm_shuffle_ps(hs, hs, 1));
      p.y[m * p.n + r] = _mm_cvtss_f32(hs);
    }
  }
}
#endif  // ATP_X86

// ---------------------------------------------------------------------------------------------- SwiGLU epilogue
// swiglu = 1: the weight rows are [gate; up] (N = 2H) and the op returns silu(gate) * up, [.., H], the MLP's
// Split + Sigmoid + Mul + Mul in one pass over rows the task just computed.
void swiglu_scalar(const float* y, int64_t n, int64_t m, int64_t r0, int64_t r1, float* out) {
  const int64_t h = n / 2;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = r0; j < r1; ++j) {
      const float g = y[i * n + j];
      out[i * h + j] = g / (1.f + std::exp(-g)) * y[i * n + h + j];
    }
}

#if ATP_X86
// exp via 2^n * 2^f: n = round(x log2 e), |f| <= 0.5, 2^f = e^(f ln 2) by a degree-6 Taylor polynomial
// (relative error < 2e-7 over the range; inputs clamped to +-88 so nothing overflows)
ATP_AVX512 inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.f)), _mm512_set1_ps(-88.f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 z = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.693147180559945309f));
  __m512 q = _mm512_set1_ps(1.f / 720.f);
  for (float c : {1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f, 1.f}) q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(c));
  return _mm512_scalef_ps(q, n);
}

ATP_AVX512 void swiglu_avx512(const float* y, int64_t n, int64_t m, int64_t r0, int64_t r1, float* out) {
  const int64_t h = n / 2;
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = r0; j < r1; j += 16) {
      const __mmask16 mask = r1 - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (r1 - j)) - 1);
      const __m512 g = _mm512_maskz_loadu_ps(mask, y + i * n + j);
      const __m512 u = _mm512_maskz_loadu_ps(mask, y + i * n + h + j);
      const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
      _mm512_mask_storeu_ps(out + i * h + j, mask, _mm512_mul_ps(silu, u));
    }
}
#endif

void run_rows(const Problem& p, int64_t r0, int64_t r1, Isa isa) {
#if ATP_X86
  if (isa == Isa::kAvx512Vnni) return run_avx512(p, r0, r1);
  if (isa == Isa::kAvx2) return p.bits == 8 ? gemm8_avx2(p, r0, r1) : gemm_avx2(p, r0, r1);
#endif
  (void)isa;
  rows_scalar(p, r0, r1);
}

// ---------------------------------------------------------------------------------------------- the ORT op
constexpr size_t kTasks = 24;  // row ranges per GEMM: even shares for 1, 2, 3, 4, 6, 8 and 12 threads

struct RowTask {
  const Problem* p;
  Isa isa;
  int64_t rows, groups, per_task;  // rows: N, or H = N / 2 with the SwiGLU epilogue (gate row j pairs with up row H + j)
  float* act = nullptr;            // the SwiGLU output [M, H], or null
};

void row_task(void* data, size_t i) {
  const RowTask& t = *static_cast<const RowTask*>(data);
  const int64_t g0 = int64_t(i) * t.per_task, g1 = std::min(t.groups, g0 + t.per_task);
  if (g0 >= g1) return;
  const int64_t r0 = 4 * g0, r1 = std::min(t.rows, 4 * g1);
  run_rows(*t.p, r0, r1, t.isa);
  if (!t.act) return;
  run_rows(*t.p, t.rows + r0, t.rows + r1, t.isa);
#if ATP_X86
  if (t.isa == Isa::kAvx512Vnni) return swiglu_avx512(t.p->y, t.p->n, t.p->m, r0, r1, t.act);
#endif
  swiglu_scalar(t.p->y, t.p->n, t.p->m, r0, r1, t.act);
}

struct QuantTask {
  const float* a;
  Problem* p;
  int8_t* xq;
  float *sx, *corr;
  int32_t* ncx;
  Isa isa;
};

void quant_task(void* data, size_t m) {
  const QuantTask& t = *static_cast<const QuantTask*>(data);
#if ATP_X86
  if (t.isa == Isa::kAvx512Vnni)
    return quantize_row_avx512(t.a + m * t.p->k, *t.p, t.xq + m * t.p->kp, t.sx + m * t.p->nblk, t.ncx + m * t.p->units * 16);
#endif
  quantize_row(t.a + m * t.p->k, *t.p, t.xq + m * t.p->kp, t.sx + m * t.p->nblk, t.corr + m * t.p->nblk,
               t.ncx + m * t.p->units * 16);
}

int64_t optional_int(const Ort::ConstKernelInfo& ki, const char* name, int64_t fallback) {
  try {
    return ki.GetAttribute<int64_t>(name);
  } catch (const Ort::Exception&) {
    return fallback;
  }
}

struct MatMulKernel {
  int64_t k = 0, n = 0, bs = 0, nblk = 0;
  bool swiglu = false;
  std::vector<float> yfull;  // [M, N] before the SwiGLU epilogue
  Isa isa = Isa::kScalar;
  std::vector<int8_t> xq;
  std::vector<float> sx, corr;
  std::vector<int32_t> ncx;
  int shift = 0;

  int bits = 4;
  std::string name;

  MatMulKernel(const OrtKernelInfo* info, int op_bits) : bits(op_bits), name(op_bits == 8 ? "MatMulInt8" : "MatMulInt4") {
    Ort::ConstKernelInfo ki(info);
    k = ki.GetAttribute<int64_t>("K");
    n = ki.GetAttribute<int64_t>("N");
    bs = ki.GetAttribute<int64_t>("block_size");
    const int64_t attr_bits = ki.GetAttribute<int64_t>("bits");
    swiglu = optional_int(ki, "swiglu", 0) != 0;
    if (swiglu && n % 2) throw std::invalid_argument(name + " swiglu = 1 needs an even N (gate rows, then up rows)");
    if (attr_bits != bits)
      throw std::invalid_argument(name + " supports bits = " + std::to_string(bits) + " only, got " + std::to_string(attr_bits));
    if (k < 1 || n < 1) throw std::invalid_argument(name + " needs K >= 1 and N >= 1");
    if (!(bs == 32 || (bs >= 64 && bs % 64 == 0)))
      throw std::invalid_argument(name + " needs block_size 32 or a multiple of 64, got " + std::to_string(bs));
    nblk = (k + bs - 1) / bs;
    if ((nblk * bs) % kChunk)
      throw std::invalid_argument(name + " needs ceil(K / block_size) * block_size to be a multiple of 64");
    if (bs != 32 && (bs & (bs - 1)))
      throw std::invalid_argument(name + " needs a power-of-two block_size, got " + std::to_string(bs));
    while (bs > 32 && (kChunk << shift) < bs) ++shift;
    isa = detect_isa();  // per kernel: ATP_ORT_CPU_ISA applies to sessions created after it is set
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::KernelContext ctx(context);
      Ort::ConstValue a = ctx.GetInput(0), b = ctx.GetInput(1), s = ctx.GetInput(2);
      std::vector<int64_t> shape = a.GetTensorTypeAndShapeInfo().GetShape();
      if (shape.empty() || shape.back() != k)
        return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, (name + ": A's last dimension must be K = " + std::to_string(k)).c_str());
      const size_t b_elems = b.GetTensorTypeAndShapeInfo().GetElementCount(), s_elems = s.GetTensorTypeAndShapeInfo().GetElementCount();
      if (b_elems != size_t(n * nblk * bs * bits / 8) || s_elems != size_t(n * nblk))
        return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, (name + ": B or scales do not hold N x ceil(K / block_size) blocks").c_str());
      int64_t m = 1;
      for (size_t i = 0; i + 1 < shape.size(); ++i) m *= shape[i];
      shape.back() = swiglu ? n / 2 : n;
      Ort::UnownedValue y = ctx.GetOutput(0, shape);
      if (m == 0) return nullptr;
      Problem p;
      p.m = m, p.n = n, p.k = k, p.bs = bs, p.nblk = nblk, p.kp = nblk * bs, p.nchunk = nblk * bs / kChunk, p.shift = shift;
      p.bits = bits;
      p.npairs = bits == 8 ? 0 : p.nchunk / 2, p.units = bits == 8 ? p.nchunk : (p.nchunk + 1) / 2;
      p.stride = size_t(nblk * bs * bits / 8);
      p.b = b.GetTensorData<uint8_t>();
      p.sw = s.GetTensorData<float>();
      if (swiglu) {
        yfull.resize(size_t(m * n));
        p.y = yfull.data();
      } else {
        p.y = y.GetTensorMutableData<float>();
      }
      xq.resize(size_t(m * p.kp) + kChunk);  // + slack: no vector load ends past the buffer
      sx.resize(size_t(m * nblk));
      corr.resize(size_t(m * nblk));
      ncx.resize(size_t(m * p.units * 16));
      const float* ad = a.GetTensorData<float>();
      QuantTask qt{ad, &p, xq.data(), sx.data(), corr.data(), ncx.data(), isa};
      if (m == 1) {
        quant_task(&qt, 0);
      } else {
        ctx.ParallelFor(quant_task, size_t(m), 0, &qt);
      }
      p.xq = xq.data(), p.sx = sx.data(), p.corr = corr.data(), p.ncx = ncx.data();
      const int64_t rows = swiglu ? n / 2 : n;
      RowTask rt{&p, isa, rows, (rows + 3) / 4, 0, swiglu ? y.GetTensorMutableData<float>() : nullptr};
      rt.per_task = (rt.groups + kTasks - 1) / kTasks;
      const size_t tasks = size_t((rt.groups + rt.per_task - 1) / rt.per_task);
      if (tasks == 1) {
        row_task(&rt, 0);
      } else {
        ctx.ParallelFor(row_task, tasks, 0, &rt);
      }
      return nullptr;
    } catch (const Ort::Exception& e) {
      return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_FAIL, (name + ": " + e.what()).c_str());
    }
  }
};

// MatMulInt4 (bits 4) and MatMulInt8 (bits 8, MatMulNBits' int8 layout: one code q + 128 per byte): same contract
template <int kBits>
struct MatMulOp : Ort::CustomOpBase<MatMulOp<kBits>, MatMulKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new MatMulKernel(info, kBits);
      return nullptr;
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    }
  }
  const char* GetName() const { return kBits == 8 ? "MatMulInt8" : "MatMulInt4"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx) {
    Ort::ShapeInferContext::Shape shape = ctx.GetInputShape(0);
    if (shape.empty()) return Ort::Status("MatMulInt4/8: A must have at least one dimension", ORT_INVALID_ARGUMENT);
    int64_t swiglu = 0;
    try {
      swiglu = ctx.GetAttrInt("swiglu");
    } catch (const Ort::Exception&) {
    }
    shape.back() = Ort::ShapeInferContext::SymbolicInteger(ctx.GetAttrInt("N") / (swiglu ? 2 : 1));
    return ctx.SetOutputShape(0, shape);
  }
};

}  // namespace

extern "C" {

__attribute__((visibility("default"))) const char* atp_ort_cpu_isa() { return isa_name(detect_isa()); }
__attribute__((visibility("default"))) const char* atp_ort_cpu_version() { return kVersion; }

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (!api) return nullptr;  // an ONNX Runtime older than the headers: nothing we can report through
  Ort::InitApi(api);
  static const MatMulOp<4> op4;
  static const MatMulOp<8> op8;
  static std::vector<Ort::CustomOpDomain> domains;  // must outlive every session that uses them
  static std::mutex mu;
  try {
    Ort::CustomOpDomain domain{kDomain};
    domain.Add(&op4);
    domain.Add(&op8);
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(mu);
    domains.push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  }
  return nullptr;
}

}  // extern "C"
