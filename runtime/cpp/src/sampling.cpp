#include "sampling.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "common.hpp"

namespace atp_impl {
namespace {

// ---- numpy SeedSequence (bit_generator.pyx), 32-bit arithmetic
constexpr uint32_t INIT_A = 0x43b0d7e5, MULT_A = 0x931e8875, INIT_B = 0x8b51f9dd, MULT_B = 0x58f38ded;
constexpr uint32_t MIX_MULT_L = 0xca01f9dd, MIX_MULT_R = 0x4973f715;
constexpr int XSHIFT = 16, POOL_SIZE = 4;

uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= MULT_A;
  value *= hash_const;
  value ^= value >> XSHIFT;
  return value;
}
uint32_t mix(uint32_t x, uint32_t y) {
  uint32_t r = MIX_MULT_L * x - MIX_MULT_R * y;
  r ^= r >> XSHIFT;
  return r;
}

std::vector<uint64_t> seed_sequence_state(uint64_t seed, int n_u64) {
  std::vector<uint32_t> entropy{uint32_t(seed)};
  if (seed >> 32) entropy.push_back(uint32_t(seed >> 32));
  uint32_t pool[POOL_SIZE];
  uint32_t hc = INIT_A;
  for (int i = 0; i < POOL_SIZE; ++i) pool[i] = hashmix(size_t(i) < entropy.size() ? entropy[size_t(i)] : 0u, hc);
  for (int s = 0; s < POOL_SIZE; ++s)
    for (int d = 0; d < POOL_SIZE; ++d)
      if (s != d) pool[d] = mix(pool[d], hashmix(pool[s], hc));
  for (size_t s = POOL_SIZE; s < entropy.size(); ++s)
    for (int d = 0; d < POOL_SIZE; ++d) pool[d] = mix(pool[d], hashmix(entropy[s], hc));
  uint32_t hb = INIT_B;
  std::vector<uint32_t> words(size_t(2 * n_u64));
  for (size_t i = 0; i < words.size(); ++i) {
    uint32_t v = pool[i % POOL_SIZE];
    v ^= hb;
    hb *= MULT_B;
    v *= hb;
    v ^= v >> XSHIFT;
    words[i] = v;
  }
  std::vector<uint64_t> out(static_cast<size_t>(n_u64));
  for (int i = 0; i < n_u64; ++i) out[size_t(i)] = uint64_t(words[size_t(2 * i)]) | (uint64_t(words[size_t(2 * i + 1)]) << 32);
  return out;
}

// numpy's pairwise_sum for float64 (umath loops), as used by ndarray.sum() on a contiguous vector:
// the reduction starts from the first element and adds the pairwise sum of the rest.
double pairwise(const double* a, size_t n) {
  if (n < 8) {
    double r = 0.;
    for (size_t i = 0; i < n; ++i) r += a[i];
    return r;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    size_t i = 8;
    for (; i < n - (n % 8); i += 8)
      for (int j = 0; j < 8; ++j) r[j] += a[i + size_t(j)];
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  size_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise(a, n2) + pairwise(a + n2, n - n2);
}
double np_sum(const std::vector<double>& v) { return v.empty() ? 0.0 : v[0] + pairwise(v.data() + 1, v.size() - 1); }

}  // namespace

NumpyPcg64::NumpyPcg64(uint64_t seed) {
  std::vector<uint64_t> v = seed_sequence_state(seed, 4);
  unsigned __int128 initstate = (unsigned __int128)v[0] << 64 | v[1], initseq = (unsigned __int128)v[2] << 64 | v[3];
  state_ = 0;
  inc_ = (initseq << 1) | 1;
  step();
  state_ += initstate;
  step();
}

void NumpyPcg64::step() {
  const unsigned __int128 mult = (unsigned __int128)0x2360ED051FC65DA4ULL << 64 | 0x4385DF649FCCF645ULL;
  state_ = state_ * mult + inc_;
}

uint64_t NumpyPcg64::next_u64() {
  step();
  uint64_t x = uint64_t(state_ >> 64) ^ uint64_t(state_);
  unsigned rot = unsigned(state_ >> 122);
  return (x >> rot) | (x << ((64 - rot) & 63));
}

double NumpyPcg64::random() { return double(next_u64() >> 11) * (1.0 / 9007199254740992.0); }

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {
  if (!(p.temperature >= 0)) fail(ATP_ERR_INVALID_ARGUMENT, "temperature must be >= 0, got " + std::to_string(p.temperature));
  if (p.top_k < 0) fail(ATP_ERR_INVALID_ARGUMENT, "top_k must be >= 0, got " + std::to_string(p.top_k));
  if (!(p.top_p > 0 && p.top_p <= 1)) fail(ATP_ERR_INVALID_ARGUMENT, "top_p must be in (0, 1], got " + std::to_string(p.top_p));
  if (!(p.repetition_penalty > 0)) fail(ATP_ERR_INVALID_ARGUMENT, "repetition_penalty must be > 0, got " + std::to_string(p.repetition_penalty));
}

int32_t Sampler::operator()(std::vector<float>& logits, const std::vector<int32_t>& history) {
  const size_t V = logits.size();
  if (p_.repetition_penalty != 1.0) {  // CTRL / transformers RepetitionPenaltyLogitsProcessor, on generated tokens
    std::vector<char> seen(V, 0);
    const float pen = float(p_.repetition_penalty);
    for (int32_t t : history)
      if (t >= 0 && size_t(t) < V && !seen[size_t(t)]) {
        seen[size_t(t)] = 1;
        float& l = logits[size_t(t)];
        l = l > 0 ? l / pen : l * pen;
      }
  }
  if (p_.temperature == 0.0)  // np.argmax: first maximum
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<double> z(V);
  for (size_t i = 0; i < V; ++i) z[i] = double(logits[i]) / p_.temperature;
  if (p_.top_k > 0 && size_t(p_.top_k) <= V) {  // np.partition(z, -k)[-k]: the k-th largest; smaller ones -> -inf
    std::vector<double> tmp(z);
    std::nth_element(tmp.begin(), tmp.begin() + (p_.top_k - 1), tmp.end(), std::greater<double>());
    double kth = tmp[size_t(p_.top_k - 1)];
    for (double& v : z)
      if (v < kth) v = -std::numeric_limits<double>::infinity();
  }
  double mx = *std::max_element(z.begin(), z.end());
  std::vector<double> p(V);
  for (size_t i = 0; i < V; ++i) p[i] = std::exp(z[i] - mx);
  double s = np_sum(p);
  for (double& v : p) v /= s;
  if (p_.top_p < 1.0) {  // order = argsort(-p); keep through the first index whose cumulative sum reaches top_p
    std::vector<size_t> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
    double cum = 0;
    size_t keep = V;
    for (size_t i = 0; i < V; ++i) {
      cum += p[order[i]];
      if (cum >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
    for (size_t i = keep; i < V; ++i) p[order[i]] = 0;
    double s2 = np_sum(p);
    for (double& v : p) v /= s2;
  }
  // Generator.choice(V, p=p): cdf = cumsum(p) / cdf[-1]; index = searchsorted(cdf, random(), side="right")
  std::vector<double> cdf(V);
  double c = 0;
  for (size_t i = 0; i < V; ++i) cdf[i] = (c += p[i]);
  const double last = cdf[V - 1];
  for (double& v : cdf) v /= last;
  double u = rng_.random();
  size_t idx = size_t(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
  return int32_t(std::min(idx, V - 1));
}

}  // namespace atp_impl
