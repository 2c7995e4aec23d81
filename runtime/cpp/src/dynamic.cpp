#include "dynamic.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "common.hpp"

namespace atp_impl {

std::pair<int, int> smart_resize(int height, int width, const DynamicSpec& spec) {
  if (double(std::max(height, width)) / double(std::min(height, width)) > 200.0)
    fail(ATP_ERR_INPUT, "the image is " + std::to_string(width) + "x" + std::to_string(height) +
                            ": an aspect ratio over 200 is not supported by this model's processor (crop or pad it first)");
  const int f = spec.factor();
  int64_t h = int64_t(std::nearbyint(double(height) / f)) * f, w = int64_t(std::nearbyint(double(width) / f)) * f;
  if (h * w > spec.max_pixels) {
    const double beta = std::sqrt(double(int64_t(height) * width) / double(spec.max_pixels));
    h = std::max<int64_t>(f, int64_t(std::floor(double(height) / beta / f)) * f);
    w = std::max<int64_t>(f, int64_t(std::floor(double(width) / beta / f)) * f);
  } else if (h * w < spec.min_pixels) {
    const double beta = std::sqrt(double(spec.min_pixels) / double(int64_t(height) * width));
    h = int64_t(std::ceil(double(height) * beta / f)) * f;
    w = int64_t(std::ceil(double(width) * beta / f)) * f;
  }
  return {int(h), int(w)};
}

std::vector<float> patchify(const std::vector<float>& chw, int height, int width, const DynamicSpec& spec) {
  const int p = spec.patch, m = spec.merge, T = spec.temporal;
  const int gh = height / p, gw = width / p;
  std::vector<float> out(size_t(gh) * size_t(gw) * size_t(spec.patch_dim()));
  float* dst = out.data();
  for (int bh = 0; bh < gh / m; ++bh)
    for (int bw = 0; bw < gw / m; ++bw)
      for (int mh = 0; mh < m; ++mh)
        for (int mw = 0; mw < m; ++mw) {  // one patch: (c, t, y, x)
          const int y0 = (bh * m + mh) * p, x0 = (bw * m + mw) * p;
          for (int c = 0; c < 3; ++c)
            for (int t = 0; t < T; ++t)
              for (int y = 0; y < p; ++y) {
                const float* src = &chw[(size_t(c) * size_t(height) + size_t(y0 + y)) * size_t(width) + size_t(x0)];
                dst = std::copy(src, src + p, dst);
              }
        }
  return out;
}

DynamicLayout dynamic_layout(int rows, int cols, const DynamicSpec& spec) {
  DynamicLayout d;
  d.rows = rows;
  d.cols = cols;
  const int m = spec.merge, unit = m * m, win = spec.window;
  const int64_t P = int64_t(rows) * cols * unit, wrows = win > 0 ? (rows + win - 1) / win : 0,
                wcols = win > 0 ? (cols + win - 1) / win : 0;
  d.length = int64_t(win) * win * unit;
  d.windows = wrows * wcols;  // every window holds at least one token: the grid is cut into win x win blocks
  d.patch_pos.reserve(size_t(P) * 2);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c)
      for (int q = 0; q < unit; ++q) {
        d.patch_pos.push_back(int64_t(r) * m + q / m);
        d.patch_pos.push_back(int64_t(c) * m + q % m);
      }
  if (spec.position_grid > 0) {  // bilinear taps of the learned table (atp.runtime.dynamic.position_taps)
    const int side = spec.position_grid;
    auto taps = [side](int64_t index, int64_t n, int64_t t[2], float w[2]) {
      const float src = float(index) * float(side - 1) / float(std::max<int64_t>(n - 1, 1));
      const float fl = std::floor(src);
      for (int j = 0; j < 2; ++j) {
        t[j] = std::min<int64_t>(std::max<int64_t>(int64_t(fl) + j, 0), side - 1);
        w[j] = std::max(0.0f, 1.0f - std::fabs(src - fl - float(j)));
      }
    };
    d.pos_index.reserve(size_t(P) * 4);
    d.pos_weight.reserve(size_t(P) * 4);
    for (int64_t p = 0; p < P; ++p) {
      int64_t ht[2], wt[2];
      float hw[2], ww[2];
      taps(d.patch_pos[size_t(2 * p)], int64_t(rows) * m, ht, hw);
      taps(d.patch_pos[size_t(2 * p + 1)], int64_t(cols) * m, wt, ww);
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) {
          d.pos_index.push_back(ht[a] * side + wt[b]);
          d.pos_weight.push_back(hw[a] * ww[b]);
        }
    }
  }
  if (win < 1) {  // every block attends over the whole image
    d.windows = d.length = 0;
    return d;
  }
  d.window_index.assign(size_t(d.windows * d.length), P);
  d.window_inverse.assign(size_t(P), 0);
  for (int64_t w = 0; w < d.windows; ++w) {  // windows row by row, tokens row by row inside, each token's patches together
    int64_t slot = w * d.length;
    const int64_t r0 = (w / wcols) * win, c0 = (w % wcols) * win;
    for (int64_t r = r0; r < std::min<int64_t>(r0 + win, rows); ++r)
      for (int64_t c = c0; c < std::min<int64_t>(c0 + win, cols); ++c)
        for (int q = 0; q < unit; ++q, ++slot) {
          const int64_t patch = (r * cols + c) * unit + q;
          d.window_index[size_t(slot)] = patch;
          d.window_inverse[size_t(patch)] = slot;
        }
  }
  return d;
}

}  // namespace atp_impl
