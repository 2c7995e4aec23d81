// Inference backends: one per bundle (shared, read-only after open), one decoder state per context.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "atp/options.hpp"
#include "bundle.hpp"

namespace atp_impl {

using atp::OpenOptions;  // include/atp/options.hpp: the wrapper's struct is the implementation's

struct VisionOutput {
  std::vector<float> embeds;  // [K, D] (batch 1)
  std::vector<int64_t> kept;  // [K]
  int64_t k = 0, dim = 0;
  std::vector<float> deepstack;  // [L, K, D] DeepStack levels of the kept tokens (Qwen3-VL), empty otherwise
};

/// KV cache and the decoder graph's run state for one request stream (owned by one context).
class DecoderState {
 public:
  virtual ~DecoderState() = default;
  /// Forget the KV cache (start of a request).
  virtual void reset() = 0;
  /// Feed n new token embeddings [n, D] at `positions` (position_ids, [axes, n] axis-major: axes 1 for "1d", 3 for
  /// "mrope"; atp_impl positions.hpp); `deepstack` [L, n, D] for DeepStack decoders (nullptr: zeros); writes the last
  /// position's logits [V].
  virtual void step(const float* embeds, int64_t n, const std::vector<int64_t>& positions, std::vector<float>& logits,
                    const float* deepstack = nullptr) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  /// Vision graph `graph` (manifest key) on pixels [views, 3, H, W] (one image: 1 view, or an anyres image's views;
  /// a dynamic-resolution image: its patches [views = P, C*T*p*p]) with keep K; text [1, D] when the graph takes
  /// text_embeds; the layout inputs of an anyres image (token_index, token_weight) or a dynamic-resolution one
  /// (patch_pos, window_id) when the graph takes them.
  virtual VisionOutput run_vision(const std::string& graph, const float* pixels, int64_t views, int64_t keep,
                                  const float* text, const AnyresTokens* layout, const DynamicLayout* dynamic = nullptr) = 0;
  virtual std::unique_ptr<DecoderState> new_decoder() = 0;
  /// Longest sequence the decoder accepts (engine profile), 0 = unlimited.
  virtual int max_sequence() const { return 0; }
};

std::unique_ptr<Backend> make_ort_backend(const Manifest& m, const OpenOptions& o);
std::unique_ptr<Backend> make_trt_backend(const Manifest& m, const OpenOptions& o);

}  // namespace atp_impl
