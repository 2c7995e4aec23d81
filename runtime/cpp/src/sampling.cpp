#include "sampling.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "common.hpp"

namespace atp_impl {

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {
  if (!(p.temperature >= 0)) fail(ATP_ERR_INVALID_ARGUMENT, "temperature must be >= 0, got " + std::to_string(p.temperature));
  if (p.top_k < 0) fail(ATP_ERR_INVALID_ARGUMENT, "top_k must be >= 0, got " + std::to_string(p.top_k));
  if (!(p.top_p > 0 && p.top_p <= 1)) fail(ATP_ERR_INVALID_ARGUMENT, "top_p must be in (0, 1], got " + std::to_string(p.top_p));
  if (!(p.repetition_penalty > 0)) fail(ATP_ERR_INVALID_ARGUMENT, "repetition_penalty must be > 0, got " + std::to_string(p.repetition_penalty));
}

int32_t Sampler::operator()(std::vector<float>& logits, const std::vector<int32_t>& history) {
  const size_t V = logits.size();
  if (p_.repetition_penalty != 1.0f) {  // CTRL / transformers RepetitionPenaltyLogitsProcessor, on generated tokens
    std::vector<char> seen(V, 0);
    for (int32_t t : history)
      if (t >= 0 && size_t(t) < V && !seen[size_t(t)]) {
        seen[size_t(t)] = 1;
        float& l = logits[size_t(t)];
        l = l > 0 ? l / p_.repetition_penalty : l * p_.repetition_penalty;
      }
  }
  if (p_.temperature == 0.0f)  // np.argmax: first maximum
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<double> z(V);
  for (size_t i = 0; i < V; ++i) z[i] = double(logits[i]) / double(p_.temperature);
  if (p_.top_k > 0 && size_t(p_.top_k) < V) {
    std::vector<double> tmp(z);
    std::nth_element(tmp.begin(), tmp.begin() + (p_.top_k - 1), tmp.end(), std::greater<double>());
    double kth = tmp[size_t(p_.top_k - 1)];
    for (double& v : z)
      if (v < kth) v = -std::numeric_limits<double>::infinity();
  }
  double mx = *std::max_element(z.begin(), z.end()), sum = 0;
  std::vector<double> p(V);
  for (size_t i = 0; i < V; ++i) sum += (p[i] = std::exp(z[i] - mx));
  for (double& v : p) v /= sum;
  if (p_.top_p < 1.0f) {
    std::vector<size_t> order(V);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
    double cum = 0;
    size_t keep = V;
    for (size_t i = 0; i < V; ++i) {
      cum += p[order[i]];
      if (cum >= double(p_.top_p)) { keep = i + 1; break; }
    }
    double s = 0;
    for (size_t i = keep; i < V; ++i) p[order[i]] = 0;
    for (double v : p) s += v;
    for (double& v : p) v /= s;
  }
  double u = double(rng_() >> 11) * (1.0 / 9007199254740992.0);  // [0, 1), 53 bits
  double cdf = 0;
  size_t last = 0;
  for (size_t i = 0; i < V; ++i) {
    if (p[i] <= 0) continue;
    last = i;
    cdf += p[i];
    if (u < cdf) return int32_t(i);
  }
  return int32_t(last);
}

}  // namespace atp_impl
