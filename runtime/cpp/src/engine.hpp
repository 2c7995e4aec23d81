// Bundle (shared, read-only) and Context (one per thread): the generation loop of atp.runtime.Session.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "bundle.hpp"
#include "common.hpp"
#include "image.hpp"
#include "sampling.hpp"
#include "tokenizer.hpp"

namespace atp_impl {

class Bundle {
 public:
  Bundle(const std::string& path, const OpenOptions& opts);
  const Manifest& manifest() const { return m_; }
  const Tokenizer& tokenizer() const { return *tok_; }
  const NpyMatrix& embeddings() const { return emb_; }
  const NpyMatrix& newline() const { return newline_; }  // [1, D] (anyres layouts), else empty
  Backend& backend() const { return *backend_; }
  int max_sequence() const { return max_sequence_; }
  const std::string& backend_name() const { return opts_.backend; }

 private:
  OpenOptions opts_;
  Manifest m_;
  std::unique_ptr<Tokenizer> tok_;
  NpyMatrix emb_, newline_;
  std::unique_ptr<Backend> backend_;
  int max_sequence_ = 0;
};

struct GenerateParams {
  SamplingParams sampling;  // max_new_tokens and ignore_eos included
};

struct Timings {
  double preprocess = 0, vision = 0, prefill = 0, ttft = 0, decode_per_token = 0, total = 0;
  int prompt_tokens = 0, generated = 0, kept = 0;
};

/// Callback: (token id, decoded UTF-8 piece) -> true to continue.
using TokenFn = std::function<bool(int32_t, const std::string&)>;

class Context {
 public:
  explicit Context(const Bundle& b);
  void set_keep(int keep);
  void set_keep_ratio(double ratio);
  void set_scorer(const std::string& scorer);  // "" = the bundle's default vision graph
  void set_image(Rgb8 img);
  void set_pixels(const float* chw, size_t count);
  void set_prompt(const std::string& text, bool raw);
  void set_prompt_ids(std::vector<int32_t> ids);
  void generate(const GenerateParams& p, const TokenFn& on_token);

  const std::vector<int32_t>& tokens() const { return out_; }
  const std::string& text() const { return text_; }
  const std::vector<int64_t>& kept_index() const { return kept_; }
  const Timings& timings() const { return t_; }
  bool has_result() const { return has_result_; }

 private:
  int resolve_keep(int n = 0) const;  // n: this image's visual tokens (anyres), 0 = the bundle's N
  std::vector<int32_t> prompt_ids() const;
  std::vector<float> text_embeds() const;

  const Bundle& b_;
  std::unique_ptr<DecoderState> dec_;
  int keep_ = 0;
  std::string vision_graph_ = "vision";
  double keep_ratio_ = 0;
  bool has_image_ = false, has_pixels_ = false, has_prompt_ = false, prompt_raw_ = false, prompt_is_ids_ = false;
  Rgb8 image_;
  std::vector<float> pixels_;
  std::string prompt_;
  std::vector<int32_t> prompt_ids_;
  // results
  bool has_result_ = false;
  std::vector<int32_t> out_;
  std::string text_;
  std::vector<int64_t> kept_;
  Timings t_;
};

}  // namespace atp_impl
