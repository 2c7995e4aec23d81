// Qwen2-VL / Qwen2.5-VL dynamic resolution (mirror of atp/runtime/dynamic.py): smart resize, block-major patches and
// the vision graph's layout inputs (per-patch rotary positions and attention windows), from the grid alone.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace atp_impl {

struct DynamicSpec {
  int patch = 0, merge = 0, temporal = 0, window = 0, resample = 3;  // window 0: no windowed blocks (Qwen3-VL)
  int position_grid = 0;  // side of a learned position table resampled to the patch grid (Qwen3-VL), 0 = none
  int64_t min_pixels = 0, max_pixels = 0;
  bool enabled() const { return patch > 0; }
  int factor() const { return patch * merge; }
  int64_t patch_dim() const { return int64_t(3) * temporal * patch * patch; }
};

/// (height, width) after the resize (transformers' smart_resize, the same double arithmetic; Python's round half to
/// even). Error ATP_ERR_INPUT for an aspect ratio over 200.
std::pair<int, int> smart_resize(int height, int width, const DynamicSpec& spec);

/// [3, H, W] normalised image -> [P, 3 * temporal * patch * patch] patches, block-major.
std::vector<float> patchify(const std::vector<float>& chw, int height, int width, const DynamicSpec& spec);

/// The vision graph's layout inputs for a merged grid (rows, cols): patch_pos [P, 2]; windows (spec.window > 0):
/// window_index [W, L] (each window's patches, padded with P to L = window^2 * merge^2), window_inverse [P] (each
/// patch's place in [W * L]); a learned position table (spec.position_grid > 0): pos_index / pos_weight [P, 4], its
/// bilinear taps (corners aligned, float32 as transformers computes them).
struct DynamicLayout {
  int rows = 0, cols = 0;
  int64_t windows = 0, length = 0;
  std::vector<int64_t> patch_pos, window_index, window_inverse, pos_index;
  std::vector<float> pos_weight;
  int64_t patches() const { return int64_t(patch_pos.size() / 2); }
};
DynamicLayout dynamic_layout(int rows, int cols, const DynamicSpec& spec);

}  // namespace atp_impl
