// Next-token selection, as atp.runtime.sampling: greedy, or temperature / top-k / top-p sampling (+ a
// repetition penalty the Python runtime does not have). Seeded sampling is reproducible across platforms
// (mt19937_64 + 53-bit uniforms), but not the same random stream as numpy's, so sampled tokens match the
// Python runtime only when greedy.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace atp_impl {

struct SamplingParams {
  float temperature = 0.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float repetition_penalty = 1.0f;
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);  // validates (Error ATP_ERR_INVALID_ARGUMENT)
  /// Picks a token from logits [V]; `history` = tokens generated so far (for the repetition penalty).
  int32_t operator()(std::vector<float>& logits, const std::vector<int32_t>& history);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
};

}  // namespace atp_impl
