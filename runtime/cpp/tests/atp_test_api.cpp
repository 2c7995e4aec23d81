// ctest: the C ABI and the C++ wrapper. With no argument: bundle-free checks only. With BUNDLE: the
// negative suite (missing/corrupt bundle, wrong checksum, bad images, K out of range, prompt longer than
// the profile, calls out of order, NULL arguments), streaming, determinism and the wrapper.
// Every failing call must return a status and a non-empty error text; nothing may crash (run under ASan/UBSan).
#include <cstddef>
#include <atp/runtime.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <unistd.h>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

static int g_failures = 0;
#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                              \
    }                                                                            \
  } while (0)

// A failing call: the expected status and an error text that mentions `needle`.
#define EXPECT_ERR(call, status, needle)                                                                  \
  do {                                                                                                   \
    atp_status _s = (call);                                                                              \
    const char* _e = atp_last_error();                                                                   \
    if (_s != (status) || !_e || !*_e || !std::strstr(_e, needle)) {                                      \
      std::fprintf(stderr, "%s:%d: %s -> %s '%s' (expected %s with '%s')\n", __FILE__, __LINE__, #call,     \
                   atp_status_name(_s), _e ? _e : "(null)", atp_status_name(status), needle);            \
      ++g_failures;                                                                                      \
    }                                                                                                    \
  } while (0)

static atp_open_options opts() {
  atp_open_options o;
  atp_open_options_init(&o);
  o.threads = 1;
  return o;
}

static void copy_bundle(const fs::path& from, const fs::path& to) {
  fs::remove_all(to);
  fs::copy(from, to, fs::copy_options::recursive);
}

static void bundle_free_checks() {
  CHECK(std::strlen(atp_version()) >= 5);
  CHECK(atp_abi_version() == ATP_ABI_VERSION);
  CHECK(std::string(atp_status_name(ATP_ERR_BUNDLE)) == "ATP_ERR_BUNDLE");
  atp_bundle* b = nullptr;
  EXPECT_ERR(atp_bundle_open(nullptr, nullptr, &b), ATP_ERR_INVALID_ARGUMENT, "NULL");
  EXPECT_ERR(atp_bundle_open("/nonexistent/bundle", nullptr, &b), ATP_ERR_BUNDLE, "does not exist");
  CHECK(b == nullptr);
  EXPECT_ERR(atp_bundle_open("/tmp", nullptr, nullptr), ATP_ERR_INVALID_ARGUMENT, "NULL");
  atp_tokenizer* t = nullptr;
  EXPECT_ERR(atp_tokenizer_open("/nonexistent/tokenizer.json", &t), ATP_ERR_BUNDLE, "cannot read");
  EXPECT_ERR(atp_set_keep(nullptr, 3), ATP_ERR_INVALID_ARGUMENT, "NULL");
  EXPECT_ERR(atp_generate(nullptr, nullptr, nullptr, nullptr), ATP_ERR_INVALID_ARGUMENT, "NULL");
  atp_bundle_close(nullptr);  // no-ops
  atp_context_destroy(nullptr);
  atp_tokenizer_close(nullptr);
  // the wrapper turns statuses into exceptions
  bool threw = false;
  try {
    atp::Bundle bad("/nonexistent/bundle");
  } catch (const atp::Error& e) {
    threw = e.status() == ATP_ERR_BUNDLE && std::strstr(e.what(), "does not exist");
  }
  CHECK(threw);
}

static void corrupt_bundle_checks(const fs::path& bundle, const fs::path& tmp) {
  atp_open_options o = opts();
  atp_bundle* b = nullptr;
  fs::path d = tmp / "corrupt";

  // first, before ONNX Runtime is loaded in this process (it is loaded once, then shared)
  o.ort_library = "/nonexistent/libonnxruntime.so.1.99";
  EXPECT_ERR(atp_bundle_open(bundle.c_str(), &o, &b), ATP_ERR_BACKEND, "cannot load ONNX Runtime");
  o.ort_library = nullptr;

  copy_bundle(bundle, d);
  fs::remove(d / "manifest.json");
  EXPECT_ERR(atp_bundle_open(d.c_str(), &o, &b), ATP_ERR_BUNDLE, "manifest.json is missing");

  copy_bundle(bundle, d);
  std::ofstream(d / "manifest.json") << "{not json";
  EXPECT_ERR(atp_bundle_open(d.c_str(), &o, &b), ATP_ERR_BUNDLE, "not valid JSON");

  copy_bundle(bundle, d);
  {  // wrong format version
    std::ifstream in(d / "manifest.json");
    std::string s((std::istreambuf_iterator<char>(in)), {});
    size_t p = s.find("\"format_version\": 2");
    CHECK(p != std::string::npos);
    if (p != std::string::npos) s.replace(p, 19, "\"format_version\": 99");
    std::ofstream(d / "manifest.json") << s;
  }
  EXPECT_ERR(atp_bundle_open(d.c_str(), &o, &b), ATP_ERR_BUNDLE, "format version 99");

  copy_bundle(bundle, d);
  {  // same size, one byte flipped: checksum mismatch
    std::fstream f(d / "decoder.onnx", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(1000);
    char c = 0;
    f.read(&c, 1);
    c = char(c ^ 0x5A);
    f.seekp(1000);
    f.write(&c, 1);
  }
  EXPECT_ERR(atp_bundle_open(d.c_str(), &o, &b), ATP_ERR_BUNDLE, "checksum mismatch for decoder.onnx");
  o.verify = 0;  // without verification ORT itself gets the corrupt graph: still a status, never a crash
  atp_status s = atp_bundle_open(d.c_str(), &o, &b);
  if (s == ATP_OK) atp_bundle_close(b);
  else CHECK(std::strlen(atp_last_error()) > 0);
  o.verify = 1;

  copy_bundle(bundle, d);
  fs::resize_file(d / "embed_tokens.npy", fs::file_size(d / "embed_tokens.npy") - 4);
  EXPECT_ERR(atp_bundle_open(d.c_str(), &o, &b), ATP_ERR_BUNDLE, "wrong size");

  copy_bundle(bundle, d);
  fs::remove(d / "vision.onnx");
  EXPECT_ERR(atp_bundle_open(d.c_str(), &o, &b), ATP_ERR_BUNDLE, "vision.onnx is missing");

  o.backend = "tpu";
  EXPECT_ERR(atp_bundle_open(bundle.c_str(), &o, &b), ATP_ERR_INVALID_ARGUMENT, "unknown backend");
  o.backend = "ort";
  fs::remove_all(d);
}

static int collect(void* user, int32_t id, const char* piece) {
  auto* v = static_cast<std::pair<std::vector<int32_t>, std::string>*>(user);
  v->first.push_back(id);
  v->second += piece;
  return 0;
}
static int stop_after_two(void* user, int32_t, const char*) { return ++*static_cast<int*>(user) >= 2; }

static void bundle_checks(const fs::path& bundle) {
  atp_open_options o = opts();
  atp_bundle* b = nullptr;
  if (atp_bundle_open(bundle.c_str(), &o, &b) != ATP_OK) {
    std::fprintf(stderr, "cannot open %s: %s\n", bundle.c_str(), atp_last_error());
    ++g_failures;
    return;
  }
  atp_bundle_info info{};
  CHECK(atp_bundle_get_info(b, &info) == ATP_OK);
  const int N = info.num_visual_tokens, W = info.image_width, H = info.image_height;
  CHECK(N > 0 && W > 0 && H > 0 && info.vocab_size > 0 && std::string(info.backend) == "ort");
  {  // ABI 2: the token layout; a struct from an older, shorter ABI gets only the fields it has
    atp_token_layout lay{};
    EXPECT_ERR(atp_bundle_get_layout(b, &lay), ATP_ERR_INVALID_ARGUMENT, "struct_size");
    lay.struct_size = sizeof(lay);
    CHECK(atp_bundle_get_layout(b, &lay) == ATP_OK);
    CHECK(lay.struct_size == sizeof(lay) && lay.images == 1 && lay.tiles == 1 && lay.tokens_per_tile * lay.tiles == N);
    CHECK(lay.placeholder_id == info.image_token_id && std::string(lay.position_scheme) == "1d");
    CHECK(std::string(lay.kept_policy) == "global_topk_ascending" && std::string(lay.saliency) == "cls_attention");
    CHECK(std::string(lay.kind) == "fixed" && lay.deepstack_levels == 0);
    atp_token_layout part{};
    part.struct_size = uint32_t(offsetof(atp_token_layout, placeholder_id));  // images, tiles, tokens_per_tile only
    part.placeholder_id = -7;
    CHECK(atp_bundle_get_layout(b, &part) == ATP_OK && part.tokens_per_tile == lay.tokens_per_tile && part.placeholder_id == -7);
  }
  atp_context* c = nullptr;
  CHECK(atp_context_create(b, &c) == ATP_OK);

  // calls out of order
  EXPECT_ERR(atp_generate(c, nullptr, nullptr, nullptr), ATP_ERR_STATE, "no image");
  const int32_t* ids = nullptr;
  size_t n = 0;
  EXPECT_ERR(atp_result_tokens(c, &ids, &n), ATP_ERR_STATE, "no result");

  // images: wrong channel count, size, stride, NULL, unreadable files
  std::vector<uint8_t> px(size_t(W + 5) * size_t(H + 3) * 4);
  for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t((i * 37) ^ (i >> 3));
  EXPECT_ERR(atp_set_image_rgb8(c, px.data(), W, H, 2, 0), ATP_ERR_INPUT, "channels");
  EXPECT_ERR(atp_set_image_rgb8(c, px.data(), W, H, 1, 0), ATP_ERR_INPUT, "channels");
  EXPECT_ERR(atp_set_image_rgb8(c, px.data(), 0, H, 3, 0), ATP_ERR_INPUT, "positive");
  EXPECT_ERR(atp_set_image_rgb8(c, px.data(), W, H, 3, W), ATP_ERR_INPUT, "stride");
  EXPECT_ERR(atp_set_image_rgb8(c, nullptr, W, H, 3, 0), ATP_ERR_INVALID_ARGUMENT, "NULL");
  EXPECT_ERR(atp_set_image_file(c, "/nonexistent.png"), ATP_ERR_INPUT, "does not exist");
  std::string manifest_path = (bundle / "manifest.json").string();
  EXPECT_ERR(atp_set_image_file(c, manifest_path.c_str()), ATP_ERR_INPUT, "not a readable image");
  std::vector<float> wrong(size_t(3) * size_t(W) * size_t(H) - 1);
  EXPECT_ERR(atp_set_pixels(c, wrong.data(), wrong.size()), ATP_ERR_INPUT, "pixels must be");

  // K out of range
  EXPECT_ERR(atp_set_keep(c, N + 1), ATP_ERR_OUT_OF_RANGE, "out of range");
  EXPECT_ERR(atp_set_keep(c, -1), ATP_ERR_OUT_OF_RANGE, "out of range");
  EXPECT_ERR(atp_set_keep_ratio(c, 0.0f), ATP_ERR_OUT_OF_RANGE, "keep_ratio");
  EXPECT_ERR(atp_set_keep_ratio(c, 1.5f), ATP_ERR_OUT_OF_RANGE, "keep_ratio");
  EXPECT_ERR(atp_set_keep_ratio(c, std::nanf("")), ATP_ERR_OUT_OF_RANGE, "keep_ratio");

  EXPECT_ERR(atp_set_scorer(c, "no-such-scorer"), ATP_ERR_UNSUPPORTED, "no vision graph for scorer");
  CHECK(atp_set_scorer(c, nullptr) == ATP_OK);

  // prompts
  EXPECT_ERR(atp_set_prompt(c, "   ", 0), ATP_ERR_INPUT, "non-empty");
  EXPECT_ERR(atp_set_prompt(c, "what color is the shape?", 1), ATP_ERR_INPUT, "exactly once");
  EXPECT_ERR(atp_set_prompt(c, nullptr, 0), ATP_ERR_INVALID_ARGUMENT, "NULL");
  int32_t no_image[3] = {1, 5, 6};
  EXPECT_ERR(atp_set_prompt_ids(c, no_image, 3), ATP_ERR_INPUT, "exactly once");
  int32_t bad_id[3] = {1, info.image_token_id, 1 << 30};
  EXPECT_ERR(atp_set_prompt_ids(c, bad_id, 3), ATP_ERR_INPUT, "outside the vocabulary");

  // a valid request, streamed; the pieces concatenate to the text
  CHECK(atp_set_image_rgb8(c, px.data(), W + 5, H + 3, 4, 0) == ATP_OK);  // RGBA, resized + cropped
  CHECK(atp_set_prompt(c, "what color is the shape?", 0) == ATP_OK);
  CHECK(atp_set_keep(c, N / 2) == ATP_OK);
  atp_sampling s;
  atp_sampling_init(&s);
  s.max_new_tokens = 6;
  s.ignore_eos = 1;
  std::pair<std::vector<int32_t>, std::string> streamed;
  CHECK(atp_generate(c, &s, collect, &streamed) == ATP_OK);
  CHECK(atp_result_tokens(c, &ids, &n) == ATP_OK);
  CHECK(n == 6 && streamed.first == std::vector<int32_t>(ids, ids + n));
  const char* text = nullptr;
  CHECK(atp_result_text(c, &text) == ATP_OK && streamed.second == text);
  const int64_t* kept = nullptr;
  size_t nk = 0;
  CHECK(atp_result_kept_index(c, &kept, &nk) == ATP_OK && int(nk) == N / 2);
  for (size_t i = 0; i + 1 < nk; ++i) CHECK(kept[i] < kept[i + 1] && kept[i] >= 0 && kept[nk - 1] < N);
  atp_timings t{};
  CHECK(atp_result_timings(c, &t) == ATP_OK && t.kept == N / 2 && t.generated_tokens == 6 && t.ttft_ms > 0);
  std::vector<int32_t> first(ids, ids + n);

  // same request again: same tokens (greedy is deterministic, KV cache reset between requests)
  CHECK(atp_generate(c, &s, nullptr, nullptr) == ATP_OK);
  CHECK(atp_result_tokens(c, &ids, &n) == ATP_OK && std::vector<int32_t>(ids, ids + n) == first);

  // callback stops early
  int calls = 0;
  CHECK(atp_generate(c, &s, stop_after_two, &calls) == ATP_OK);
  CHECK(atp_result_tokens(c, &ids, &n) == ATP_OK && n == 2 && calls == 2);

  // seeded sampling: same seed, same tokens; invalid settings refused
  s.temperature = 1.0f;
  s.top_k = 5;
  s.top_p = 0.9f;
  s.repetition_penalty = 1.3f;
  s.seed = 7;
  CHECK(atp_generate(c, &s, nullptr, nullptr) == ATP_OK);
  CHECK(atp_result_tokens(c, &ids, &n) == ATP_OK);
  std::vector<int32_t> sampled(ids, ids + n);
  CHECK(atp_generate(c, &s, nullptr, nullptr) == ATP_OK);
  CHECK(atp_result_tokens(c, &ids, &n) == ATP_OK && std::vector<int32_t>(ids, ids + n) == sampled);
  for (int32_t id : sampled) CHECK(id >= 0 && id < info.vocab_size);
  s.top_p = 0.0f;
  EXPECT_ERR(atp_generate(c, &s, nullptr, nullptr), ATP_ERR_INVALID_ARGUMENT, "top_p");
  s.top_p = 1.0f;
  s.temperature = -1.0f;
  EXPECT_ERR(atp_generate(c, &s, nullptr, nullptr), ATP_ERR_INVALID_ARGUMENT, "temperature");
  atp_sampling_init(&s);
  s.max_new_tokens = 0;
  EXPECT_ERR(atp_generate(c, &s, nullptr, nullptr), ATP_ERR_INVALID_ARGUMENT, "max_new_tokens");
  s.struct_size = 4;
  EXPECT_ERR(atp_generate(c, &s, nullptr, nullptr), ATP_ERR_INVALID_ARGUMENT, "struct_size");
  atp_context_destroy(c);

  // prompt longer than the profile
  atp_bundle* small = nullptr;
  o.max_sequence = 8;
  CHECK(atp_bundle_open(bundle.c_str(), &o, &small) == ATP_OK);
  CHECK(atp_context_create(small, &c) == ATP_OK);
  CHECK(atp_set_image_rgb8(c, px.data(), W, H, 3, 0) == ATP_OK);
  CHECK(atp_set_prompt(c, "what color is the shape?", 0) == ATP_OK);
  EXPECT_ERR(atp_generate(c, nullptr, nullptr, nullptr), ATP_ERR_OUT_OF_RANGE, "longer than the profile");
  atp_context_destroy(c);
  atp_bundle_close(small);

  // tokenizer: encode/decode through the bundle's view round-trips ordinary text
  const atp_tokenizer* tok = nullptr;
  CHECK(atp_bundle_tokenizer(b, &tok) == ATP_OK);
  const char* sample = "what color is the shape?";
  size_t cnt = 0;
  CHECK(atp_tokenizer_encode(tok, sample, 0, nullptr, 0, &cnt) == ATP_OK && cnt > 0);
  std::vector<int32_t> enc(cnt);
  CHECK(atp_tokenizer_encode(tok, sample, 0, enc.data(), enc.size(), &cnt) == ATP_OK);
  char buf[256];
  size_t len = 0;
  CHECK(atp_tokenizer_decode(tok, enc.data(), enc.size(), 1, buf, sizeof buf, &len) == ATP_OK);
  CHECK(len > 0 && len < sizeof buf);

  // the C++ wrapper over the same bundle
  try {
    atp::OpenOptions wo;
    wo.threads = 1;
    atp::Bundle wb(bundle.string(), wo);
    atp::Context ctx(wb);
    ctx.set_image_rgb8(px.data(), W + 5, H + 3, 4);
    ctx.set_prompt("what color is the shape?");
    ctx.set_keep(N / 2);
    atp::Sampling ws;
    ws.max_new_tokens = 6;
    ws.ignore_eos = true;
    std::string pieces;
    auto out = ctx.generate(ws, [&](int32_t, const char* p) { pieces += p; return true; });
    CHECK(out == first);
    CHECK(pieces == ctx.text());
    bool threw = false;
    try {
      ctx.set_keep(N + 1);
    } catch (const atp::Error& e) {
      threw = e.status() == ATP_ERR_OUT_OF_RANGE;
    }
    CHECK(threw);
    threw = false;
    try {  // an exception from the callback stops generation and reaches the caller
      ctx.generate(ws, [](int32_t, const char*) -> bool { throw std::runtime_error("from callback"); });
    } catch (const std::runtime_error& e) {
      threw = std::string(e.what()) == "from callback";
    }
    CHECK(threw);
    atp::Tokenizer wt = wb.tokenizer();
    CHECK(wt.encode(sample, false) == enc);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "wrapper threw: %s\n", e.what());
    ++g_failures;
  }
  atp_bundle_close(b);
}

int main(int argc, char** argv) {
  bundle_free_checks();
  if (argc < 2 || !*argv[1]) {
    std::fprintf(stderr, "bundle-free checks: %d failures\n", g_failures);
    if (g_failures) return 1;
    return argc < 2 ? 0 : 77;  // an empty bundle argument: skip the rest
  }
  fs::path bundle(argv[1]);
  if (!fs::is_directory(bundle)) {
    std::fprintf(stderr, "SKIP: bundle %s not built\n", argv[1]);
    return 77;
  }
  fs::path tmp = fs::temp_directory_path() / ("atp_test_api_" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  corrupt_bundle_checks(bundle, tmp);
  bundle_checks(bundle);
  fs::remove_all(tmp);
  std::fprintf(stderr, "%s: %d failures\n", argv[1], g_failures);
  return g_failures ? 1 : 0;
}
