// Idefics3 / SmolVLM image splitting (mirror of atp/runtime/tiling.py): tiles row by row, then the global view, and
// the slot rule (each view's kept tokens after its marker run).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "image.hpp"

namespace atp_impl {

struct TilingSpec {
  int longest_edge = 0, tile = 0, resample = 1;
  bool enabled() const { return tile > 0; }
};

/// (rows, cols) of tiles for an (h, w) image; (0, 0) when it is only the global view.
std::pair<int, int> tiling_grid(int h, int w, const TilingSpec& spec);
/// The views (tile x tile each): tiles row by row, then the global view (alone when the grid is 0 x 0).
std::vector<Rgb8> tiling_views(const Rgb8& img, const TilingSpec& spec);
/// token_layout.markers key of a grid shape ("RxC").
std::string grid_key(int rows, int cols);

}  // namespace atp_impl
