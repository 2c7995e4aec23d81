// atp.cpu::MatMulInt4 / MatMulInt8 on x86: the AVX-512 VNNI path (the fast one: int4 pairs of chunks, int8 chunks,
// GEMV and prefill tiles, A quantization, SwiGLU epilogue) and the AVX2 path. Compiled with function target
// attributes, so one library serves every x86-64 CPU; ops.cpp picks the path at kernel creation.
#pragma once

#include <type_traits>

#include "kernels.h"

#if ATP_X86
namespace atp_cpu {

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
ATP_AVX512 inline void quantize_row_avx512(const float* a, const Problem& p, int8_t* xq, float* sx, int32_t* ncx) {
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

// y[m0 + j, r + i] = sum of acc[i][j]'s lanes
template <int R, int MT>
ATP_AVX512 inline void store_tile(const Problem& p, const __m512 (&acc)[R][MT], int64_t r, int64_t m0) {
  for (int j = 0; j < MT; ++j) {
    float* y = p.y + (m0 + j) * p.n + r;
    if (R == 4) {
      _mm_storeu_ps(y, hsum4(acc[0][j], acc[R > 1 ? 1 : 0][j], acc[R > 2 ? 2 : 0][j], acc[R > 3 ? 3 : 0][j]));
    } else {
      for (int i = 0; i < R; ++i) y[i] = _mm512_reduce_add_ps(acc[i][j]);
    }
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
  store_tile<R, MT>(p, acc, r, m0);
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
  store_tile<R, MT>(p, acc, r, m0);
}

// One tile of rows r..r+R-1 x A rows m0..m0+MT-1, int4 or int8 weights.
template <int kBs, int R, int MT, int kBits>
ATP_AVX512 inline void tile(const Problem& p, int64_t r, int64_t m0) {
  if (kBits == 8) return tile8_avx512<kBs, R, MT>(p, r, m0);
  return tile_avx512<kBs, R, MT>(p, r, m0);
}

// Rows r0..r1-1 for every row of A: tiles of 4 weight rows x 4 A rows (then the remainders); int4 decode (M = 1)
// runs the streaming GEMV instead (int8 decode is the 4 x 1 tile, which prefetches).
template <int kBs, int kBits>
ATP_AVX512 void rows_avx512(const Problem& p, int64_t r0, int64_t r1) {
  if (kBits == 4 && p.m == 1) return gemv_avx512<kBs>(p, r0, r1);
  const auto rows = [&p](auto rr, int64_t r) {
    constexpr int R = decltype(rr)::value;
    int64_t m = 0;
    for (; m + 4 <= p.m; m += 4) tile<kBs, R, 4, kBits>(p, r, m);
    switch (p.m - m) {
      case 3: tile<kBs, R, 3, kBits>(p, r, m); break;
      case 2: tile<kBs, R, 2, kBits>(p, r, m); break;
      case 1: tile<kBs, R, 1, kBits>(p, r, m); break;
      default: break;
    }
  };
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) rows(std::integral_constant<int, 4>(), r);
  for (; r < r1; ++r) rows(std::integral_constant<int, 1>(), r);
}

inline void run_avx512(const Problem& p, int64_t r0, int64_t r1) {
  if (p.bits == 8) {
    if (p.bs == 32) return rows_avx512<32, 8>(p, r0, r1);
    return rows_avx512<kLarge, 8>(p, r0, r1);
  }
  if (p.bs == 32) return rows_avx512<32, 4>(p, r0, r1);
  if (p.bs == 64) return rows_avx512<64, 4>(p, r0, r1);
  return rows_avx512<kLarge, 4>(p, r0, r1);
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

ATP_AVX2 inline float hsum8(__m256 acc) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
}

// One output of int4 weights (for_each_output's Dot; a functor, since lambdas do not take target attributes).
struct Int4DotAvx2 {
  const Problem& p;
  std::vector<int64_t> off;  // xq offsets of each chunk's even and odd codes
  explicit Int4DotAvx2(const Problem& prob) : p(prob), off(size_t(2 * prob.nchunk)) {
    for (int64_t c = 0; c < p.nchunk; ++c) chunk_offsets(p, c, &off[2 * c], &off[2 * c + 1]);
  }
  ATP_AVX2 float operator()(const uint8_t* row, const float* sw, const int8_t* xq, const float* sx, int64_t m) const {
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const bool split = p.bs == 32;
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
    return hsum8(acc) - correction(sw, p.corr + m * p.nblk, p.nblk);
  }
};

// One output of int8 weights: codes as signed q = u - 128 (xor 0x80); maddubs(|q|, sign(x, q)) keeps every pair
// sum within int16.
struct Int8DotAvx2 {
  const Problem& p;
  ATP_AVX2 float operator()(const uint8_t* row, const float* sw, const int8_t* xq, const float* sx, int64_t) const {
    const __m256i ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(int8_t(0x80));
    __m256 acc = _mm256_setzero_ps();
    for (int64_t c = 0; c < p.nchunk; ++c) {
      for (int h = 0; h < 2; ++h) {  // 32 codes = one block half of the chunk
        const __m256i q = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c * 64 + 32 * h)), flip);
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + c * 64 + 32 * h));
        const __m256i d = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(q), _mm256_sign_epi8(x, q)), ones);
        const int64_t b = p.bs == 32 ? 2 * c + h : c >> p.shift;
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(sw[b] * sx[b]), acc);
      }
    }
    return hsum8(acc);
  }
};

inline void gemm_avx2(const Problem& p, int64_t r0, int64_t r1) {
  if (p.bits == 8) return for_each_output(p, r0, r1, Int8DotAvx2{p});
  for_each_output(p, r0, r1, Int4DotAvx2(p));
}

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

ATP_AVX512 inline void swiglu_avx512(const float* y, int64_t n, int64_t m, int64_t r0, int64_t r1, float* out) {
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

}  // namespace atp_cpu
#endif  // ATP_X86
