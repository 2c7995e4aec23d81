#include "engine.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "anyres.hpp"
#include "positions.hpp"
#include "unicode.hpp"

namespace atp_impl {

namespace {
using Clock = std::chrono::steady_clock;
double ms_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

bool blank(const std::string& s) {
  for (uint32_t c : unicode::decode(s))
    if (!unicode::is_space(c)) return false;
  return true;
}
}  // namespace

Bundle::Bundle(const std::string& path, const OpenOptions& opts) : opts_(opts) {
  m_ = read_manifest(path, opts.verify);
  tok_ = Tokenizer::from_file(m_.path(m_.tokenizer_file));
  emb_ = load_npy_f32(m_.path(m_.embeddings_file));
  if (m_.layout.kind == "anyres") {
    newline_ = load_npy_f32(m_.path(m_.layout.newline));
    if (newline_.rows != 1 || newline_.cols != m_.hidden_size)
      fail(ATP_ERR_BUNDLE, m_.layout.newline + " must be [1, hidden_size]; re-export the bundle");
    if (!m_.anyres.enabled()) fail(ATP_ERR_BUNDLE, "manifest: an anyres token layout needs preprocessing.anyres");
  }
  if (emb_.cols != m_.hidden_size)
    fail(ATP_ERR_BUNDLE, m_.embeddings_file + " has " + std::to_string(emb_.cols) + " columns, the manifest says hidden_size " +
                             std::to_string(m_.hidden_size) + "; re-export the bundle");
  if (opts.backend == "ort") backend_ = make_ort_backend(m_, opts_);
  else if (opts.backend == "trt") backend_ = make_trt_backend(m_, opts_);
  else fail(ATP_ERR_INVALID_ARGUMENT, "unknown backend '" + opts.backend + "' (ort, trt)");
  max_sequence_ = opts.max_sequence > 0 ? opts.max_sequence : backend_->max_sequence() > 0 ? backend_->max_sequence() : m_.max_sequence;
}

Context::Context(const Bundle& b) : b_(b), dec_(b.backend().new_decoder()) {}

void Context::set_keep(int keep) {
  int n = b_.manifest().num_visual_tokens;
  if (keep < 0 || keep > n)
    fail(ATP_ERR_OUT_OF_RANGE, "keep=" + std::to_string(keep) + " is out of range: this model has " + std::to_string(n) +
                                   " visual tokens (1 <= K <= " + std::to_string(n) + "; 0 = the bundle default)");
  keep_ = keep;
  keep_ratio_ = 0;
}

void Context::set_keep_ratio(double ratio) {
  if (!(ratio > 0 && ratio <= 1)) fail(ATP_ERR_OUT_OF_RANGE, "keep_ratio must be in (0, 1], got " + std::to_string(ratio));
  keep_ratio_ = ratio;
  keep_ = 0;
}

void Context::set_scorer(const std::string& scorer) {
  const Manifest& m = b_.manifest();
  if (scorer.empty()) {
    vision_graph_ = "vision";
    return;
  }
  auto it = m.scorers.find(scorer);
  if (it == m.scorers.end() || !m.graphs.count(it->second)) {
    std::string have;
    for (auto& [name, g] : m.scorers) have += (have.empty() ? "" : ", ") + name;
    fail(ATP_ERR_UNSUPPORTED, "this bundle has no vision graph for scorer '" + scorer + "'; it has: " + have +
                                  " (export with --extra-scorers " + scorer + ")");
  }
  vision_graph_ = it->second;
}

// atp.runtime.Session.resolve_keep: a count (or the default) is capped at this image's N, a ratio is of this image's N
int Context::resolve_keep(int n) const {
  const int max_n = b_.manifest().num_visual_tokens;
  if (n <= 0) n = max_n;
  if (keep_ratio_ > 0) return std::max(1, int(std::ceil(keep_ratio_ * n - 1e-9)));
  return std::min(keep_ > 0 ? keep_ : b_.manifest().default_keep, n);
}

void Context::set_image(Rgb8 img) {
  image_ = std::move(img);
  has_image_ = true;
  has_pixels_ = false;
}

void Context::set_pixels(const float* chw, size_t count) {
  const PreprocessSpec& s = b_.manifest().pre;
  size_t want = size_t(3) * size_t(s.out_height) * size_t(s.out_width);
  if (!chw) fail(ATP_ERR_INVALID_ARGUMENT, "pixels pointer is NULL");
  if (count != want)
    fail(ATP_ERR_INPUT, "pixels must be float32 [3, " + std::to_string(s.out_height) + ", " + std::to_string(s.out_width) + "] (" +
                            std::to_string(want) + " values), got " + std::to_string(count));
  pixels_.assign(chw, chw + count);
  has_pixels_ = true;
  has_image_ = false;
}

void Context::set_prompt(const std::string& text, bool raw) {
  if (blank(text)) fail(ATP_ERR_INPUT, "prompt must be a non-empty string");
  prompt_ = text;
  prompt_raw_ = raw;
  prompt_is_ids_ = false;
  has_prompt_ = true;
  prompt_ids();  // validate now (image placeholder count) so the error comes from this call
}

void Context::set_prompt_ids(std::vector<int32_t> ids) {
  plan(ids, b_.manifest().layout, "prompt ids");  // placeholder count per the token layout
  for (int32_t id : ids)  // the image token is replaced by the visual tokens: it may lie beyond the table
    if (id != b_.manifest().image_token_id && (id < 0 || id >= b_.embeddings().rows))
      fail(ATP_ERR_INPUT, "prompt token id " + std::to_string(id) + " is outside the vocabulary (0.." + std::to_string(b_.embeddings().rows - 1) + ")");
  prompt_ids_ = std::move(ids);
  prompt_is_ids_ = true;
  prompt_.clear();
  has_prompt_ = true;
}

std::vector<int32_t> Context::prompt_ids() const {
  if (prompt_is_ids_) return prompt_ids_;
  const Manifest& m = b_.manifest();
  std::string text = prompt_;
  if (!prompt_raw_) {  // str.replace("{prompt}", prompt): every occurrence
    text.clear();
    const std::string& t = m.chat_template;
    const std::string key = "{prompt}";
    size_t pos = 0;
    for (size_t hit; (hit = t.find(key, pos)) != std::string::npos; pos = hit + key.size()) text += t.substr(pos, hit - pos) + prompt_;
    text += t.substr(pos);
  }
  std::vector<int32_t> ids = b_.tokenizer().encode(text, true);
  plan(ids, m.layout, prompt_raw_ ? "the raw prompt" : "the prompt");
  for (int32_t id : ids)  // the image token is replaced by the visual tokens: it may lie beyond the table
    if (id != m.image_token_id && (id < 0 || id >= b_.embeddings().rows))
      fail(ATP_ERR_BUNDLE, "tokenizer produced id " + std::to_string(id) + " beyond the embedding table's " +
                               std::to_string(b_.embeddings().rows) + " rows");
  return ids;
}

std::vector<float> Context::text_embeds() const {
  const NpyMatrix& e = b_.embeddings();
  std::vector<float> out(size_t(e.cols), 0.0f);
  if (prompt_is_ids_) return out;  // no prompt text: no text signal (cosine 0 everywhere), as Python does for no ids
  std::vector<int32_t> ids;
  for (int32_t id : b_.tokenizer().encode(prompt_, false))
    if (id >= 0 && id < e.rows) ids.push_back(id);
  if (ids.empty()) return out;
  for (int32_t id : ids)
    for (int64_t c = 0; c < e.cols; ++c) out[size_t(c)] += e.row(id)[c];
  for (float& v : out) v /= float(ids.size());
  return out;
}

void Context::generate(const GenerateParams& p, const TokenFn& on_token) {
  has_result_ = false;
  if (!has_image_ && !has_pixels_) fail(ATP_ERR_STATE, "no image: call atp_set_image_rgb8 / atp_set_image_file before atp_generate");
  if (!has_prompt_) fail(ATP_ERR_STATE, "no prompt: call atp_set_prompt / atp_set_prompt_ids before atp_generate");
  if (p.sampling.max_new_tokens < 1) fail(ATP_ERR_INVALID_ARGUMENT, "max_new_tokens must be >= 1, got " + std::to_string(p.sampling.max_new_tokens));
  Sampler sampler(p.sampling);
  const Manifest& m = b_.manifest();
  const NpyMatrix& table = b_.embeddings();
  const int k = resolve_keep();  // for a graph with K per image (kept_count output): the upper bound
  std::vector<int32_t> ids = prompt_ids();
  const std::vector<Segment> segments = plan(ids, m.layout, "the prompt");
  int64_t length = spliced_length(segments, {int64_t(k)});
  const int limit = b_.max_sequence();
  if (limit > 0 && length >= limit)
    fail(ATP_ERR_OUT_OF_RANGE, "prompt is " + std::to_string(length) + " tokens with " + std::to_string(k) +
                                   " visual tokens, longer than the profile's maximum sequence of " + std::to_string(limit) +
                                   " (shorten the prompt or lower keep)");

  auto t0 = Clock::now();
  std::vector<float> pixels;
  int64_t views = 1;
  AnyresTokens tokens;
  const std::vector<std::vector<int32_t>>* markers = nullptr;
  int k_image = k;
  DynamicLayout dyn;
  std::pair<int, int> grid{0, 0};
  if (m.layout.kind != "fixed") {  // several views per image (anyres, tiled), or patches at the image's own size (dynamic)
    if (has_pixels_) fail(ATP_ERR_UNSUPPORTED, "this bundle preprocesses each image its own way (" + m.layout.kind + "): give an image, not pixels");
    pixels = image_pixels(image_, m, views, &grid);
  }
  if (m.layout.kind == "dynamic") {  // the merged grid: this image's N and the layout inputs (atp.runtime.dynamic)
    dyn = dynamic_layout(grid.first, grid.second, m.dynamic);
    k_image = resolve_keep(grid.first * grid.second);
  } else if (m.layout.kind == "anyres") {  // token order and this image's N
    tokens = anyres_token_layout(image_.height, image_.width, m.anyres);
    k_image = resolve_keep(int(tokens.size()));
  } else if (m.layout.kind == "tiled") {  // the grid's marker runs, one more than the views
    auto [rows, cols] = tiling_grid(image_.height, image_.width, m.tiling);
    auto it = m.layout.markers.find(grid_key(rows, cols));
    if (it == m.layout.markers.end())
      fail(ATP_ERR_BUNDLE, "manifest: token_layout.markers has no entry for a " + grid_key(rows, cols) + " grid");
    markers = &it->second;
    if (size_t(views) + 1 != markers->size())
      fail(ATP_ERR_BUNDLE, "manifest: the " + grid_key(rows, cols) + " marker runs do not match its " + std::to_string(views) + " views");
    k_image = resolve_keep(int(views) * m.layout.tokens_per_tile);
  } else if (m.layout.kind == "fixed") {
    pixels = has_pixels_ ? pixels_ : preprocess(image_, m.pre);
  }
  auto t1 = Clock::now();
  std::vector<float> text;
  if (m.graphs.at(vision_graph_).has_input("text_embeds")) text = text_embeds();
  VisionOutput v = b_.backend().run_vision(vision_graph_, pixels.data(), views, k_image, text.empty() ? nullptr : text.data(),
                                           tokens.size() ? &tokens : nullptr, dyn.patches() ? &dyn : nullptr);
  auto t2 = Clock::now();
  const std::vector<std::string>& vouts = m.graphs.at(vision_graph_).outputs;
  const bool auto_k = std::find(vouts.begin(), vouts.end(), "kept_count") != vouts.end();  // atp-export onnx --keep auto
  if ((auto_k ? (v.k < 1 || v.k > k_image) : v.k != k_image) || v.dim != m.hidden_size)
    fail(ATP_ERR_BACKEND, "vision graph returned " + std::to_string(v.k) + "x" + std::to_string(v.dim) + " embeddings, expected " +
                              (auto_k ? "at most " : "") + std::to_string(k_image) + "x" + std::to_string(m.hidden_size));
  std::vector<float> slot = v.embeds;
  if (m.layout.kind == "anyres") {  // the newline after the last kept token of each grid row that keeps one
    const size_t D = size_t(m.hidden_size);
    slot.clear();
    const std::vector<size_t> rows = newline_slots(v.kept, tokens.row);
    size_t r = 0;
    for (size_t i = 0; i < size_t(v.k); ++i) {
      slot.insert(slot.end(), v.embeds.begin() + long(i * D), v.embeds.begin() + long((i + 1) * D));
      if (r < rows.size() && rows[r] == i) {
        slot.insert(slot.end(), b_.newline().row(0), b_.newline().row(0) + D);
        ++r;
      }
    }
  }
  if (markers) {  // tiled: marker run v, then view v's kept tokens (ascending kept index), ...; the last run at the end
    const size_t D = size_t(m.hidden_size), per_view = size_t(m.layout.tokens_per_tile);
    slot.clear();
    size_t i = 0;
    for (size_t view = 0; view < markers->size(); ++view) {
      for (int32_t id : (*markers)[view]) {
        if (id < 0 || id >= table.rows) fail(ATP_ERR_BUNDLE, "manifest: marker token id " + std::to_string(id) + " is outside the vocabulary");
        slot.insert(slot.end(), table.row(id), table.row(id) + D);
      }
      for (; view + 1 < markers->size() && i < size_t(v.k) && size_t(v.kept[i]) / per_view == view; ++i)
        slot.insert(slot.end(), v.embeds.begin() + long(i * D), v.embeds.begin() + long((i + 1) * D));
    }
  }
  length = spliced_length(segments, {int64_t(slot.size() / size_t(m.hidden_size))});
  std::vector<float> embeds = splice(segments, {&slot}, table, size_t(m.hidden_size));

  std::vector<float> logits;
  std::vector<int64_t> pos;
  const int axes = m.position_scheme == "mrope" ? 3 : 1;
  const int64_t start = image_start(segments);  // where the image slot begins in the spliced prompt (prompt.hpp)
  if (axes == 3) {  // kept tokens at their grid positions (positions.hpp)
    ImageSlot slot_at{start, &v.kept, grid.first, grid.second};
    if (grid.second < 1) fail(ATP_ERR_BUNDLE, "manifest: mrope positions need a dynamic-resolution token layout");
    positions_mrope(slot_at, length, pos);
  } else {
    positions_1d(0, length, pos);
  }
  int64_t next = next_position(pos);  // >= length: M-RoPE keeps the pruned tokens' positions free
  if (limit > 0 && next >= limit)
    fail(ATP_ERR_OUT_OF_RANGE, "the prompt reaches position " + std::to_string(next - 1) + ", past the model's " +
                                   std::to_string(limit) + " positions (shorten the prompt or lower keep)");
  std::vector<float> deepstack;  // DeepStack (Qwen3-VL): [L, length, D], the kept tokens' levels at their places
  if (!v.deepstack.empty()) {
    const size_t D = size_t(m.hidden_size), K = size_t(v.k);
    deepstack.assign(size_t(m.deepstack_levels) * size_t(length) * D, 0.0f);
    for (size_t l = 0; l < size_t(m.deepstack_levels); ++l)
      std::copy_n(v.deepstack.begin() + long(l * K * D), K * D, deepstack.begin() + long((l * size_t(length) + size_t(start)) * D));
  }
  dec_->reset();
  dec_->step(embeds.data(), length, pos, logits, deepstack.empty() ? nullptr : deepstack.data());
  auto t3 = Clock::now();

  out_.clear();
  std::vector<double> decode_ms;
  size_t emitted = 0;
  for (;;) {
    int32_t token = sampler(logits, out_);
    out_.push_back(token);
    bool stop = (!p.sampling.ignore_eos && std::find(m.eos_ids.begin(), m.eos_ids.end(), token) != m.eos_ids.end()) ||
                int(out_.size()) >= p.sampling.max_new_tokens || (limit > 0 && next + 1 >= limit);  // next >= the cache length
    if (on_token) {
      std::string raw = b_.tokenizer().decode_bytes(out_, true);
      // Hold back a trailing incomplete UTF-8 sequence until the next token completes it (flush at the end);
      // pieces are lossy-decoded like the final text, so they concatenate to it.
      size_t complete = stop ? raw.size() : unicode::complete_utf8_prefix(raw);
      std::string piece;
      if (complete > emitted) {
        std::vector<uint32_t> cps = unicode::decode(raw.substr(emitted, complete - emitted));
        piece = unicode::encode(cps, 0, cps.size());
      }
      emitted = std::max(emitted, complete);
      if (!on_token(token, piece)) stop = true;
    }
    if (stop) break;
    if (token < 0 || token >= table.rows) fail(ATP_ERR_BACKEND, "decoder produced token id " + std::to_string(token) + " beyond the embedding table");
    auto s = Clock::now();
    positions_step(next++, axes, pos);
    dec_->step(table.row(token), 1, pos, logits);
    decode_ms.push_back(ms_between(s, Clock::now()));
  }
  auto t4 = Clock::now();
  text_ = b_.tokenizer().decode(out_, true);
  kept_ = v.kept;
  t_ = Timings{};
  t_.preprocess = ms_between(t0, t1);
  t_.vision = ms_between(t1, t2);
  t_.prefill = ms_between(t2, t3);
  t_.ttft = ms_between(t0, t3);
  double sum = 0;
  for (double d : decode_ms) sum += d;
  t_.decode_per_token = decode_ms.empty() ? 0.0 : sum / double(decode_ms.size());
  t_.total = ms_between(t0, t4);
  t_.prompt_tokens = int(length);
  t_.generated = int(out_.size());
  t_.kept = int(v.k);
  has_result_ = true;
}

}  // namespace atp_impl
