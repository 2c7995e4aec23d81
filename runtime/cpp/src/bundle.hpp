// Bundle manifest (atp.manifest format versions 1 and 2): parsed fields the C++ runtime needs, with verification.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "anyres.hpp"
#include "dynamic.hpp"
#include "tiling.hpp"
#include "image.hpp"
#include "prompt.hpp"

namespace atp_impl {

struct GraphInfo {
  std::string file;
  std::vector<std::string> inputs, outputs;
  std::string custom_ops_library;  // graphs.<g>.custom_ops.library: a bundle specialized for atp's CPU ops
  bool has_input(const std::string& name) const;
};

struct Manifest {
  std::string dir;
  std::string raw_json;  // for backends that read their own sections (TensorRT engines)
  int num_layers = 0, num_kv_heads = 0, head_dim = 0, hidden_size = 0;
  int deepstack_levels = 0;  // model.deepstack_levels (Qwen3-VL DeepStack): decoder input deepstack_embeds [L, 1, S, D]
  std::vector<int32_t> eos_ids;
  int num_visual_tokens = 0, default_keep = 0;
  std::map<std::string, std::string> scorers;  // retention scorer -> vision graph key (pruning.scorers)
  std::map<std::string, GraphInfo> graphs;
  std::string image_token, chat_template;
  int32_t image_token_id = -1;
  TokenLayout layout;                  // token_layout (v1: one image, one run of N tokens at the placeholder)
  std::string position_scheme = "1d";  // positions.scheme
  std::vector<int> position_sections;  // positions.sections (mrope: t, h, w)
  std::string saliency;                // graphs.vision.tower.saliency ("" when not recorded)
  std::string embeddings_file, tokenizer_file;
  PreprocessSpec pre;
  AnyresSpec anyres;                   // preprocessing.anyres (LLaVA-NeXT), crop 0 when absent
  TilingSpec tiling;                   // preprocessing.tiling (Idefics3 / SmolVLM), tile 0 when absent
  DynamicSpec dynamic;                 // preprocessing.dynamic (Qwen2.5-VL), patch 0 when absent
  int max_sequence = 0;  // from manifest "limits.max_sequence" when present, else 0 (unlimited)

  std::string path(const std::string& rel) const { return dir + "/" + rel; }
};

/// One image's views for the vision graph: anyres (base view + tiles), tiled (tiles + global view) or the image.
std::vector<Rgb8> image_views(const Rgb8& img, const Manifest& m);

/// The vision graph's pixel_values for one image: its views, [V, 3, H, W] (rows = V), or a dynamic-resolution
/// image's patches, [P, 3 * temporal * patch * patch] (rows = P; grid = its merged rows x cols).
std::vector<float> image_pixels(const Rgb8& img, const Manifest& m, int64_t& rows, std::pair<int, int>* grid = nullptr);

/// Read manifest.json, refuse unknown format versions, and (verify) check size + sha256 of every listed file.
/// Errors are ATP_ERR_BUNDLE with the same wording as atp.bundle.read_manifest.
Manifest read_manifest(const std::string& dir, bool verify);

}  // namespace atp_impl
