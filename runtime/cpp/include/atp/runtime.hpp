// atp embedded runtime: header-only RAII C++ wrapper over the C ABI (atp_runtime.h).
//
//   atp::Bundle bundle("bundle_dir");                 // throws atp::Error on failure
//   atp::Context ctx(bundle);                          // one per thread
//   ctx.set_image_file("cat.png");
//   ctx.set_prompt("What is in the image?");
//   ctx.set_keep(16);
//   auto ids = ctx.generate(atp::Sampling{}, [](int32_t id, const char* piece) { std::cout << piece; return true; });
//
// Errors from the C ABI become atp::Error (status + message); the wrapper adds no state of its own.
#ifndef ATP_RUNTIME_HPP
#define ATP_RUNTIME_HPP

#include <cstdint>
#include <exception>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "atp/atp_runtime.h"
#include "atp/options.hpp"

namespace atp {

class Error : public std::runtime_error {
 public:
  Error(atp_status status, const std::string& message)
      : std::runtime_error(std::string(atp_status_name(status)) + ": " + message), status_(status) {}
  atp_status status() const noexcept { return status_; }

 private:
  atp_status status_;
};

inline void check(atp_status s) {
  if (s != ATP_OK) throw Error(s, atp_last_error());
}

inline std::string version() { return atp_version(); }

/// Read-only view of a tokenizer (the bundle's, or one opened from a tokenizer.json).
class Tokenizer {
 public:
  explicit Tokenizer(const std::string& tokenizer_json) {
    check(atp_tokenizer_open(tokenizer_json.c_str(), &owned_));
    view_ = owned_;
  }
  explicit Tokenizer(const atp_tokenizer* view) : view_(view) {}
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  Tokenizer(Tokenizer&& o) noexcept : owned_(std::exchange(o.owned_, nullptr)), view_(o.view_) {}
  ~Tokenizer() { atp_tokenizer_close(owned_); }

  std::vector<int32_t> encode(const std::string& text, bool add_special_tokens = true) const {
    size_t n = 0;
    check(atp_tokenizer_encode(view_, text.c_str(), add_special_tokens, nullptr, 0, &n));
    std::vector<int32_t> ids(n);
    check(atp_tokenizer_encode(view_, text.c_str(), add_special_tokens, ids.data(), ids.size(), &n));
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens = true) const {
    size_t n = 0;
    check(atp_tokenizer_decode(view_, ids.data(), ids.size(), skip_special_tokens, nullptr, 0, &n));
    std::string s(n + 1, '\0');
    check(atp_tokenizer_decode(view_, ids.data(), ids.size(), skip_special_tokens, &s[0], s.size(), &n));
    s.resize(n);
    return s;
  }

 private:
  atp_tokenizer* owned_ = nullptr;
  const atp_tokenizer* view_ = nullptr;
};

class Bundle {
 public:
  explicit Bundle(const std::string& path, const OpenOptions& o = {}) {
    atp_open_options c;
    atp_open_options_init(&c);
    c.backend = o.backend.c_str();
    c.verify = o.verify;
    c.threads = o.threads;
    c.ort_library = o.ort_library.empty() ? nullptr : o.ort_library.c_str();
    c.trt_target = o.trt_target.empty() ? nullptr : o.trt_target.c_str();
    c.trt_plugin_library = o.trt_plugin_library.empty() ? nullptr : o.trt_plugin_library.c_str();
    c.max_sequence = o.max_sequence;
    check(atp_bundle_open(path.c_str(), &c, &b_));
  }
  Bundle(const Bundle&) = delete;
  Bundle& operator=(const Bundle&) = delete;
  Bundle(Bundle&& o) noexcept : b_(std::exchange(o.b_, nullptr)) {}
  ~Bundle() { atp_bundle_close(b_); }

  atp_bundle_info info() const {
    atp_bundle_info i{};
    check(atp_bundle_get_info(b_, &i));
    return i;
  }
  /// How visual tokens enter the prompt (token layout, position scheme, gate saliency); ABI 2.
  atp_token_layout layout() const {
    atp_token_layout l{};
    l.struct_size = sizeof(atp_token_layout);
    check(atp_bundle_get_layout(b_, &l));
    return l;
  }
  Tokenizer tokenizer() const {
    const atp_tokenizer* t = nullptr;
    check(atp_bundle_tokenizer(b_, &t));
    return Tokenizer(t);
  }
  std::vector<float> preprocess_file(const std::string& path) const {
    size_t n = 0;
    check(atp_bundle_preprocess_file(b_, path.c_str(), nullptr, 0, &n));
    std::vector<float> px(n);
    check(atp_bundle_preprocess_file(b_, path.c_str(), px.data(), px.size(), &n));
    return px;
  }
  atp_bundle* get() const { return b_; }

 private:
  atp_bundle* b_ = nullptr;
};

/// Per-thread request state. Not copyable; movable.
class Context {
 public:
  using TokenFn = std::function<bool(int32_t id, const char* piece)>;  // return false to stop

  explicit Context(const Bundle& b) { check(atp_context_create(b.get(), &c_)); }
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  Context(Context&& o) noexcept : c_(std::exchange(o.c_, nullptr)) {}
  ~Context() { atp_context_destroy(c_); }

  void set_keep(int32_t keep) { check(atp_set_keep(c_, keep)); }
  void set_keep_ratio(double ratio) { check(atp_set_keep_ratio(c_, ratio)); }
  void set_scorer(const std::string& scorer) { check(atp_set_scorer(c_, scorer.c_str())); }
  void set_image_rgb8(const uint8_t* px, int32_t w, int32_t h, int32_t channels = 3, int32_t stride = 0) {
    check(atp_set_image_rgb8(c_, px, w, h, channels, stride));
  }
  void set_image_file(const std::string& path) { check(atp_set_image_file(c_, path.c_str())); }
  void set_pixels(const std::vector<float>& chw) { check(atp_set_pixels(c_, chw.data(), chw.size())); }
  void set_prompt(const std::string& text, bool raw = false) { check(atp_set_prompt(c_, text.c_str(), raw)); }
  void set_prompt_ids(const std::vector<int32_t>& ids) { check(atp_set_prompt_ids(c_, ids.data(), ids.size())); }

  /// Generate; returns the token ids. `on_token` (optional) streams (id, text piece).
  std::vector<int32_t> generate(const Sampling& s = {}, TokenFn on_token = nullptr) {
    atp_sampling c;
    atp_sampling_init(&c);
    c.temperature = s.temperature;
    c.top_k = s.top_k;
    c.top_p = s.top_p;
    c.repetition_penalty = s.repetition_penalty;
    c.seed = s.seed;
    c.max_new_tokens = s.max_new_tokens;
    c.ignore_eos = s.ignore_eos;
    struct Thunk {
      TokenFn* fn;
      std::exception_ptr error;
      static int call(void* user, int32_t id, const char* piece) {
        auto* self = static_cast<Thunk*>(user);
        try {
          return (*self->fn)(id, piece) ? 0 : 1;
        } catch (...) {  // never unwind through the C library: stop, and rethrow after it returns
          self->error = std::current_exception();
          return 1;
        }
      }
    } thunk{&on_token, nullptr};
    atp_status st = atp_generate(c_, &c, on_token ? &Thunk::call : nullptr, &thunk);
    if (thunk.error) std::rethrow_exception(thunk.error);
    check(st);
    return tokens();
  }

  std::vector<int32_t> tokens() const {
    const int32_t* ids = nullptr;
    size_t n = 0;
    check(atp_result_tokens(c_, &ids, &n));
    return std::vector<int32_t>(ids, ids + n);
  }
  std::string text() const {
    const char* t = nullptr;
    check(atp_result_text(c_, &t));
    return t;
  }
  std::vector<int64_t> kept_index() const {
    const int64_t* p = nullptr;
    size_t n = 0;
    check(atp_result_kept_index(c_, &p, &n));
    return std::vector<int64_t>(p, p + n);
  }
  atp_timings timings() const {
    atp_timings t{};
    check(atp_result_timings(c_, &t));
    return t;
  }
  atp_context* get() const { return c_; }

 private:
  atp_context* c_ = nullptr;
};

}  // namespace atp

#endif  // ATP_RUNTIME_HPP
