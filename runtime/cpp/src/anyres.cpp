#include "anyres.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace atp_impl {

std::pair<int, int> select_best_resolution(int oh, int ow, const AnyresSpec& spec) {
  std::pair<int, int> best{0, 0};
  int64_t best_eff = 0;
  double best_waste = std::numeric_limits<double>::infinity();
  for (auto [h, w] : spec.pinpoints) {
    const double scale = std::min(double(w) / double(ow), double(h) / double(oh));
    const int64_t dw = int64_t(double(ow) * scale), dh = int64_t(double(oh) * scale);
    const int64_t eff = std::min(dw * dh, int64_t(ow) * int64_t(oh));
    const double waste = double(int64_t(w) * int64_t(h) - eff);
    if (eff > best_eff || (eff == best_eff && waste < best_waste)) {
      best = {h, w};
      best_eff = eff;
      best_waste = waste;
    }
  }
  return best;
}

std::vector<Rgb8> anyres_views(const Rgb8& img, const AnyresSpec& spec, int resample) {
  auto [bh, bw] = select_best_resolution(img.height, img.width, spec);
  const double sw = double(bw) / double(img.width), sh = double(bh) / double(img.height);
  int nh, nw;
  if (sw < sh) {
    nw = bw;
    nh = std::min(int(std::ceil(double(img.height) * sw)), bh);
  } else {
    nh = bh;
    nw = std::min(int(std::ceil(double(img.width) * sh)), bw);
  }
  Rgb8 resized = (nw != img.width || nh != img.height) ? resize_pil(img, nw, nh, resample) : img;
  Rgb8 canvas;
  canvas.width = bw;
  canvas.height = bh;
  canvas.data.assign(size_t(bw) * size_t(bh) * 3, 0);
  const int top = (bh - nh) / 2, left = (bw - nw) / 2;
  for (int y = 0; y < nh; ++y)
    std::copy_n(&resized.data[size_t(y) * size_t(nw) * 3], size_t(nw) * 3, &canvas.data[(size_t(y + top) * size_t(bw) + size_t(left)) * 3]);
  std::vector<Rgb8> out;
  out.push_back((img.width != spec.crop || img.height != spec.crop) ? resize_pil(img, spec.crop, spec.crop, resample) : img);
  for (int i = 0; i < bh; i += spec.crop)
    for (int j = 0; j < bw; j += spec.crop) {
      Rgb8 t;
      t.width = t.height = spec.crop;
      t.data.resize(size_t(spec.crop) * size_t(spec.crop) * 3);
      for (int y = 0; y < spec.crop; ++y)
        std::copy_n(&canvas.data[(size_t(i + y) * size_t(bw) + size_t(j)) * 3], size_t(spec.crop) * 3, &t.data[size_t(y) * size_t(spec.crop) * 3]);
      out.push_back(std::move(t));
    }
  return out;
}

// Python's int(round(x, 7)) for the non-negative sizes met here
static int64_t round7_int(double x) { return int64_t(std::nearbyint(x * 1e7) / 1e7); }

// Python's float floor division a // b for the positive values met here (fmod-based, as CPython computes it)
static double py_floordiv(double a, double b) {
  const double mod = std::fmod(a, b), div = (a - mod) / b;
  double fl = std::floor(div);
  if (div - fl > 0.5) fl += 1.0;
  return fl;
}

namespace {
struct Taps {  // torch interpolate(mode="bilinear", align_corners=False) along one axis, float32 as on the CPU
  std::vector<int64_t> i0, i1;
  std::vector<float> w0, w1;
};

Taps bilinear_taps(int n_in, int n_out) {
  Taps t;
  const float scale = float(n_in) / float(n_out);
  for (int d = 0; d < n_out; ++d) {
    const float src = std::max(scale * (float(d) + 0.5f) - 0.5f, 0.0f);
    const int64_t i0 = int64_t(src);
    const float l1 = std::min(std::max(src - float(i0), 0.0f), 1.0f);
    t.i0.push_back(i0);
    t.i1.push_back(i0 < n_in - 1 ? i0 + 1 : i0);
    t.w0.push_back(1.0f - l1);
    t.w1.push_back(l1);
  }
  return t;
}
}  // namespace

AnyresTokens anyres_token_layout(int oh, int ow, const AnyresSpec& spec) {
  const int side = spec.crop / spec.patch, per_view = side * side;
  auto [bh, bw] = select_best_resolution(oh, ow, spec);
  const int gh = bh / spec.crop, gw = bw / spec.crop, ch = gh * side, cw = gw * side;
  int r0 = 0, r1 = ch, c0 = 0, c1 = cw;
  if (double(ow) / double(oh) > double(cw) / double(ch)) {
    const int pad = int((ch - round7_int(double(oh) * (double(cw) / double(ow)))) / 2);
    r0 = pad;
    r1 = ch - pad;
  } else {
    const int pad = int((cw - round7_int(double(ow) * (double(ch) / double(oh)))) / 2);
    c0 = pad;
    c1 = cw - pad;
  }
  auto tower = [&](int64_t r, int64_t c) {  // grid token (full-grid coordinates) -> tower token
    return int64_t(per_view) * (1 + (r / side) * gw + c / side) + (r % side) * side + c % side;
  };
  AnyresTokens out;
  const int rows = r1 - r0, cols = c1 - c0;
  if (spec.max_patches <= 0) {
    for (int i = 0; i < per_view; ++i) {
      out.index.push_back(i);
      out.row.push_back(-1);
    }
    for (int r = r0; r < r1; ++r)
      for (int c = c0; c < c1; ++c) {
        out.index.push_back(tower(r, c));
        out.row.push_back(r - r0);
      }
    return out;
  }
  // anyres_max_N (atp.runtime.anyres.max_patches_shape / tap_layout)
  int orows = rows, ocols = cols;
  const double ratio = std::sqrt(double(rows) * double(cols) / (double(spec.max_patches) * double(per_view)));
  if (ratio > 1.1) {
    orows = int(py_floordiv(double(rows), ratio));
    ocols = int(py_floordiv(double(cols), ratio));
  }
  out.taps = 4;
  for (int i = 0; i < per_view; ++i) {
    for (int j = 0; j < 4; ++j) {
      out.index.push_back(i);
      out.weight.push_back(j == 0 ? 1.0f : 0.0f);
    }
    out.row.push_back(-1);
  }
  const Taps tr = bilinear_taps(rows, orows), tc = bilinear_taps(cols, ocols);
  for (int r = 0; r < orows; ++r)
    for (int c = 0; c < ocols; ++c) {
      const int64_t rr[4] = {tr.i0[r], tr.i0[r], tr.i1[r], tr.i1[r]}, cc[4] = {tc.i0[c], tc.i1[c], tc.i0[c], tc.i1[c]};
      const float wr[4] = {tr.w0[r], tr.w0[r], tr.w1[r], tr.w1[r]}, wc[4] = {tc.w0[c], tc.w1[c], tc.w0[c], tc.w1[c]};
      for (int j = 0; j < 4; ++j) {
        out.index.push_back(tower(rr[j] + r0, cc[j] + c0));
        out.weight.push_back(wr[j] * wc[j]);
      }
      out.row.push_back(r);
    }
  return out;
}

std::vector<size_t> newline_slots(const std::vector<int64_t>& kept, const std::vector<int64_t>& row) {
  std::vector<size_t> out;
  for (size_t i = 0; i < kept.size(); ++i) {
    const int64_t r = row[size_t(kept[i])];
    if (r >= 0 && (i + 1 == kept.size() || row[size_t(kept[i + 1])] != r)) out.push_back(i);
  }
  return out;
}

}  // namespace atp_impl
