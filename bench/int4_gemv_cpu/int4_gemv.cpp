// Prototype: how fast can an int4 x int8 GEMV (M = 1) stream SmolLM2-135M's decode weights on this CPU?
// (Kept as the stand-alone measurement it was; the shipped op is plugins/ort_cpu/ (ops.cpp, kernels*.h).)
//
// Issue 4 measured ONNX Runtime's MatMulNBits (int4, accuracy_level 4) reading its packed weights at
// ~6.6 GB/s per thread, a third of fp32 MatMul's rate, which caps int4 decode at ~4.2x fp32 for the
// GEMVs alone (bench/decode_gemv.py). This program times a plain AVX-512 VNNI kernel (and an fp32 AVX-512
// GEMV, same harness) over one decode step's weights: 30 x (qkv 960x576, o 576x576, gate_up 3072x576,
// down 576x1536) + lm_head 49152x576, every matrix its own allocation, so weights stream from memory.
//
// Format: MatMulNBits' own (bits 4, block 64, symmetric, no zero points): per row, K/64 blocks of 32 bytes
// (byte j: element 2j in the low nibble, 2j + 1 in the high nibble, unsigned 0..15 = q + 8) and one fp32 scale
// per block, so a graph rewrite could hand this kernel MatMulNBits' initializers unchanged. x is quantized to
// int8 per 64-block (symmetric, like accuracy_level 4) and stored even elements first, then odd ones, to match
// the unpacked order (low nibbles, then high nibbles).
// `int4_gemv --check DIR N K` reads DIR/{B,scales,x}.bin (uint8 [N, K/2], fp32 [N, K/64], fp32 [K]) and writes
// DIR/y.bin (fp32 [N]): the parity test against ONNX Runtime's MatMulNBits uses it.
// Checks every output against a double-precision reference of the same quantized operands before timing.
// Both kernels prefetch (software, a few rows ahead): without it the int4 kernel read ~6.5 GB/s per thread,
// MatMulNBits' rate; with it ~11 GB/s. Timing: fp32 and int4 steps round-robin, medians.
//
// Build and run (bench/int4_gemv_cpu/run.sh does both; needs AVX-512 VNNI):
//   g++ -O3 -march=native -fopenmp -o int4_gemv int4_gemv.cpp && ./int4_gemv [repeats]
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr int kBlock = 64;
#ifndef PREFETCH_FP32
#define PREFETCH_FP32 1
#endif
constexpr bool kPrefetchFp32 = PREFETCH_FP32;

struct Int4Matrix {
  int n = 0, k = 0;
  std::vector<uint8_t> packed;  // n * (k / 64) * 32
  std::vector<float> scales;    // n * (k / 64)
};

struct Fp32Matrix {
  int n = 0, k = 0;
  std::vector<float> w;  // n * k, row-major
};

Int4Matrix quantize_int4(const std::vector<float>& w, int n, int k) {
  Int4Matrix m;
  m.n = n;
  m.k = k;
  int nb = k / kBlock;
  m.packed.assign(size_t(n) * nb * 32, 0);
  m.scales.assign(size_t(n) * nb, 0.f);
  for (int r = 0; r < n; ++r) {
    for (int b = 0; b < nb; ++b) {
      const float* src = &w[size_t(r) * k + b * kBlock];
      float amax = 0.f;
      for (int i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(src[i]));
      float scale = amax > 0 ? amax / 7.f : 1.f;
      m.scales[size_t(r) * nb + b] = scale;
      uint8_t* dst = &m.packed[(size_t(r) * nb + b) * 32];
      for (int j = 0; j < 32; ++j) {
        int lo = std::clamp(int(std::nearbyint(src[2 * j] / scale)), -8, 7) + 8;
        int hi = std::clamp(int(std::nearbyint(src[2 * j + 1] / scale)), -8, 7) + 8;
        dst[j] = uint8_t(lo | (hi << 4));
      }
    }
  }
  return m;
}

// x -> int8 per 64-block (even elements, then odd: the unpacked nibble order), scales, and
// 8 * scale * sum(q) per block (the unsigned-weight correction).
void quantize_x(const float* x, int k, int8_t* xq, float* xs, float* corr) {
  for (int b = 0; b < k / kBlock; ++b) {
    float amax = 0.f;
    for (int i = 0; i < kBlock; ++i) amax = std::max(amax, std::fabs(x[b * kBlock + i]));
    float s = amax > 0 ? amax / 127.f : 1.f;
    int sum = 0;
    for (int i = 0; i < kBlock; ++i) {
      int q = std::clamp(int(std::nearbyint(x[b * kBlock + i] / s)), -127, 127);
      xq[b * kBlock + (i % 2) * 32 + i / 2] = int8_t(q);
      sum += q;
    }
    xs[b] = s;
    corr[b] = 8.f * s * float(sum);
  }
}

// y[r] = sum_b sw[r,b] * (sx[b] * dot(u4[r,b], xq[b]) - corr[b])   (u4 = q + 8)
// Four rows per iteration: four independent accumulator chains hide the dpbusd/fma latencies.
static inline __m512i unpack(const uint8_t* p, __m256i low) {
  __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(v, low)),
                            _mm256_and_si256(_mm256_srli_epi16(v, 4), low), 1);
}

// The unsigned-weight correction sum_b sw[r,b] * corr[b] is a dot over the row's scales, done 16 blocks at a
// time after the main loop (nb <= 24 here); the inner loop reads one precomputed scale product per block.
static inline float scale_dot(const float* sw, const float* v, int nb) {
  __m512 acc = _mm512_setzero_ps();
  int b = 0;
  for (; b + 16 <= nb; b += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(sw + b), _mm512_loadu_ps(v + b), acc);
  float c = _mm512_reduce_add_ps(acc);
  for (; b < nb; ++b) c += sw[b] * v[b];
  return c;
}

void gemv_int4(const Int4Matrix& m, const int8_t* xq, const float* xs, const float* corr, float* y) {
  const int nb = m.k / kBlock;
  const __m256i low = _mm256_set1_epi8(0x0F);
  const int n4 = m.n / 4;
#pragma omp parallel for schedule(static)
  for (int g = 0; g < n4; ++g) {
    const int r = 4 * g;
    const uint8_t* row = &m.packed[size_t(r) * nb * 32];
    const float* sw = &m.scales[size_t(r) * nb];
    const size_t stride = size_t(nb) * 32;
    alignas(64) float s[4][32];
    for (int b = 0; b < nb; ++b)
      for (int i = 0; i < 4; ++i) s[i][b] = sw[i * nb + b] * xs[b];
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
      const __m512i xv = _mm512_loadu_si512(xq + b * kBlock);
      const uint8_t* p = row + b * 32;
      _mm_prefetch(reinterpret_cast<const char*>(p + 8 * stride), _MM_HINT_T0);  // two row groups ahead
      _mm_prefetch(reinterpret_cast<const char*>(p + 9 * stride), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + 10 * stride), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + 11 * stride), _MM_HINT_T0);
      __m512i d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), unpack(p, low), xv);
      __m512i d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), unpack(p + stride, low), xv);
      __m512i d2 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), unpack(p + 2 * stride, low), xv);
      __m512i d3 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), unpack(p + 3 * stride, low), xv);
      a0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d0), _mm512_set1_ps(s[0][b]), a0);
      a1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), _mm512_set1_ps(s[1][b]), a1);
      a2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d2), _mm512_set1_ps(s[2][b]), a2);
      a3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d3), _mm512_set1_ps(s[3][b]), a3);
    }
    y[r] = _mm512_reduce_add_ps(a0) - scale_dot(sw, corr, nb);
    y[r + 1] = _mm512_reduce_add_ps(a1) - scale_dot(sw + nb, corr, nb);
    y[r + 2] = _mm512_reduce_add_ps(a2) - scale_dot(sw + 2 * nb, corr, nb);
    y[r + 3] = _mm512_reduce_add_ps(a3) - scale_dot(sw + 3 * nb, corr, nb);
  }
  for (int r = 4 * n4; r < m.n; ++r) {  // tail rows
    const uint8_t* row = &m.packed[size_t(r) * nb * 32];
    const float* sw = &m.scales[size_t(r) * nb];
    __m512 acc = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
      __m512i dp = _mm512_dpbusd_epi32(_mm512_setzero_si512(), unpack(row + b * 32, low), _mm512_loadu_si512(xq + b * kBlock));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dp), _mm512_set1_ps(sw[b] * xs[b]), acc);
    }
    y[r] = _mm512_reduce_add_ps(acc) - scale_dot(sw, corr, nb);
  }
}

void gemv_fp32(const Fp32Matrix& m, const float* x, float* y) {
#pragma omp parallel for schedule(static)
  for (int r = 0; r < m.n; ++r) {
    const float* row = &m.w[size_t(r) * m.k];
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < m.k; i += 16) {
      if (kPrefetchFp32) _mm_prefetch(reinterpret_cast<const char*>(row + 4 * m.k + i), _MM_HINT_T0);  // four rows ahead
      acc = _mm512_fmadd_ps(_mm512_loadu_ps(row + i), _mm512_loadu_ps(x + i), acc);
    }
    y[r] = _mm512_reduce_add_ps(acc);
  }
}

struct Shape {
  const char* name;
  int n, k, count;
};

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

std::string cpu_name() {
  FILE* f = std::fopen("/proc/cpuinfo", "r");
  char line[512];
  std::string name = "unknown CPU";
  while (f && std::fgets(line, sizeof line, f))
    if (std::strncmp(line, "model name", 10) == 0) {
      name = std::strchr(line, ':') + 2;
      name.erase(name.find_last_not_of(" \n") + 1);
      break;
    }
  if (f) std::fclose(f);
  return name;
}

int check_mode(const char* dir, int n, int k) {
  auto read = [&](const char* name, void* dst, size_t bytes) {
    std::string path = std::string(dir) + "/" + name;
    FILE* f = std::fopen(path.c_str(), "rb");
    size_t got = f ? std::fread(dst, 1, bytes, f) : 0;
    if (f) std::fclose(f);
    if (got != bytes) {
      std::fprintf(stderr, "error: %s: expected %zu bytes, read %zu\n", path.c_str(), bytes, got);
      return false;
    }
    return true;
  };
  if (k % kBlock || n < 1) {
    std::fprintf(stderr, "error: K must be a multiple of %d and N >= 1 (got N=%d K=%d)\n", kBlock, n, k);
    return 2;
  }
  Int4Matrix m;
  m.n = n;
  m.k = k;
  m.packed.resize(size_t(n) * k / 2);
  m.scales.resize(size_t(n) * k / kBlock);
  std::vector<float> x(k), y(n), xs(k / kBlock), corr(k / kBlock);
  std::vector<int8_t> xq(k);
  if (!read("B.bin", m.packed.data(), m.packed.size()) || !read("scales.bin", m.scales.data(), m.scales.size() * 4) ||
      !read("x.bin", x.data(), x.size() * 4))
    return 2;
  quantize_x(x.data(), k, xq.data(), xs.data(), corr.data());
  gemv_int4(m, xq.data(), xs.data(), corr.data(), y.data());
  std::string out = std::string(dir) + "/y.bin";
  FILE* f = std::fopen(out.c_str(), "wb");
  if (!f || std::fwrite(y.data(), 4, y.size(), f) != y.size()) {
    std::fprintf(stderr, "error: cannot write %s\n", out.c_str());
    return 2;
  }
  std::fclose(f);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 5 && std::strcmp(argv[1], "--check") == 0) return check_mode(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
  int repeats = argc > 1 ? std::atoi(argv[1]) : 20;
  std::printf("machine: %s, %d logical cores; fp32 GEMV software prefetch %s\n", cpu_name().c_str(), omp_get_num_procs(),
              kPrefetchFp32 ? "on" : "off");
  const Shape shapes[] = {{"qkv", 960, 576, 30}, {"o_proj", 576, 576, 30}, {"gate_up", 3072, 576, 30},
                          {"down_proj", 576, 1536, 30}, {"lm_head", 49152, 576, 1}};
  std::mt19937 gen(0);
  std::normal_distribution<float> dist(0.f, 0.02f);
  std::vector<Int4Matrix> q4;
  std::vector<Fp32Matrix> f32;
  std::vector<const char*> names;
  size_t bytes4 = 0, bytes32 = 0;
  for (const Shape& s : shapes) {
    for (int c = 0; c < s.count; ++c) {
      std::vector<float> w(size_t(s.n) * s.k);
      for (float& v : w) v = dist(gen);
      q4.push_back(quantize_int4(w, s.n, s.k));
      bytes4 += q4.back().packed.size() + q4.back().scales.size() * 4;
      f32.push_back(Fp32Matrix{s.n, s.k, std::move(w)});
      bytes32 += f32.back().w.size() * 4;
      names.push_back(s.name);
    }
  }
  std::vector<float> x1536(1536), y(49152), yref(49152);
  std::normal_distribution<float> xd(0.f, 1.f);
  for (float& v : x1536) v = xd(gen);
  std::vector<int8_t> xq(1536);
  std::vector<float> xs(1536 / kBlock), corr(1536 / kBlock);

  // correctness: every matrix against a double reference of the same quantized operands
  double worst = 0;
  for (size_t i = 0; i < q4.size(); ++i) {
    const Int4Matrix& m = q4[i];
    quantize_x(x1536.data(), m.k, xq.data(), xs.data(), corr.data());
    gemv_int4(m, xq.data(), xs.data(), corr.data(), y.data());
    int nb = m.k / kBlock;
    for (int r = 0; r < m.n; ++r) {
      double ref = 0, mag = 0;
      for (int b = 0; b < nb; ++b)
        for (int j = 0; j < 32; ++j) {
          uint8_t p = m.packed[(size_t(r) * nb + b) * 32 + j];
          double w_lo = double(int(p & 15) - 8) * m.scales[size_t(r) * nb + b];
          double w_hi = double(int(p >> 4) - 8) * m.scales[size_t(r) * nb + b];
          double x_lo = double(xq[b * kBlock + j]) * xs[b], x_hi = double(xq[b * kBlock + j + 32]) * xs[b];
          ref += w_lo * x_lo + w_hi * x_hi;
          mag += std::fabs(w_lo * x_lo) + std::fabs(w_hi * x_hi);
        }
      worst = std::max(worst, std::fabs(y[r] - ref) / (mag + 1e-12));
    }
  }
  std::printf("correctness: max |int4 kernel - double reference| / sum|terms| = %.2e (%s)\n", worst,
              worst < 1e-5 ? "ok" : "FAILED");
  if (worst >= 1e-5) return 1;

  auto step_int4 = [&]() {
    for (const Int4Matrix& m : q4) {
      quantize_x(x1536.data(), m.k, xq.data(), xs.data(), corr.data());
      gemv_int4(m, xq.data(), xs.data(), corr.data(), y.data());
    }
  };
  auto step_fp32 = [&]() {
    for (const Fp32Matrix& m : f32) gemv_fp32(m, x1536.data(), y.data());
  };
  std::printf("one decode step's GEMVs: %zu matrices, int4 %.1f MB, fp32 %.1f MB\n", q4.size(), bytes4 / 1e6, bytes32 / 1e6);
  std::printf("| threads | fp32 ms / step | int4 ms / step | int4 x fp32 | fp32 GB/s | int4 GB/s |\n|---:|---:|---:|---:|---:|---:|\n");
  for (int threads : {1, 2}) {
    if (threads > omp_get_num_procs()) break;
    omp_set_num_threads(threads);
    std::vector<double> t4, t32;
    step_int4();
    step_fp32();
    for (int r = 0; r < repeats; ++r) {  // round-robin, medians
      double a = now();
      step_fp32();
      double b = now();
      step_int4();
      double c = now();
      t32.push_back(b - a);
      t4.push_back(c - b);
    }
    std::sort(t4.begin(), t4.end());
    std::sort(t32.begin(), t32.end());
    double m4 = t4[t4.size() / 2], m32 = t32[t32.size() / 2];
    std::printf("| %d | %.2f | %.2f | %.2f | %.1f | %.1f |\n", threads, m32 * 1e3, m4 * 1e3, m32 / m4, bytes32 / m32 / 1e9,
                bytes4 / m4 / 1e9);
  }
  return 0;
}
