// atp embedded runtime: the plain option structs of the C++ wrapper (runtime.hpp), also used inside the
// library, so the wrapper and the implementation cannot drift apart. Defaults match atp_open_options_init
// and atp_sampling_init.
#ifndef ATP_OPTIONS_HPP
#define ATP_OPTIONS_HPP

#include <cstdint>
#include <string>

namespace atp {

/// How to open a bundle (atp_open_options).
struct OpenOptions {
  std::string backend = "ort";
  bool verify = true;
  int threads = 0;
  std::string ort_library, trt_target, trt_plugin_library;
  int max_sequence = 0;
};

/// Next-token selection and stopping of one generate call (atp_sampling).
struct Sampling {
  double temperature = 0.0;
  int32_t top_k = 0;
  double top_p = 1.0;
  double repetition_penalty = 1.0;
  uint64_t seed = 0;
  int32_t max_new_tokens = 32;
  bool ignore_eos = false;
};

}  // namespace atp

#endif  // ATP_OPTIONS_HPP
