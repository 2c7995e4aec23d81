#include "bundle.hpp"

#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "common.hpp"

namespace atp_impl {

using json = nlohmann::json;

bool GraphInfo::has_input(const std::string& name) const {
  for (const auto& i : inputs)
    if (i == name) return true;
  return false;
}

namespace {

bool is_dir(const std::string& p) {
  struct stat st{};
  return stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool file_size(const std::string& p, int64_t& size) {
  struct stat st{};
  if (stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  size = int64_t(st.st_size);
  return true;
}

// atp.bundle.confined: a manifest path must be relative, stay inside the bundle and cross no symlink
std::string confined(const std::string& dir, const std::string& rel) {
  if (rel.empty() || rel[0] == '/' || rel.find('\\') != std::string::npos || rel.find('\0') != std::string::npos)
    fail(ATP_ERR_BUNDLE, "bundle " + dir + ": the manifest names an unsafe path '" + rel + "' (paths are relative to the bundle)");
  std::string path = dir;
  size_t start = 0;
  while (start <= rel.size()) {
    size_t end = rel.find('/', start);
    if (end == std::string::npos) end = rel.size();
    const std::string part = rel.substr(start, end - start);
    if (part.empty() || part == "..")
      fail(ATP_ERR_BUNDLE, "bundle " + dir + ": the manifest names an unsafe path '" + rel + "' (it leaves the bundle)");
    path += "/" + part;
    struct stat st{};
    if (lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode))
      fail(ATP_ERR_BUNDLE, "bundle " + dir + ": " + rel + " goes through a symlink; bundles hold real files only");
    start = end + 1;
  }
  return path;
}

// atp.bundle.manifest_paths: every file a runtime loads must be listed (and so verified)
void check_listed(const std::string& dir, const json& m) {
  std::vector<std::string> paths;
  if (m.contains("graphs") && m["graphs"].is_object())
    for (auto& [name, g] : m["graphs"].items()) {
      if (!g.is_object()) continue;
      if (g.contains("file") && g["file"].is_string()) paths.push_back(g["file"].get<std::string>());
      if (g.contains("external_data") && g["external_data"].is_array())
        for (const json& e : g["external_data"])
          if (e.is_string()) paths.push_back(e.get<std::string>());
      if (g.contains("tokenizer") && g["tokenizer"].is_object() && g["tokenizer"].contains("file") && g["tokenizer"]["file"].is_string())
        paths.push_back(g["tokenizer"]["file"].get<std::string>());
    }
  for (const char* key : {"embeddings", "tokenizer"})
    if (m.contains(key) && m[key].is_object() && m[key].contains("file") && m[key]["file"].is_string())
      paths.push_back(m[key]["file"].get<std::string>());
  if (m.contains("token_layout") && m["token_layout"].is_object() && m["token_layout"].contains("newline") &&
      m["token_layout"]["newline"].is_string() && !m["token_layout"]["newline"].get<std::string>().empty())
    paths.push_back(m["token_layout"]["newline"].get<std::string>());
  const json& files = m.at("files");
  for (const std::string& rel : paths) {
    confined(dir, rel);
    if (!files.contains(rel))
      fail(ATP_ERR_BUNDLE, "bundle " + dir + ": the manifest loads " + rel + ", which it does not list with a checksum; re-export the bundle");
  }
}

void verify_files(const std::string& dir, const json& m) {
  auto it = m.find("files");
  if (it == m.end() || !it->is_object() || it->empty()) fail(ATP_ERR_BUNDLE, dir + "/manifest.json lists no files; re-export the bundle");
  for (auto& [rel, meta] : it->items()) {
    std::string p = confined(dir, rel);
    if (!meta.is_object())
      fail(ATP_ERR_BUNDLE, "bundle " + dir + ": the manifest's entry for " + rel + " is not an object; re-export the bundle");
    int64_t size = 0;
    if (!file_size(p, size)) fail(ATP_ERR_BUNDLE, "bundle " + dir + " is incomplete: " + rel + " is missing");
    if (!meta.contains("bytes") || meta["bytes"].get<int64_t>() != size)
      fail(ATP_ERR_BUNDLE, "bundle " + dir + ": " + rel + " has the wrong size (checksum mismatch); the file was modified or truncated");
    if (sha256_file(p) != meta.value("sha256", std::string()))
      fail(ATP_ERR_BUNDLE, "bundle " + dir + ": checksum mismatch for " + rel + "; the file was modified after export");
  }
}

std::vector<std::string> io_names(const json& arr) {
  std::vector<std::string> out;
  for (const json& e : arr) out.push_back(e.at("name").get<std::string>());
  return out;
}

}  // namespace

Manifest read_manifest(const std::string& dir_in, bool verify) {
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (!is_dir(dir)) fail(ATP_ERR_BUNDLE, "bundle " + dir + " does not exist or is not a directory");
  std::string mpath = dir + "/manifest.json";
  int64_t size = 0;
  if (!file_size(mpath, size)) fail(ATP_ERR_BUNDLE, dir + " is not an atp bundle: manifest.json is missing");
  Manifest out;
  out.dir = dir;
  out.raw_json = read_file(mpath);
  json m;
  try {
    m = json::parse(out.raw_json);
  } catch (const json::exception& e) {
    fail(ATP_ERR_BUNDLE, mpath + " is not valid JSON (" + std::string(e.what()) + "); re-export the bundle");
  }
  if (!m.is_object()) fail(ATP_ERR_BUNDLE, mpath + " does not hold a JSON object; re-export the bundle");
  auto ver = m.find("format_version");
  if (ver == m.end() || !ver->is_number_integer() || ver->get<int>() < 1 || ver->get<int>() > 2)
    fail(ATP_ERR_BUNDLE, "bundle " + dir + " has manifest format version " + (ver == m.end() ? std::string("None") : ver->dump()) +
                             "; this atp reads versions 1, 2: re-export it with this atp, or use the atp release that wrote it");
  const int version = ver->get<int>();
  if (verify) {
    verify_files(dir, m);
    check_listed(dir, m);
  }
  try {
    const json& model = m.at("model");
    out.num_layers = model.at("num_layers").get<int>();
    out.num_kv_heads = model.at("num_kv_heads").get<int>();
    out.head_dim = model.at("head_dim").get<int>();
    out.hidden_size = model.at("hidden_size").get<int>();
    out.eos_ids = model.at("eos_token_ids").get<std::vector<int32_t>>();
    out.deepstack_levels = model.value("deepstack_levels", 0);
    if (out.deepstack_levels < 0 || out.deepstack_levels > out.num_layers)
      fail(ATP_ERR_BUNDLE, mpath + ": model.deepstack_levels must be in 0..num_layers");
    for (auto& [name, g] : m.at("graphs").items()) {
      GraphInfo gi;
      gi.file = g.at("file").get<std::string>();
      gi.inputs = io_names(g.at("inputs"));
      gi.outputs = io_names(g.at("outputs"));
      if (g.contains("custom_ops") && g.at("custom_ops").is_object())
        gi.custom_ops_library = g.at("custom_ops").value("library", std::string());
      out.graphs[name] = gi;
    }
    if (!out.graphs.count("vision") || !out.graphs.count("decoder")) fail(ATP_ERR_BUNDLE, mpath + " lacks the vision or decoder graph");
    const json& pr = m.at("pruning");
    out.num_visual_tokens = pr.at("num_visual_tokens").get<int>();
    out.default_keep = pr.at("default_keep").get<int>();
    if (pr.contains("scorers") && pr["scorers"].is_object())
      for (auto& [name, graph] : pr["scorers"].items()) out.scorers[name] = graph.get<std::string>();
    const json& p = m.at("prompt");
    out.chat_template = p.at("template").get<std::string>();
    out.image_token = p.at("image_token").get<std::string>();
    out.image_token_id = p.at("image_token_id").get<int32_t>();
    TokenLayout& tl = out.layout;
    tl.placeholder = out.image_token;
    tl.placeholder_id = out.image_token_id;
    tl.tokens_per_tile = out.num_visual_tokens;
    if (version >= 2) {  // atp.manifest._layout / _positions: the same checks, the same wording
      const json& t = m.at("token_layout");
      tl.placeholder = t.at("placeholder").get<std::string>();
      tl.placeholder_id = t.at("placeholder_id").get<int32_t>();
      tl.images = t.at("images").get<int>();
      tl.tiles = t.at("tiles").get<int>();
      tl.tokens_per_tile = t.at("tokens_per_tile").get<int>();
      tl.prefix_ids = t.value("prefix_ids", std::vector<int32_t>());
      tl.suffix_ids = t.value("suffix_ids", std::vector<int32_t>());
      tl.kept_policy = t.at("kept_policy").get<std::string>();
      tl.kind = t.value("kind", std::string("fixed"));
      tl.newline = t.value("newline", std::string());
      if (tl.kind != "fixed" && tl.kind != "anyres" && tl.kind != "tiled" && tl.kind != "dynamic")
        fail(ATP_ERR_UNSUPPORTED, "this bundle's token layout is '" + tl.kind + "', which this runtime does not know (fixed, anyres, tiled, dynamic)");
      if (t.contains("markers") && t["markers"].is_object())
        for (auto it = t["markers"].begin(); it != t["markers"].end(); ++it) {
          auto runs = it.value().get<std::vector<std::vector<int32_t>>>();
          if (runs.size() < 2) fail(ATP_ERR_BUNDLE, "manifest: token_layout.markers['" + it.key() + "'] must be a list of marker runs");
          tl.markers[it.key()] = std::move(runs);
        }
      if (tl.kind == "tiled" && tl.markers.empty())
        fail(ATP_ERR_BUNDLE, "manifest: a tiled token_layout needs its marker runs (token_layout.markers)");
      if (tl.kind == "anyres" && tl.newline.empty())
        fail(ATP_ERR_BUNDLE, "manifest: an anyres token_layout needs its newline embedding file (token_layout.newline)");
      if (tl.kept_policy != "global_topk_ascending")
        fail(ATP_ERR_BUNDLE, "manifest: token_layout.kept_policy '" + tl.kept_policy +
                                 "' is not one this atp knows (global_topk_ascending); use the atp release that wrote the bundle");
      if (tl.placeholder != out.image_token || tl.placeholder_id != out.image_token_id)
        fail(ATP_ERR_BUNDLE, "manifest: token_layout's placeholder differs from prompt.image_token / image_token_id");
      if (tl.images < 1 || tl.tiles < 1 || int64_t(tl.tiles) * tl.tokens_per_tile != out.num_visual_tokens)
        fail(ATP_ERR_BUNDLE, "manifest: token_layout holds " + std::to_string(int64_t(tl.tiles) * tl.tokens_per_tile) +
                                 " visual tokens, pruning.num_visual_tokens says " + std::to_string(out.num_visual_tokens));
      out.position_scheme = m.at("positions").at("scheme").get<std::string>();
      if (out.position_scheme != "1d" && out.position_scheme != "mrope")
        fail(ATP_ERR_BUNDLE, "manifest: positions.scheme '" + out.position_scheme + "' is not one this atp runs (1d, mrope)");
      if (m.at("positions").contains("sections")) out.position_sections = m["positions"]["sections"].get<std::vector<int>>();
      if (out.position_scheme == "mrope" && out.position_sections.size() != 3)
        fail(ATP_ERR_BUNDLE, "manifest: positions.sections must give the t, h and w rotary sections of an mrope scheme");
    }
    const json& vision = m.at("graphs").at("vision");
    if (vision.contains("tower") && vision["tower"].is_object()) out.saliency = vision["tower"].value("saliency", std::string());
    out.embeddings_file = m.at("embeddings").at("file").get<std::string>();
    out.tokenizer_file = m.at("tokenizer").at("file").get<std::string>();
    const json& s = m.at("preprocessing");
    PreprocessSpec& ps = out.pre;
    ps.convert_rgb = s.value("convert_rgb", true);
    if (s.contains("resize") && !s["resize"].is_null() && !s["resize"].empty()) {
      const json& r = s["resize"];
      if (r.contains("shortest_edge")) ps.resize_shortest = r["shortest_edge"].get<int>();
      else {
        ps.resize_width = r.at("width").get<int>();
        ps.resize_height = r.at("height").get<int>();
      }
    }
    ps.resample = s.value("resample", 3);
    if (s.contains("center_crop") && !s["center_crop"].is_null() && !s["center_crop"].empty()) {
      ps.crop_height = s["center_crop"].at("height").get<int>();
      ps.crop_width = s["center_crop"].at("width").get<int>();
    }
    if (s.contains("rescale_factor") && !s["rescale_factor"].is_null()) {
      ps.has_rescale = true;
      ps.rescale = s["rescale_factor"].get<double>();
    }
    if (s.contains("mean") && !s["mean"].is_null()) {
      ps.has_norm = true;
      auto mean = s["mean"].get<std::vector<double>>(), stdv = s.at("std").get<std::vector<double>>();
      if (mean.size() != 3 || stdv.size() != 3) fail(ATP_ERR_BUNDLE, mpath + ": preprocessing mean/std must have 3 values");
      for (int c = 0; c < 3; ++c) {
        ps.mean[c] = float(mean[size_t(c)]);
        ps.std[c] = float(stdv[size_t(c)]);
      }
    }
    if (s.contains("anyres") && s["anyres"].is_object()) {
      const json& a = s["anyres"];
      for (const json& p : a.at("grid_pinpoints")) out.anyres.pinpoints.emplace_back(p.at(0).get<int>(), p.at(1).get<int>());
      out.anyres.crop = a.at("crop").get<int>();
      out.anyres.patch = a.at("patch").get<int>();
      out.anyres.max_patches = a.contains("max_patches") ? a.at("max_patches").get<int>() : 0;
      if (out.anyres.max_patches < 0 || out.anyres.max_patches > 4096)
        fail(ATP_ERR_BUNDLE, mpath + ": preprocessing.anyres.max_patches must be in 0..4096");
      if (out.anyres.crop < 1 || out.anyres.patch < 1 || out.anyres.crop % out.anyres.patch || out.anyres.pinpoints.empty())
        fail(ATP_ERR_BUNDLE, mpath + ": preprocessing.anyres needs grid pinpoints and a crop divisible by the patch size");
    }
    if (s.contains("tiling") && s["tiling"].is_object()) {
      const json& t = s["tiling"];
      out.tiling.longest_edge = t.at("longest_edge").get<int>();
      out.tiling.tile = t.at("tile").get<int>();
      out.tiling.resample = t.value("resample", 1);
      if (out.tiling.tile < 1 || out.tiling.longest_edge < 1 || out.tiling.longest_edge > 8192 || out.tiling.tile > 8192)
        fail(ATP_ERR_BUNDLE, mpath + ": preprocessing.tiling needs a tile and a longest edge in 1..8192");
    }
    if (s.contains("dynamic") && s["dynamic"].is_object()) {
      const json& d = s["dynamic"];
      DynamicSpec& ds = out.dynamic;
      ds.patch = d.at("patch").get<int>();
      ds.merge = d.at("merge").get<int>();
      ds.temporal = d.at("temporal").get<int>();
      ds.window = d.at("window").get<int>();
      ds.resample = d.value("resample", 3);
      ds.position_grid = d.value("position_grid", 0);
      ds.min_pixels = d.at("min_pixels").get<int64_t>();
      ds.max_pixels = d.at("max_pixels").get<int64_t>();
      if (ds.patch < 1 || ds.merge < 1 || ds.temporal < 1 || ds.window < 0 || ds.position_grid < 0 || ds.position_grid > 4096 ||
          ds.patch > 1024 || ds.merge > 16 || ds.temporal > 16 ||
          ds.min_pixels < 1 || ds.max_pixels < ds.min_pixels || ds.max_pixels > int64_t(8192) * 8192)
        fail(ATP_ERR_BUNDLE, mpath + ": preprocessing.dynamic needs patch, merge, temporal >= 1, window >= 0, a position grid "
                                     "in 0..4096 and pixel bounds in 1..67M");
    }
    auto size = s.at("image_size").get<std::vector<int>>();
    if (size.size() != 2) fail(ATP_ERR_BUNDLE, mpath + ": preprocessing.image_size must be [H, W]");
    ps.out_height = size[0];
    ps.out_width = size[1];
    for (int v : {ps.out_height, ps.out_width, ps.resize_shortest, ps.resize_width, ps.resize_height, ps.crop_height, ps.crop_width})
      if (v < 0 || v > 8192 || ps.out_height < 1 || ps.out_width < 1)  // atp.manifest.MAX_SIDE: bounded memory
        fail(ATP_ERR_BUNDLE, mpath + ": preprocessing sizes must be whole pixels in 1..8192");
    if (m.contains("limits") && m["limits"].is_object()) out.max_sequence = m["limits"].value("max_sequence", 0);
  } catch (const json::exception& e) {
    fail(ATP_ERR_BUNDLE, mpath + " lacks a field the runtime needs (" + std::string(e.what()) + "); re-export the bundle");
  }
  return out;
}

std::vector<float> image_pixels(const Rgb8& img, const Manifest& m, int64_t& rows, std::pair<int, int>* grid) {
  std::vector<float> px;
  if (m.layout.kind == "dynamic") {  // one view at its own size (atp.runtime.preprocess._dynamic_view)
    if (!m.dynamic.enabled()) fail(ATP_ERR_BUNDLE, "manifest: a dynamic token layout needs preprocessing.dynamic");
    auto [h, w] = smart_resize(img.height, img.width, m.dynamic);
    PreprocessSpec ps = m.pre;
    ps.resize_shortest = 0;
    ps.resize_width = w;
    ps.resize_height = h;
    ps.resample = m.dynamic.resample;
    ps.crop_width = ps.crop_height = 0;
    ps.out_height = h;
    ps.out_width = w;
    px = patchify(preprocess(img, ps), h, w, m.dynamic);
    rows = int64_t(px.size()) / m.dynamic.patch_dim();
    if (grid) *grid = {h / m.dynamic.factor(), w / m.dynamic.factor()};
    return px;
  }
  rows = 0;
  for (const Rgb8& view : image_views(img, m)) {
    std::vector<float> v = preprocess(view, m.pre);
    px.insert(px.end(), v.begin(), v.end());
    ++rows;
  }
  return px;
}

std::vector<Rgb8> image_views(const Rgb8& img, const Manifest& m) {
  if (m.layout.kind == "tiled") return tiling_views(img, m.tiling);
  if (m.layout.kind == "anyres") return anyres_views(img, m.anyres, m.pre.resample);
  return {img};
}

}  // namespace atp_impl
