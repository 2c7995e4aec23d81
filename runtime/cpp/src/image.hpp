// Image decode (stb_image) and preprocessing per a bundle manifest, matching atp.runtime.preprocess
// (Pillow) exactly: Pillow's separable fixed-point resampling is ported, so pixel tensors are bit-identical
// for RGB8 input (PNG/BMP decode is lossless; JPEG decoders differ from libjpeg by a few LSB).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace atp_impl {

struct Rgb8 {
  int width = 0, height = 0;
  std::vector<uint8_t> data;  // HWC, 3 channels
};

struct PreprocessSpec {
  bool convert_rgb = true;
  int resize_shortest = 0;             // resize {"shortest_edge": S}
  int resize_width = 0, resize_height = 0;  // resize {"width", "height"}
  int resample = 3;                    // PIL resampling id (1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)
  int crop_width = 0, crop_height = 0; // 0 = no centre crop
  bool has_rescale = false;
  double rescale = 1.0;
  bool has_norm = false;
  float mean[3] = {0, 0, 0}, std[3] = {1, 1, 1};
  int out_height = 0, out_width = 0;   // image_size
};

/// Interleaved 8-bit pixels (3 = RGB, 4 = RGBA composited on white like Pillow's alpha_composite) -> RGB8.
Rgb8 rgb8_from_pixels(const uint8_t* pixels, int width, int height, int channels, int stride);
/// Decode a file with stb_image (Error ATP_ERR_INPUT when missing or unreadable).
Rgb8 load_image_file(const std::string& path);
/// Pillow's Image.resize for 8-bit RGB with a separable filter (bit-exact port of Resample.c).
Rgb8 resize_pil(const Rgb8& in, int width, int height, int resample);
/// Full pipeline -> float32 [3, H, W].
std::vector<float> preprocess(const Rgb8& img, const PreprocessSpec& spec);

}  // namespace atp_impl
