#include "image.hpp"

#include <algorithm>
#include <cmath>

#include "common.hpp"

#define STB_IMAGE_IMPLEMENTATION
#define STBI_NO_STDIO_WARNINGS
#define STBI_FAILURE_USERMSG
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#endif
#include <stb/stb_image.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace atp_impl {
namespace {

// ---- Pillow filters (libImaging/Resample.c)
double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }
double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}
double hamming_filter(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * M_PI;
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));  // float constants, as Pillow
}
double bicubic_filter(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}
double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return std::sin(x) / x;
}
double lanczos_filter(double x) { return (-3.0 <= x && x < 3.0) ? sinc_filter(x) * sinc_filter(x / 3) : 0.0; }

struct Filter {
  double (*fn)(double);
  double support;
};

Filter filter_for(int resample) {
  switch (resample) {
    case 1: return {lanczos_filter, 3.0};
    case 2: return {bilinear_filter, 1.0};
    case 3: return {bicubic_filter, 2.0};
    case 4: return {box_filter, 0.5};
    case 5: return {hamming_filter, 1.0};
    default:
      fail(ATP_ERR_UNSUPPORTED, "manifest preprocessing.resample = " + std::to_string(resample) +
                                    " is not supported by the C++ runtime (1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)");
  }
}

constexpr int kPrecisionBits = 32 - 8 - 2;

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;  // (xmin, count) per output pixel
  std::vector<int32_t> k;   // fixed-point, ksize per output pixel
};

Coeffs precompute(int in_size, float in0, float in1, int out_size, const Filter& f) {
  double scale = double(in1 - in0) / out_size, filterscale = scale;
  if (filterscale < 1.0) filterscale = 1.0;
  double support = f.support * filterscale;
  Coeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.bounds.resize(size_t(out_size) * 2);
  std::vector<double> kk(size_t(out_size) * size_t(c.ksize), 0.0);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0, ss = 1.0 / filterscale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = &kk[size_t(xx) * size_t(c.ksize)];
    for (int x = 0; x < xmax; ++x) {
      double w = f.fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    c.bounds[size_t(xx) * 2] = xmin;
    c.bounds[size_t(xx) * 2 + 1] = xmax;
  }
  c.k.resize(kk.size());
  for (size_t i = 0; i < kk.size(); ++i)
    c.k[i] = kk[i] < 0 ? int32_t(-0.5 + kk[i] * (1 << kPrecisionBits)) : int32_t(0.5 + kk[i] * (1 << kPrecisionBits));
  return c;
}

inline uint8_t clip8(int32_t v) {
  int32_t s = v >> kPrecisionBits;
  return uint8_t(s < 0 ? 0 : s > 255 ? 255 : s);
}

}  // namespace

namespace {

Rgb8 pass_horizontal(const Rgb8& cur, int width, const Filter& f) {
  const int C = 3;
  Coeffs c = precompute(cur.width, 0.0f, float(cur.width), width, f);
  Rgb8 out;
  out.width = width;
  out.height = cur.height;
  out.data.resize(size_t(width) * size_t(cur.height) * C);
  for (int y = 0; y < cur.height; ++y) {
    const uint8_t* row = &cur.data[size_t(y) * size_t(cur.width) * C];
    for (int xx = 0; xx < width; ++xx) {
      int xmin = c.bounds[size_t(xx) * 2], xmax = c.bounds[size_t(xx) * 2 + 1];
      const int32_t* k = &c.k[size_t(xx) * size_t(c.ksize)];
      for (int ch = 0; ch < C; ++ch) {
        int32_t ss = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < xmax; ++x) ss += int32_t(row[(x + xmin) * C + ch]) * k[x];
        out.data[(size_t(y) * size_t(width) + size_t(xx)) * C + size_t(ch)] = clip8(ss);
      }
    }
  }
  return out;
}

Rgb8 pass_vertical(const Rgb8& cur, int height, const Filter& f) {
  const int C = 3;
  Coeffs c = precompute(cur.height, 0.0f, float(cur.height), height, f);
  Rgb8 out;
  out.width = cur.width;
  out.height = height;
  out.data.resize(size_t(cur.width) * size_t(height) * C);
  for (int yy = 0; yy < height; ++yy) {
    int ymin = c.bounds[size_t(yy) * 2], ymax = c.bounds[size_t(yy) * 2 + 1];
    const int32_t* k = &c.k[size_t(yy) * size_t(c.ksize)];
    for (int xx = 0; xx < cur.width; ++xx) {
      for (int ch = 0; ch < C; ++ch) {
        int32_t ss = 1 << (kPrecisionBits - 1);
        for (int y = 0; y < ymax; ++y) ss += int32_t(cur.data[(size_t(y + ymin) * size_t(cur.width) + size_t(xx)) * C + size_t(ch)]) * k[y];
        out.data[(size_t(yy) * size_t(cur.width) + size_t(xx)) * C + size_t(ch)] = clip8(ss);
      }
    }
  }
  return out;
}

}  // namespace

Rgb8 resize_pil(const Rgb8& in, int width, int height, int resample) {
  Filter f = filter_for(resample);
  const bool need_h = width != in.width, need_v = height != in.height;
  if (need_h && need_v) {
    // Pillow 13 (Resample.c, Pillow PR 9549) runs the vertical pass first when the height shrinks by more than
    // twice as many pixels as the width does, else horizontal first; each pass rounds to 8 bits, so the order shows
    // in the result. (Measured exact on 786 random shape pairs x 2 filters: tests/cpp/test_cpp_runtime.py.)
    const bool vertical_first = height < in.height && (in.height - height) > 2 * (in.width - width);
    return vertical_first ? pass_horizontal(pass_vertical(in, height, f), width, f)
                          : pass_vertical(pass_horizontal(in, width, f), height, f);
  }
  if (need_h) return pass_horizontal(in, width, f);
  if (need_v) return pass_vertical(in, height, f);
  return in;
}

Rgb8 rgb8_from_pixels(const uint8_t* pixels, int width, int height, int channels, int stride) {
  if (!pixels) fail(ATP_ERR_INVALID_ARGUMENT, "image pixels pointer is NULL");
  if (width <= 0 || height <= 0) fail(ATP_ERR_INPUT, "image size must be positive, got " + std::to_string(width) + "x" + std::to_string(height));
  if (channels != 3 && channels != 4)
    fail(ATP_ERR_INPUT, "image must have 3 (RGB) or 4 (RGBA) channels, got " + std::to_string(channels));
  if (stride == 0) stride = width * channels;
  if (stride < width * channels) fail(ATP_ERR_INPUT, "image stride " + std::to_string(stride) + " is smaller than width * channels");
  Rgb8 img;
  img.width = width;
  img.height = height;
  img.data.resize(size_t(width) * size_t(height) * 3);
  for (int y = 0; y < height; ++y) {
    const uint8_t* src = pixels + size_t(y) * size_t(stride);
    uint8_t* dst = &img.data[size_t(y) * size_t(width) * 3];
    for (int x = 0; x < width; ++x) {
      const uint8_t* p = src + size_t(x) * size_t(channels);
      if (channels == 3) {
        dst[3 * x] = p[0]; dst[3 * x + 1] = p[1]; dst[3 * x + 2] = p[2];
        continue;
      }
      // Pillow AlphaComposite.c over an opaque white background, then RGBA -> RGB.
      uint32_t a = p[3];
      for (int ch = 0; ch < 3; ++ch) {
        if (a == 0) { dst[3 * x + ch] = 255; continue; }
        const uint32_t prec = 7;
        uint32_t blend = 255u * (255u - a), outa255 = a * 255u + blend;
        uint32_t coef1 = a * 255u * 255u * (1u << prec) / outa255, coef2 = 255u * (1u << prec) - coef1;
        uint32_t tmp = p[ch] * coef1 + 255u * coef2 + (0x80u << prec);
        dst[3 * x + ch] = uint8_t((((tmp >> 8) + tmp) >> 8) >> prec);
      }
    }
  }
  return img;
}

Rgb8 load_image_file(const std::string& path) {
  int w = 0, h = 0, n = 0;
  if (!stbi_info(path.c_str(), &w, &h, &n)) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) fail(ATP_ERR_INPUT, "image " + path + " does not exist or cannot be opened");
    std::fclose(f);
    fail(ATP_ERR_INPUT, "cannot read image " + path + ": not a readable image file (" + stbi_failure_reason() + ")");
  }
  if (w < 1 || h < 1 || int64_t(w) * int64_t(h) > int64_t(8192) * 8192)  // from the header, before decoding
    fail(ATP_ERR_INPUT, "image " + path + " is " + std::to_string(w) + "x" + std::to_string(h) +
                            "; atp takes at most 67 MPixels (8192 x 8192): downscale it first");
  int want = (n == 2 || n == 4) ? 4 : 3;  // alpha: composite on white like the Python runtime
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &n, want);
  if (!data) fail(ATP_ERR_INPUT, "cannot decode image " + path + ": " + stbi_failure_reason());
  Rgb8 img;
  try {
    img = rgb8_from_pixels(data, w, h, want, 0);
  } catch (...) {
    stbi_image_free(data);
    throw;
  }
  stbi_image_free(data);
  return img;
}

std::vector<float> preprocess(const Rgb8& src, const PreprocessSpec& spec) {
  Rgb8 img = src;
  int nw = img.width, nh = img.height;
  if (spec.resize_shortest > 0) {
    bool w_short = img.width <= img.height;
    int s = w_short ? img.width : img.height, l = w_short ? img.height : img.width;
    int new_long = int(double(int64_t(spec.resize_shortest) * l) / double(s));
    nw = w_short ? spec.resize_shortest : new_long;
    nh = w_short ? new_long : spec.resize_shortest;
  } else if (spec.resize_width > 0) {
    nw = spec.resize_width;
    nh = spec.resize_height;
  }
  // an extreme aspect ratio (1 x 100000) would resize to gigapixels before the crop (atp.runtime.preprocess.MAX_PIXELS)
  if (int64_t(nw) * int64_t(nh) > int64_t(8192) * 8192 || int64_t(img.width) * int64_t(img.height) > int64_t(8192) * 8192)
    fail(ATP_ERR_INPUT, "the " + std::to_string(img.width) + "x" + std::to_string(img.height) + " image resized for this model is " +
                            std::to_string(nw) + "x" + std::to_string(nh) + "; atp takes at most 67 MPixels (8192 x 8192): downscale it first");
  if (nw != img.width || nh != img.height) img = resize_pil(img, nw, nh, spec.resample);
  int h = img.height, w = img.width;
  const uint8_t* base = img.data.data();
  std::vector<uint8_t> padded;
  int top = 0, left = 0, oh = h, ow = w;
  if (spec.crop_width > 0) {
    int ch = spec.crop_height, cw = spec.crop_width;
    if (h < ch || w < cw) {  // pad like transformers, centred, with zeros
      int ph = std::max(h, ch), pw = std::max(w, cw);
      padded.assign(size_t(ph) * size_t(pw) * 3, 0);
      int pt = (ph - h) / 2, pl = (pw - w) / 2;
      for (int y = 0; y < h; ++y)
        std::copy_n(base + size_t(y) * size_t(w) * 3, size_t(w) * 3, &padded[(size_t(y + pt) * size_t(pw) + size_t(pl)) * 3]);
      base = padded.data();
      h = ph;
      w = pw;
    }
    top = (h - ch) / 2;
    left = (w - cw) / 2;
    oh = ch;
    ow = cw;
  }
  if (oh != spec.out_height || ow != spec.out_width)
    fail(ATP_ERR_INPUT, "preprocessed image is " + std::to_string(oh) + "x" + std::to_string(ow) + ", the vision graph wants " +
                            std::to_string(spec.out_height) + "x" + std::to_string(spec.out_width));
  std::vector<float> out(size_t(3) * size_t(oh) * size_t(ow));
  const float rescale = float(spec.rescale);
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < oh; ++y) {
      for (int x = 0; x < ow; ++x) {
        float v = float(base[(size_t(y + top) * size_t(w) + size_t(x + left)) * 3 + size_t(c)]);
        if (spec.has_rescale) v = v * rescale;
        if (spec.has_norm) v = (v - spec.mean[c]) / spec.std[c];
        out[(size_t(c) * size_t(oh) + size_t(y)) * size_t(ow) + size_t(x)] = v;
      }
    }
  }
  return out;
}

}  // namespace atp_impl
