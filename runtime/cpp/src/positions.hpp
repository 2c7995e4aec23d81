// The decoder's position rule (mirror of atp/runtime/positions.py). "1d": the spliced prompt takes positions
// 0..L-1 whatever K is, each generated token the next one. "mrope" (Qwen2-VL M-RoPE, position_ids [3, 1, S]): a
// kept visual token keeps its (t, h, w) position in the full grid, (start, start + row, start + col); the text after
// the image starts at start + max(rows, cols) as in the dense model; each generated token takes the largest
// position so far + 1.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace atp_impl {

/// position_ids for n new tokens after `past` cached ones, scheme "1d" (the manifest's positions.scheme).
inline void positions_1d(int64_t past, int64_t n, std::vector<int64_t>& out) {
  out.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] = past + i;
}

/// Where an image's kept tokens sit in the spliced prompt (atp.runtime.positions.ImageSlot).
struct ImageSlot {
  int64_t start = 0;                 // index of its first kept token
  const std::vector<int64_t>* kept;  // ascending, into the merged grid in raster order
  int rows = 0, cols = 0;
};

/// "mrope" position_ids [3, length] (axis-major) of a prompt holding one image slot.
inline void positions_mrope(const ImageSlot& image, int64_t length, std::vector<int64_t>& out) {
  out.assign(size_t(3 * length), 0);
  const int64_t s = image.start, k = int64_t(image.kept->size()), after = s + std::max(image.rows, image.cols);
  for (int64_t i = 0; i < length; ++i) {
    int64_t t = i, h = i, w = i;
    if (i >= s && i < s + k) {
      const int64_t idx = (*image.kept)[size_t(i - s)];
      t = s;
      h = s + idx / image.cols;
      w = s + idx % image.cols;
    } else if (i >= s + k) {
      t = h = w = after + (i - s - k);
    }
    out[size_t(i)] = t;
    out[size_t(length + i)] = h;
    out[size_t(2 * length + i)] = w;
  }
}

/// position_ids of one token at `position` for `axes` rows (1: "1d", 3: "mrope").
inline void positions_step(int64_t position, int axes, std::vector<int64_t>& out) { out.assign(size_t(axes), position); }

/// The position of the first generated token after a prompt with these position_ids.
inline int64_t next_position(const std::vector<int64_t>& positions) {
  return positions.empty() ? 0 : *std::max_element(positions.begin(), positions.end()) + 1;
}

}  // namespace atp_impl
