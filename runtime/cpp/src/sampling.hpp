// Next-token selection, as atp.runtime.sampling: greedy, or temperature / top-k / top-p sampling with a seed,
// plus a repetition penalty the Python runtime does not have. The random stream is numpy's:
// default_rng(seed) = PCG64 seeded through SeedSequence, Generator.choice(p=...) = one random() draw against the
// normalised cumulative sum, and the float64 sums follow numpy's pairwise summation, so seeded samples match the
// Python runtime token for token (up to 1-ulp differences of exp() between libm and numpy, which would only matter
// for a draw landing within an ulp of a cumulative-probability boundary).
#pragma once

#include <cstdint>
#include <vector>

#include "atp/options.hpp"

namespace atp_impl {

/// temperature, top_k, top_p, repetition_penalty and seed drive the Sampler (include/atp/options.hpp).
using SamplingParams = atp::Sampling;

/// numpy.random.default_rng(seed): PCG64 (XSL-RR 128/64) seeded via SeedSequence.
class NumpyPcg64 {
 public:
  explicit NumpyPcg64(uint64_t seed);
  uint64_t next_u64();
  double random();  // Generator.random(): 53-bit double in [0, 1)

 private:
  unsigned __int128 state_ = 0, inc_ = 0;
  void step();
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);  // validates (Error ATP_ERR_INVALID_ARGUMENT)
  /// Picks a token from logits [V]; `history` = tokens generated so far (for the repetition penalty).
  int32_t operator()(std::vector<float>& logits, const std::vector<int32_t>& history);

 private:
  SamplingParams p_;
  NumpyPcg64 rng_;
};

}  // namespace atp_impl
