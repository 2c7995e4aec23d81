// LLaVA-NeXT "anyres" images (mirror of atp/runtime/anyres.py): the views (base view + grid tiles) and the order
// in which the language model reads their tokens (base view, then the unpadded grid rows), with each token's row.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "image.hpp"

namespace atp_impl {

struct AnyresSpec {
  std::vector<std::pair<int, int>> pinpoints;  // (h, w)
  int crop = 0, patch = 0;
  int max_patches = 0;  // LLaVA-OneVision's anyres_max_N (0: LLaVA-NeXT, no resize)
  bool enabled() const { return crop > 0; }
};

/// The vision graph's layout inputs for one image and each token's grid row (-1: base view). Plain anyres:
/// token_index [M]; anyres_max: taps = 4, token_index / token_weight [M, 4] (bilinear taps over projected tokens).
struct AnyresTokens {
  std::vector<int64_t> index;
  std::vector<float> weight;  // empty unless taps > 1
  std::vector<int64_t> row;
  int taps = 1;
  size_t size() const { return row.size(); }
};

std::pair<int, int> select_best_resolution(int h, int w, const AnyresSpec& spec);
/// Base view (whole image resized to crop x crop), then the tiles of the image fitted into its best resolution.
std::vector<Rgb8> anyres_views(const Rgb8& img, const AnyresSpec& spec, int resample);
/// The layout inputs of an (h, w) image (atp.runtime.anyres.graph_layout): token_index into the tower's [views * P]
/// tokens, in the order the language model reads them, with bilinear taps where anyres_max resizes the grid.
AnyresTokens anyres_token_layout(int h, int w, const AnyresSpec& spec);
/// Positions (into the kept tokens) after which the newline embedding goes: the last kept token of each grid row.
std::vector<size_t> newline_slots(const std::vector<int64_t>& kept, const std::vector<int64_t>& row);

}  // namespace atp_impl
