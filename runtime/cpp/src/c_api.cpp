// The C ABI: every entry point catches everything and turns it into a status + thread-local message.
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <new>

#include "atp/atp_runtime.h"
#include "engine.hpp"

#ifndef ATP_VERSION_STRING
#define ATP_VERSION_STRING "0.0.0"
#endif

struct atp_tokenizer {
  std::unique_ptr<atp_impl::Tokenizer> owned;  // null for the bundle's own tokenizer (a view)
  const atp_impl::Tokenizer* tok = nullptr;
};
struct atp_bundle {
  std::unique_ptr<atp_impl::Bundle> impl;
  atp_tokenizer tokenizer_view;
};
struct atp_context {
  std::unique_ptr<atp_impl::Context> impl;
  std::string text;
};

namespace {

thread_local std::string g_last_error;

atp_status set_error(atp_status s, const std::string& msg) {
  g_last_error = msg;
  return s;
}

template <class F>
atp_status guard(F&& f) noexcept {
  try {
    g_last_error.clear();
    f();
    return ATP_OK;
  } catch (const atp_impl::Error& e) {
    return set_error(e.status(), e.what());
  } catch (const std::bad_alloc&) {
    return set_error(ATP_ERR_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return set_error(ATP_ERR_BACKEND, e.what());
  } catch (...) {
    return set_error(ATP_ERR_INTERNAL, "unknown C++ exception");
  }
}

void need(const void* p, const char* what) {
  if (!p) atp_impl::fail(ATP_ERR_INVALID_ARGUMENT, std::string(what) + " is NULL");
}

atp_impl::Context& ctx_of(atp_context* c) {
  need(c, "context");
  return *c->impl;
}
const atp_impl::Context& result_of(const atp_context* c) {
  need(c, "context");
  if (!c->impl->has_result()) atp_impl::fail(ATP_ERR_STATE, "no result: atp_generate has not completed on this context");
  return *c->impl;
}

}  // namespace

extern "C" {

const char* atp_version(void) { return ATP_VERSION_STRING; }
int atp_abi_version(void) { return ATP_ABI_VERSION; }
const char* atp_last_error(void) { return g_last_error.c_str(); }

const char* atp_status_name(atp_status s) {
  switch (s) {
    case ATP_OK: return "ATP_OK";
    case ATP_ERR_INVALID_ARGUMENT: return "ATP_ERR_INVALID_ARGUMENT";
    case ATP_ERR_BUNDLE: return "ATP_ERR_BUNDLE";
    case ATP_ERR_INPUT: return "ATP_ERR_INPUT";
    case ATP_ERR_OUT_OF_RANGE: return "ATP_ERR_OUT_OF_RANGE";
    case ATP_ERR_BACKEND: return "ATP_ERR_BACKEND";
    case ATP_ERR_UNSUPPORTED: return "ATP_ERR_UNSUPPORTED";
    case ATP_ERR_STATE: return "ATP_ERR_STATE";
    case ATP_ERR_INTERNAL: return "ATP_ERR_INTERNAL";
  }
  return "ATP_ERR_UNKNOWN";
}

void atp_open_options_init(atp_open_options* o) {
  if (!o) return;
  std::memset(o, 0, sizeof *o);
  o->struct_size = sizeof *o;
  o->backend = "ort";
  o->verify = 1;
}

atp_status atp_bundle_open(const char* path, const atp_open_options* o, atp_bundle** out) {
  return guard([&] {
    need(path, "path");
    need(out, "out");
    *out = nullptr;
    atp_impl::OpenOptions opts;
    if (o) {
      if (o->struct_size < sizeof(atp_open_options))
        atp_impl::fail(ATP_ERR_INVALID_ARGUMENT, "atp_open_options.struct_size is too small: call atp_open_options_init first");
      if (o->backend) opts.backend = o->backend;
      opts.verify = o->verify != 0;
      opts.threads = o->threads;
      if (o->ort_library) opts.ort_library = o->ort_library;
      if (o->trt_target) opts.trt_target = o->trt_target;
      if (o->trt_plugin_library) opts.trt_plugin_library = o->trt_plugin_library;
      if (o->max_sequence < 0) atp_impl::fail(ATP_ERR_INVALID_ARGUMENT, "max_sequence must be >= 0");
      opts.max_sequence = o->max_sequence;
    }
    auto b = std::make_unique<atp_bundle>();
    b->impl = std::make_unique<atp_impl::Bundle>(path, opts);
    b->tokenizer_view.tok = &b->impl->tokenizer();
    *out = b.release();
  });
}

void atp_bundle_close(atp_bundle* b) { delete b; }

atp_status atp_bundle_get_info(const atp_bundle* b, atp_bundle_info* out) {
  return guard([&] {
    need(b, "bundle");
    need(out, "out");
    const atp_impl::Manifest& m = b->impl->manifest();
    out->num_visual_tokens = m.num_visual_tokens;
    out->default_keep = m.default_keep;
    out->image_width = m.pre.out_width;
    out->image_height = m.pre.out_height;
    out->vocab_size = int32_t(b->impl->embeddings().rows);
    out->hidden_size = m.hidden_size;
    out->image_token_id = m.image_token_id;
    out->max_sequence = b->impl->max_sequence();
    out->backend = b->impl->backend_name().c_str();
  });
}

atp_status atp_bundle_get_layout(const atp_bundle* b, atp_token_layout* out) {
  return guard([&] {
    need(b, "bundle");
    need(out, "out");
    if (out->struct_size < offsetof(atp_token_layout, images) + sizeof(int32_t))
      atp_impl::fail(ATP_ERR_INVALID_ARGUMENT, "atp_token_layout.struct_size is not set (set it to sizeof(atp_token_layout))");
    const atp_impl::Manifest& m = b->impl->manifest();
    atp_token_layout full{};
    full.struct_size = uint32_t(sizeof(atp_token_layout));
    full.images = m.layout.images;
    full.tiles = m.layout.tiles;
    full.tokens_per_tile = m.layout.tokens_per_tile;
    full.placeholder_id = m.layout.placeholder_id;
    full.placeholder = m.layout.placeholder.c_str();
    full.kept_policy = m.layout.kept_policy.c_str();
    full.position_scheme = m.position_scheme.c_str();
    full.saliency = m.saliency.c_str();
    full.kind = m.layout.kind.c_str();
    full.deepstack_levels = m.deepstack_levels;
    const uint32_t n = std::min<uint32_t>(out->struct_size, uint32_t(sizeof(atp_token_layout)));
    std::memcpy(reinterpret_cast<char*>(out) + sizeof(uint32_t), reinterpret_cast<const char*>(&full) + sizeof(uint32_t),
                n - sizeof(uint32_t));  // fields the caller's struct has; struct_size stays the caller's
  });
}

atp_status atp_bundle_tokenizer(const atp_bundle* b, const atp_tokenizer** out) {
  return guard([&] {
    need(b, "bundle");
    need(out, "out");
    *out = &b->tokenizer_view;
  });
}

atp_status atp_context_create(atp_bundle* b, atp_context** out) {
  return guard([&] {
    need(b, "bundle");
    need(out, "out");
    *out = nullptr;
    auto c = std::make_unique<atp_context>();
    c->impl = std::make_unique<atp_impl::Context>(*b->impl);
    *out = c.release();
  });
}

void atp_context_destroy(atp_context* c) { delete c; }

atp_status atp_set_keep(atp_context* c, int32_t keep) { return guard([&] { ctx_of(c).set_keep(keep); }); }
atp_status atp_set_keep_ratio(atp_context* c, double ratio) { return guard([&] { ctx_of(c).set_keep_ratio(ratio); }); }

atp_status atp_set_scorer(atp_context* c, const char* scorer) {
  return guard([&] { ctx_of(c).set_scorer(scorer ? scorer : ""); });
}

atp_status atp_set_image_rgb8(atp_context* c, const uint8_t* px, int32_t w, int32_t h, int32_t ch, int32_t stride) {
  return guard([&] { ctx_of(c).set_image(atp_impl::rgb8_from_pixels(px, w, h, ch, stride)); });
}

atp_status atp_set_image_file(atp_context* c, const char* path) {
  return guard([&] {
    need(path, "path");
    ctx_of(c).set_image(atp_impl::load_image_file(path));
  });
}

atp_status atp_set_pixels(atp_context* c, const float* chw, size_t count) {
  return guard([&] { ctx_of(c).set_pixels(chw, count); });
}

atp_status atp_set_prompt(atp_context* c, const char* text, int raw) {
  return guard([&] {
    need(text, "prompt");
    ctx_of(c).set_prompt(text, raw != 0);
  });
}

atp_status atp_set_prompt_ids(atp_context* c, const int32_t* ids, size_t n) {
  return guard([&] {
    if (n) need(ids, "ids");
    ctx_of(c).set_prompt_ids(n ? std::vector<int32_t>(ids, ids + n) : std::vector<int32_t>());
  });
}

void atp_sampling_init(atp_sampling* s) {
  if (!s) return;
  std::memset(s, 0, sizeof *s);
  s->struct_size = sizeof *s;
  s->top_p = 1.0f;
  s->repetition_penalty = 1.0f;
  s->max_new_tokens = 32;
}

atp_status atp_generate(atp_context* c, const atp_sampling* s, atp_token_callback cb, void* user) {
  return guard([&] {
    atp_impl::Context& ctx = ctx_of(c);
    atp_impl::GenerateParams p;
    if (s) {
      if (s->struct_size < sizeof(atp_sampling))
        atp_impl::fail(ATP_ERR_INVALID_ARGUMENT, "atp_sampling.struct_size is too small: call atp_sampling_init first");
      p.sampling.temperature = s->temperature;
      p.sampling.top_k = s->top_k;
      p.sampling.top_p = s->top_p;
      p.sampling.repetition_penalty = s->repetition_penalty;
      p.sampling.seed = s->seed;
      p.sampling.max_new_tokens = s->max_new_tokens;
      p.sampling.ignore_eos = s->ignore_eos != 0;
    }
    atp_impl::TokenFn fn;
    if (cb) fn = [&](int32_t id, const std::string& piece) { return cb(user, id, piece.c_str()) == 0; };
    ctx.generate(p, fn);
    c->text = ctx.text();
  });
}

atp_status atp_result_tokens(const atp_context* c, const int32_t** ids, size_t* n) {
  return guard([&] {
    need(ids, "ids");
    need(n, "count");
    const auto& r = result_of(c).tokens();
    *ids = r.data();
    *n = r.size();
  });
}

atp_status atp_result_text(const atp_context* c, const char** text) {
  return guard([&] {
    need(text, "text");
    result_of(c);
    *text = c->text.c_str();
  });
}

atp_status atp_result_kept_index(const atp_context* c, const int64_t** index, size_t* n) {
  return guard([&] {
    need(index, "index");
    need(n, "count");
    const auto& r = result_of(c).kept_index();
    *index = r.data();
    *n = r.size();
  });
}

atp_status atp_result_timings(const atp_context* c, atp_timings* out) {
  return guard([&] {
    need(out, "out");
    const atp_impl::Timings& t = result_of(c).timings();
    out->preprocess_ms = t.preprocess;
    out->vision_ms = t.vision;
    out->prefill_ms = t.prefill;
    out->ttft_ms = t.ttft;
    out->decode_ms_per_token = t.decode_per_token;
    out->total_ms = t.total;
    out->prompt_tokens = t.prompt_tokens;
    out->generated_tokens = t.generated;
    out->kept = t.kept;
  });
}

atp_status atp_tokenizer_open(const char* path, atp_tokenizer** out) {
  return guard([&] {
    need(path, "path");
    need(out, "out");
    *out = nullptr;
    auto t = std::make_unique<atp_tokenizer>();
    t->owned = atp_impl::Tokenizer::from_file(path);
    t->tok = t->owned.get();
    *out = t.release();
  });
}

void atp_tokenizer_close(atp_tokenizer* t) {
  if (t && t->owned) delete t;  // views from atp_bundle_tokenizer belong to the bundle
}

atp_status atp_tokenizer_encode(const atp_tokenizer* t, const char* text, int add_special, int32_t* ids, size_t cap,
                                size_t* count) {
  return guard([&] {
    need(t, "tokenizer");
    need(text, "text");
    need(count, "count");
    std::vector<int32_t> r = t->tok->encode(text, add_special != 0);
    *count = r.size();
    if (cap) {
      need(ids, "ids");
      std::copy_n(r.data(), std::min(cap, r.size()), ids);
    }
  });
}

atp_status atp_tokenizer_decode(const atp_tokenizer* t, const int32_t* ids, size_t n, int skip_special, char* text,
                                size_t cap, size_t* length) {
  return guard([&] {
    need(t, "tokenizer");
    need(length, "length");
    if (n) need(ids, "ids");
    std::string s = t->tok->decode(n ? std::vector<int32_t>(ids, ids + n) : std::vector<int32_t>(), skip_special != 0);
    *length = s.size();
    if (cap) {
      need(text, "text");
      size_t k = std::min(cap - 1, s.size());
      std::memcpy(text, s.data(), k);
      text[k] = '\0';
    }
  });
}

atp_status atp_bundle_preprocess_file(const atp_bundle* b, const char* path, float* chw, size_t cap, size_t* count) {
  return guard([&] {
    need(b, "bundle");
    need(path, "path");
    need(count, "count");
    int64_t rows = 0;
    std::vector<float> px = atp_impl::image_pixels(atp_impl::load_image_file(path), b->impl->manifest(), rows);
    *count = px.size();
    if (cap) {
      need(chw, "chw");
      std::copy_n(px.data(), std::min(cap, px.size()), chw);
    }
  });
}

}  // extern "C"
