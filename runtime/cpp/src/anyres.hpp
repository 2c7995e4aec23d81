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
  bool enabled() const { return crop > 0; }
};

std::pair<int, int> select_best_resolution(int h, int w, const AnyresSpec& spec);
/// Base view (whole image resized to crop x crop), then the tiles of the image fitted into its best resolution.
std::vector<Rgb8> anyres_views(const Rgb8& img, const AnyresSpec& spec, int resample);
/// token_index (into the tower's [views * P] tokens) and grid row per token (-1: base view) for an (h, w) image.
void anyres_token_layout(int h, int w, const AnyresSpec& spec, std::vector<int64_t>& index, std::vector<int64_t>& row);
/// Positions (into the kept tokens) after which the newline embedding goes: the last kept token of each grid row.
std::vector<size_t> newline_slots(const std::vector<int64_t>& kept, const std::vector<int64_t>& row);

}  // namespace atp_impl
