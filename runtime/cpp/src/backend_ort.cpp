// ONNX Runtime backend. The library is dlopen'ed (the onnxruntime wheel's capi/libonnxruntime.so.1.*, or
// the system one) and the C++ API is initialised by hand (ORT_API_MANUAL_INIT), so one binary works with
// any ORT release whose C API version is >= the headers' (ORT exports versioned symbols, a link-time
// dependency would pin the exact release).
#include <dlfcn.h>

#include <cstdlib>
#include <algorithm>
#include <map>
#include <mutex>
#include <thread>

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include "positions.hpp"
#include "backend.hpp"
#include "common.hpp"

namespace atp_impl {
namespace {

std::mutex g_ort_mutex;
Ort::Env* g_env = nullptr;  // process-wide, created once, never destroyed (ORT forbids re-creating it)

void init_ort(const std::string& requested) {
  std::lock_guard<std::mutex> lock(g_ort_mutex);
  if (g_env) return;
  std::vector<std::string> tries;
  if (!requested.empty()) tries.push_back(requested);
  else {
    if (const char* env = std::getenv("ATP_ORT_LIBRARY")) tries.push_back(env);
    tries.push_back("libonnxruntime.so.1");
    tries.push_back("libonnxruntime.so");
  }
  void* handle = nullptr;
  std::string errors;
  for (const auto& path : tries) {
    handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle) break;
    const char* e = dlerror();
    errors += "\n  " + path + ": " + (e ? e : "not found");
  }
  if (!handle)
    fail(ATP_ERR_BACKEND, "cannot load ONNX Runtime; set atp_open_options.ort_library or $ATP_ORT_LIBRARY to libonnxruntime.so.1.* "
                          "(e.g. the onnxruntime wheel's onnxruntime/capi/libonnxruntime.so.1.<ver>). Tried:" + errors);
  using GetBase = const OrtApiBase* (*)();
  auto get_base = reinterpret_cast<GetBase>(dlsym(handle, "OrtGetApiBase"));
  if (!get_base) fail(ATP_ERR_BACKEND, "the ONNX Runtime library has no OrtGetApiBase symbol");
  const OrtApi* api = get_base()->GetApi(ORT_API_VERSION);
  if (!api)
    fail(ATP_ERR_BACKEND, std::string("ONNX Runtime ") + get_base()->GetVersionString() + " does not provide C API version " +
                              std::to_string(ORT_API_VERSION) + " (the headers this runtime was built with); use ORT >= 1." +
                              std::to_string(ORT_API_VERSION));
  Ort::InitApi(api);
  g_env = new Ort::Env(ORT_LOGGING_LEVEL_ERROR, "atp");
}

class OrtDecoder;

class OrtBackend : public Backend {
 public:
  OrtBackend(const Manifest& m, const OpenOptions& o) : m_(m) {
    // Same default as the Python runtime (os.cpu_count()): identical thread counts keep results identical.
    int threads = o.threads > 0 ? o.threads : int(std::max(1u, std::thread::hardware_concurrency()));
    opts_.SetIntraOpNumThreads(threads);
    opts_.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    opts_.SetLogSeverityLevel(3);
    for (auto& [name, g] : m_.graphs)
      if (!g.custom_ops_library.empty()) {
        register_custom_ops(name, g.custom_ops_library);
        break;  // one library serves every graph
      }
    session("vision");
    session("decoder");
    auto& dec = m_.graphs.at("decoder");
    dec_inputs_ = dec.inputs;
    Ort::AllocatorWithDefaultOptions alloc;
    Ort::Session& ds = *sessions_.at("decoder");
    for (size_t i = 0; i < ds.GetOutputCount(); ++i) dec_outputs_.push_back(ds.GetOutputNameAllocated(i, alloc).get());
    for (size_t i = 0; i < ds.GetInputCount(); ++i) {
      std::string n = ds.GetInputNameAllocated(i, alloc).get();
      if (std::find(dec_inputs_.begin(), dec_inputs_.end(), n) == dec_inputs_.end())
        fail(ATP_ERR_BUNDLE, m_.graphs.at("decoder").file + " has input " + n + " the manifest does not list; re-export the bundle");
    }
  }

  // A bundle specialized for atp's ORT CPU ops (python -m atp.plugins.ort_cpu specialize) needs their library:
  // $ATP_ORT_CPU_KERNELS names it (python -m atp.plugins.ort_cpu build; `info` prints the path).
  void register_custom_ops(const std::string& graph, const std::string& library) {
    const char* env = std::getenv("ATP_ORT_CPU_KERNELS");
    const std::string path = env ? env : "";
    if (path.empty() || path == "auto" || path == "off")
      fail(ATP_ERR_BUNDLE, "the bundle's " + graph + " graph runs atp.cpu ops from " + library +
                               "; set $ATP_ORT_CPU_KERNELS to that library's path (build it with: python -m atp.plugins.ort_cpu "
                               "build; `python -m atp.plugins.ort_cpu info` prints the path)");
    try {
      opts_.RegisterCustomOpsLibrary(path.c_str());
    } catch (const Ort::Exception& e) {
      fail(ATP_ERR_BACKEND, "cannot register the atp.cpu ops library " + path + ": " + e.what());
    }
  }

  Ort::Session& session(const std::string& graph) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(graph);
    if (it != sessions_.end()) return *it->second;
    auto g = m_.graphs.find(graph);
    if (g == m_.graphs.end()) fail(ATP_ERR_BUNDLE, "bundle has no graph '" + graph + "'");
    std::string path = m_.path(g->second.file);
    try {
      auto s = std::make_unique<Ort::Session>(*g_env, path.c_str(), opts_);
      return *(sessions_[graph] = std::move(s));
    } catch (const Ort::Exception& e) {
      fail(ATP_ERR_BUNDLE, "ONNX Runtime cannot load " + path + ": " + e.what());
    }
  }

  VisionOutput run_vision(const std::string& graph, const float* pixels, int64_t views, int64_t keep, const float* text,
                          const AnyresTokens* layout, const DynamicLayout* dynamic) override {
    Ort::Session& s = session(graph);
    const GraphInfo& g = m_.graphs.at(graph);
    auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    int64_t pshape[4] = {views, 3, m_.pre.out_height, m_.pre.out_width};
    size_t pcount = size_t(views) * size_t(3) * size_t(m_.pre.out_height) * size_t(m_.pre.out_width);
    size_t prank = 4;
    if (dynamic) {  // patches [P, C*T*p*p]
      pshape[1] = m_.dynamic.patch_dim();
      pcount = size_t(views) * size_t(pshape[1]);
      prank = 2;
    }
    std::vector<Ort::Value> feeds;
    std::vector<const char*> names;
    feeds.push_back(Ort::Value::CreateTensor<float>(mem, const_cast<float*>(pixels), pcount, pshape, prank));
    names.push_back("pixel_values");
    int64_t posshape[2] = {dynamic ? dynamic->patches() : 0, 2}, invshape[1] = {dynamic ? dynamic->patches() : 0};
    int64_t winshape[2] = {dynamic ? dynamic->windows : 0, dynamic ? dynamic->length : 0};
    if (g.has_input("patch_pos")) {  // dynamic resolution: rotary positions and attention windows (dynamic.hpp)
      if (!dynamic || dynamic->patches() != views) fail(ATP_ERR_INTERNAL, "vision graph takes patch_pos but no layout was computed");
      auto add = [&](const char* name, const std::vector<int64_t>& v, const int64_t* shape, size_t rank) {
        feeds.push_back(Ort::Value::CreateTensor<int64_t>(mem, const_cast<int64_t*>(v.data()), v.size(), shape, rank));
        names.push_back(name);
      };
      add("patch_pos", dynamic->patch_pos, posshape, 2);
      if (g.has_input("window_index")) {
        add("window_index", dynamic->window_index, winshape, 2);
        add("window_inverse", dynamic->window_inverse, invshape, 1);
      }
    }
    int64_t tapshape[2] = {dynamic ? dynamic->patches() : 0, 4};
    if (g.has_input("pos_index")) {  // Qwen3-VL: the learned position table's taps
      if (!dynamic || dynamic->pos_index.size() != size_t(4 * views)) fail(ATP_ERR_INTERNAL, "vision graph takes pos_index but no taps were computed");
      feeds.push_back(Ort::Value::CreateTensor<int64_t>(mem, const_cast<int64_t*>(dynamic->pos_index.data()), dynamic->pos_index.size(), tapshape, 2));
      names.push_back("pos_index");
      feeds.push_back(Ort::Value::CreateTensor<float>(mem, const_cast<float*>(dynamic->pos_weight.data()), dynamic->pos_weight.size(), tapshape, 2));
      names.push_back("pos_weight");
    }
    int64_t ishape[2] = {layout ? int64_t(layout->size()) : 0, layout ? int64_t(layout->taps) : 0};
    const size_t irank = layout && layout->taps > 1 ? 2 : 1;
    if (g.has_input("token_index")) {
      if (!layout) fail(ATP_ERR_INTERNAL, "vision graph takes token_index but none was computed");
      feeds.push_back(Ort::Value::CreateTensor<int64_t>(mem, const_cast<int64_t*>(layout->index.data()), layout->index.size(), ishape, irank));
      names.push_back("token_index");
    }
    if (g.has_input("token_weight")) {
      if (!layout || layout->weight.size() != layout->index.size())
        fail(ATP_ERR_INTERNAL, "vision graph takes token_weight but no taps were computed");
      feeds.push_back(Ort::Value::CreateTensor<float>(mem, const_cast<float*>(layout->weight.data()), layout->weight.size(), ishape, 2));
      names.push_back("token_weight");
    }
    feeds.push_back(Ort::Value::CreateTensor<int64_t>(mem, &keep, 1, nullptr, 0));
    names.push_back("keep");
    int64_t tshape[2] = {1, m_.hidden_size};
    if (g.has_input("text_embeds")) {
      feeds.push_back(Ort::Value::CreateTensor<float>(mem, const_cast<float*>(text), size_t(m_.hidden_size), tshape, 2));
      names.push_back("text_embeds");
    }
    const bool deepstack = std::find(g.outputs.begin(), g.outputs.end(), "deepstack_embeds") != g.outputs.end();
    const char* outs[3] = {"image_embeds", "kept_index", "deepstack_embeds"};
    std::vector<Ort::Value> r = s.Run(Ort::RunOptions{nullptr}, names.data(), feeds.data(), feeds.size(), outs, deepstack ? 3 : 2);
    VisionOutput v;
    auto es = r[0].GetTensorTypeAndShapeInfo().GetShape();
    if (es.size() != 3 || es[0] != 1) fail(ATP_ERR_BACKEND, "vision graph returned image_embeds of unexpected rank");
    v.k = es[1];
    v.dim = es[2];
    const float* e = r[0].GetTensorData<float>();
    v.embeds.assign(e, e + v.k * v.dim);
    const int64_t* ki = r[1].GetTensorData<int64_t>();
    auto ks = r[1].GetTensorTypeAndShapeInfo().GetShape();  // fewer than v.k when contextual (merged) tokens follow
    if (ks.size() != 2 || ks[0] != 1 || ks[1] > v.k) fail(ATP_ERR_BACKEND, "vision graph returned kept_index of unexpected shape");
    v.kept.assign(ki, ki + ks[1]);
    if (deepstack) {  // [L, 1, K, D]
      auto ds = r[2].GetTensorTypeAndShapeInfo().GetShape();
      if (ds.size() != 4 || ds[0] != m_.deepstack_levels || ds[1] != 1 || ds[2] != v.k || ds[3] != v.dim)
        fail(ATP_ERR_BACKEND, "vision graph returned deepstack_embeds of unexpected shape");
      const float* d = r[2].GetTensorData<float>();
      v.deepstack.assign(d, d + ds[0] * v.k * v.dim);
    }
    return v;
  }

  std::unique_ptr<DecoderState> new_decoder() override;

  const Manifest& m_;
  Ort::SessionOptions opts_;  // needs the API pointer: make_ort_backend calls init_ort first
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Ort::Session>> sessions_;
  std::vector<std::string> dec_inputs_, dec_outputs_;
};

class OrtDecoder : public DecoderState {
 public:
  explicit OrtDecoder(OrtBackend& b)
      : b_(b), s_(b.session("decoder")), prefill_(b.m_.graphs.count("decoder_prefill") ? &b.session("decoder_prefill") : nullptr) {
    for (const auto& n : b_.dec_outputs_) out_names_.push_back(n.c_str());
    reset();
  }

  void reset() override {
    past_.clear();
    past_len_ = 0;
    Ort::AllocatorWithDefaultOptions alloc;
    int64_t shape[4] = {1, b_.m_.num_kv_heads, 0, b_.m_.head_dim};
    for (int i = 0; i < b_.m_.num_layers; ++i)
      for (const char* kv : {"key", "value"})
        past_["past_key_values." + std::to_string(i) + "." + kv] = Ort::Value::CreateTensor<float>(alloc, shape, 4);
  }

  void step(const float* embeds, int64_t n, const std::vector<int64_t>& positions, std::vector<float>& logits,
            const float* deepstack) override {
    const Manifest& m = b_.m_;
    auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    int64_t total = past_len_ + n;
    mask_.assign(size_t(total), 1);
    pos_ = positions;
    const bool mrope = m.position_scheme == "mrope";
    if (pos_.size() != size_t((mrope ? 3 : 1) * n)) fail(ATP_ERR_INTERNAL, "decoder step given position_ids of the wrong size");
    int64_t eshape[3] = {1, n, m.hidden_size}, mshape[2] = {1, total}, pshape[3] = {1, n, 0};
    if (mrope) {
      pshape[0] = 3;
      pshape[1] = 1;
      pshape[2] = n;
    }
    std::vector<Ort::Value> feeds;
    std::vector<const char*> names;
    for (const std::string& name : b_.dec_inputs_) {
      names.push_back(name.c_str());
      if (name == "inputs_embeds")
        feeds.push_back(Ort::Value::CreateTensor<float>(mem, const_cast<float*>(embeds), size_t(n * m.hidden_size), eshape, 3));
      else if (name == "attention_mask")
        feeds.push_back(Ort::Value::CreateTensor<int64_t>(mem, mask_.data(), mask_.size(), mshape, 2));
      else if (name == "position_ids")
        feeds.push_back(Ort::Value::CreateTensor<int64_t>(mem, pos_.data(), pos_.size(), pshape, mrope ? 3 : 2));
      else if (name == "deepstack_embeds") {  // [L, 1, n, D]: the given levels, or zeros (no visual token in this step)
        const size_t count = size_t(m.deepstack_levels) * size_t(n) * size_t(m.hidden_size);
        if (deepstack) ds_.assign(deepstack, deepstack + count);
        else ds_.assign(count, 0.0f);
        int64_t dshape[4] = {m.deepstack_levels, 1, n, m.hidden_size};
        feeds.push_back(Ort::Value::CreateTensor<float>(mem, ds_.data(), ds_.size(), dshape, 4));
      }
      else {
        auto it = past_.find(name);
        if (it == past_.end()) fail(ATP_ERR_BUNDLE, "decoder input " + name + " is not one the runtime knows how to feed");
        feeds.push_back(std::move(it->second));
      }
    }
    // the prompt (no past, several tokens) runs on the int8 prefill graph where the bundle has one (same I/O names)
    Ort::Session& run = (past_len_ == 0 && n > 1 && prefill_) ? *prefill_ : s_;
    std::vector<Ort::Value> r = run.Run(Ort::RunOptions{nullptr}, names.data(), feeds.data(), feeds.size(), out_names_.data(),
                                        out_names_.size());
    for (size_t i = 0; i < r.size(); ++i) {
      const std::string& on = b_.dec_outputs_[i];
      if (on == "logits") {
        auto shape = r[i].GetTensorTypeAndShapeInfo().GetShape();
        int64_t v = shape.back(), rows = 1;
        for (size_t d = 0; d + 1 < shape.size(); ++d) rows *= shape[d];
        const float* p = r[i].GetTensorData<float>() + (rows - 1) * v;
        logits.assign(p, p + v);
      } else if (on.rfind("present.", 0) == 0) {
        past_["past_key_values." + on.substr(8)] = std::move(r[i]);
      }
    }
    past_len_ = total;
  }

 private:
  OrtBackend& b_;
  Ort::Session& s_;
  Ort::Session* prefill_;
  std::vector<const char*> out_names_;
  std::map<std::string, Ort::Value> past_;
  std::vector<int64_t> mask_, pos_;
  std::vector<float> ds_;
  int64_t past_len_ = 0;
};

std::unique_ptr<DecoderState> OrtBackend::new_decoder() { return std::make_unique<OrtDecoder>(*this); }

}  // namespace

std::unique_ptr<Backend> make_ort_backend(const Manifest& m, const OpenOptions& o) {
  init_ort(o.ort_library);  // before any Ort:: object exists (their constructors and destructors use the API)
  try {
    return std::make_unique<OrtBackend>(m, o);
  } catch (const Ort::Exception& e) {
    fail(ATP_ERR_BACKEND, std::string("ONNX Runtime: ") + e.what());
  }
}

}  // namespace atp_impl
