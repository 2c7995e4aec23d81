#include "tiling.hpp"

#include <algorithm>
#include <cmath>

namespace atp_impl {

namespace {
constexpr int kMaxSide = 4096;  // atp.runtime.tiling.MAX_SIDE

std::pair<int, int> first_size(int h, int w, const TilingSpec& spec) {  // (h, w) after the resize to longest_edge
  const int m = spec.longest_edge;
  double aspect = double(w) / double(h);
  if (w >= h) {
    w = m;
    h = int(double(m) / aspect);
    h += h % 2;
  } else {
    h = m;
    w = int(double(m) * aspect);
    w += w % 2;
  }
  h = std::max(h, 1);
  w = std::max(w, 1);
  aspect = double(w) / double(h);
  if (w >= h && w > kMaxSide) {
    w = kMaxSide;
    h = int(double(kMaxSide) / aspect);
  } else if (h > w && h > kMaxSide) {
    h = kMaxSide;
    w = int(double(kMaxSide) * aspect);
  }
  return {std::max(h, 1), std::max(w, 1)};
}

int ceil_to(double v, int t) { return int(std::ceil(v / double(t))) * t; }

std::pair<int, int> tiled_size(int h, int w, int tile) {  // (h, w) after the resize to whole tiles
  const double aspect = double(w) / double(h);
  if (w >= h) {
    w = ceil_to(w, tile);
    h = ceil_to(double(int(double(w) / aspect)), tile);
  } else {
    h = ceil_to(h, tile);
    w = ceil_to(double(int(double(h) * aspect)), tile);
  }
  return {h, w};
}

std::pair<int, int> grid_of(int h, int w, int tile) {  // tiles of an image resized to whole tiles; (0, 0): one tile
  if (h > tile || w > tile) return {(h - tile) / tile + 1, (w - tile) / tile + 1};
  return {0, 0};
}

Rgb8 resized(const Rgb8& img, int w, int h, int resample) {  // Pillow: a same-size resize is a copy
  return (w == img.width && h == img.height) ? img : resize_pil(img, w, h, resample);
}
}  // namespace

std::pair<int, int> tiling_grid(int h, int w, const TilingSpec& spec) {
  auto [fh, fw] = first_size(h, w, spec);
  auto [th, tw] = tiled_size(fh, fw, spec.tile);
  return grid_of(th, tw, spec.tile);
}

std::vector<Rgb8> tiling_views(const Rgb8& img, const TilingSpec& spec) {
  auto [fh, fw] = first_size(img.height, img.width, spec);
  Rgb8 a = resized(img, fw, fh, spec.resample);
  auto [th, tw] = tiled_size(fh, fw, spec.tile);
  Rgb8 b = resized(a, tw, th, spec.resample);
  const int t = spec.tile;
  const auto [rows, cols] = grid_of(th, tw, t);
  if (!rows) return {b};
  std::vector<Rgb8> out;
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      Rgb8 v;
      v.width = v.height = t;
      v.data.resize(size_t(t) * size_t(t) * 3);
      for (int y = 0; y < t; ++y)
        std::copy_n(&b.data[(size_t(r * t + y) * size_t(tw) + size_t(c * t)) * 3], size_t(t) * 3, &v.data[size_t(y) * size_t(t) * 3]);
      out.push_back(std::move(v));
    }
  out.push_back(resized(b, t, t, spec.resample));
  return out;
}

std::string grid_key(int rows, int cols) { return std::to_string(rows) + "x" + std::to_string(cols); }

}  // namespace atp_impl
