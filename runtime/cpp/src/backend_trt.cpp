// TensorRT 10 backend: engines from the bundle's engines/<target>/ (manifest "engines.<target>.graphs"),
// the plugin library (TopKGate, MixedGemm) loaded into the runtime's plugin registry before deserializing,
// the KV cache in device memory in the decoder's layout [1, kv_heads, sequence, head_dim] (two buffers per
// tensor, swapped each step: present of step t is past of step t+1, no host round trip).
//
// Engine I/O names are the ONNX graphs' (pixel_values, keep, text_embeds -> image_embeds, kept_index;
// inputs_embeds, attention_mask, position_ids, past_key_values.{i}.{key,value} -> logits, present.{i}.*).
// Decoder profiles as written by atp-export engine: 0 = prefill (past 0), 1 = decode (sequence 1).
// Outputs whose shape depends on data (K from the TopKGate size tensor) go through an IOutputAllocator.
#include <algorithm>
#include <cuda_runtime_api.h>

#include <NvInferRuntime.h>

#include <cstring>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "positions.hpp"
#include "backend.hpp"
#include "common.hpp"

namespace atp_impl {
namespace {

using json = nlohmann::json;

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(ATP_ERR_BACKEND, std::string("CUDA ") + what + ": " + cudaGetErrorString(e));
}

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity s, const char* msg) noexcept override {
    if (s <= Severity::kERROR) {
      std::lock_guard<std::mutex> lock(mu);
      last = msg;
    }
  }
  std::mutex mu;
  std::string last;
};

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  void reserve(size_t n) {
    if (n <= bytes) return;
    if (ptr) cudaFree(ptr);
    ptr = nullptr;
    cuda_check(cudaMalloc(&ptr, n ? n : 1), "cudaMalloc");
    bytes = n;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

// Output buffers whose size is known only during enqueueV3 (data-dependent shapes).
class OutputAllocator : public nvinfer1::IOutputAllocator {
 public:
  void* reallocateOutputAsync(const char*, void*, uint64_t size, uint64_t, cudaStream_t) noexcept override {
    try {
      buf.reserve(size_t(size));
      return buf.ptr;
    } catch (...) {
      return nullptr;
    }
  }
  void notifyShape(const char*, const nvinfer1::Dims& d) noexcept override { dims = d; }
  DeviceBuffer buf;
  nvinfer1::Dims dims{};
};

int64_t volume(const nvinfer1::Dims& d) {
  int64_t v = 1;
  for (int i = 0; i < d.nbDims; ++i) v *= d.d[i];
  return v;
}

size_t dtype_size(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kHALF: case nvinfer1::DataType::kBF16: return 2;
    case nvinfer1::DataType::kINT64: return 8;
    default: return 1;
  }
}

class TrtBackend;

class TrtDecoder : public DecoderState {
 public:
  explicit TrtDecoder(TrtBackend& b);
  ~TrtDecoder() override {
    if (stream_) cudaStreamDestroy(stream_);
  }
  void reset() override { past_ = 0; }
  void step(const float* embeds, int64_t n, const std::vector<int64_t>& positions, std::vector<float>& logits,
            const float* deepstack) override;

 private:
  TrtBackend& b_;
  std::unique_ptr<nvinfer1::IExecutionContext> prefill_, decode_;
  cudaStream_t stream_ = nullptr;
  std::vector<DeviceBuffer> kv_[2];  // ping-pong, one buffer per past tensor
  int cur_ = 0;
  DeviceBuffer embeds_, mask_, pos_, logits_;
  int64_t past_ = 0;
};

class TrtBackend : public Backend {
 public:
  TrtBackend(const Manifest& m, const OpenOptions& o) : m_(m) {
    json man = json::parse(m.raw_json);
    if (!man.contains("engines") || !man["engines"].is_object() || man["engines"].empty())
      fail(ATP_ERR_BUNDLE, "bundle " + m.dir + " has no TensorRT engines; build them with: atp-export engine " + m.dir + " --target <name>");
    std::string target = o.trt_target;
    if (target.empty()) target = man["engines"].begin().key();
    if (!man["engines"].contains(target)) {
      std::string have;
      for (auto& [k, v] : man["engines"].items()) have += (have.empty() ? "" : ", ") + k;
      fail(ATP_ERR_BUNDLE, "bundle has no engines for target '" + target + "' (it has: " + have + ")");
    }
    const json& entry = man["engines"][target];
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) fail(ATP_ERR_BACKEND, "TensorRT: cannot create a runtime (" + logger_.last + ")");
    if (!o.trt_plugin_library.empty()) {
      if (!runtime_->getPluginRegistry().loadLibrary(o.trt_plugin_library.c_str()))
        fail(ATP_ERR_BACKEND, "TensorRT cannot load the plugin library " + o.trt_plugin_library + " (" + logger_.last + ")");
    } else if (entry.contains("plugins") && !entry["plugins"].is_null()) {
      fail(ATP_ERR_INVALID_ARGUMENT, "these engines use plugins (" + entry["plugins"].value("library", std::string("?")) +
                                         "): pass atp_open_options.trt_plugin_library");
    }
    for (auto& [key, g] : entry.at("graphs").items()) {
      std::string data = read_file(m.path(g.at("file").get<std::string>()));
      std::unique_ptr<nvinfer1::ICudaEngine> e(runtime_->deserializeCudaEngine(data.data(), data.size()));
      if (!e) fail(ATP_ERR_BACKEND, "TensorRT cannot deserialize " + g["file"].get<std::string>() + " (" + logger_.last +
                                        "): engines are tied to the TensorRT version and GPU they were built for");
      engines_[key] = std::move(e);
      if (key == "decoder")
        for (const json& p : g.value("profiles", json::array())) {
          auto shapes = p.value("shapes", json::object());
          if (p.value("name", "") == "prefill" && shapes.contains("inputs_embeds"))
            max_sequence_ = shapes["inputs_embeds"]["max"][1].get<int>();
        }
    }
    if (!engines_.count("vision") || !engines_.count("decoder")) fail(ATP_ERR_BUNDLE, "engines for 'vision' and 'decoder' are required");
  }

  VisionOutput run_vision(const std::string& graph, const float* pixels, int64_t views, int64_t keep, const float* text,
                          const AnyresTokens* layout, const DynamicLayout* dynamic) override {
    if (views != 1 || layout || dynamic)
      fail(ATP_ERR_UNSUPPORTED, "the TensorRT backend runs one-view bundles only so far (anyres, tiled and dynamic "
                                "resolution: use the ort backend)");
    auto it = engines_.find(graph);
    if (it == engines_.end()) fail(ATP_ERR_UNSUPPORTED, "no TensorRT engine for vision graph '" + graph + "'");
    std::unique_ptr<nvinfer1::IExecutionContext> ctx(it->second->createExecutionContext());
    if (!ctx) fail(ATP_ERR_BACKEND, "TensorRT: cannot create an execution context (" + logger_.last + ")");
    cudaStream_t stream;
    cuda_check(cudaStreamCreate(&stream), "cudaStreamCreate");
    struct StreamGuard {
      cudaStream_t s;
      ~StreamGuard() { cudaStreamDestroy(s); }
    } guard{stream};
    const int64_t H = m_.pre.out_height, W = m_.pre.out_width, D = m_.hidden_size;
    DeviceBuffer px, txt, keep_dev;
    px.reserve(size_t(3 * H * W) * 4);
    cuda_check(cudaMemcpyAsync(px.ptr, pixels, size_t(3 * H * W) * 4, cudaMemcpyHostToDevice, stream), "copy pixels");
    ctx->setInputShape("pixel_values", nvinfer1::Dims4{1, 3, H, W});
    ctx->setTensorAddress("pixel_values", px.ptr);
    int64_t keep_host = keep;
    if (it->second->isShapeInferenceIO("keep")) {
      ctx->setInputTensorAddress("keep", &keep_host);  // shape tensor: host memory
    } else {
      keep_dev.reserve(8);
      cuda_check(cudaMemcpyAsync(keep_dev.ptr, &keep_host, 8, cudaMemcpyHostToDevice, stream), "copy keep");
      ctx->setInputShape("keep", nvinfer1::Dims{0, {}});
      ctx->setTensorAddress("keep", keep_dev.ptr);
    }
    if (text) {
      txt.reserve(size_t(D) * 4);
      cuda_check(cudaMemcpyAsync(txt.ptr, text, size_t(D) * 4, cudaMemcpyHostToDevice, stream), "copy text_embeds");
      ctx->setInputShape("text_embeds", nvinfer1::Dims2{1, D});
      ctx->setTensorAddress("text_embeds", txt.ptr);
    }
    OutputAllocator emb, idx, count;
    ctx->setOutputAllocator("image_embeds", &emb);
    ctx->setOutputAllocator("kept_index", &idx);
    const auto& outs = m_.graphs.at(graph).outputs;
    if (std::find(outs.begin(), outs.end(), "kept_count") != outs.end())  // --keep auto: K per image (read from the shapes)
      ctx->setOutputAllocator("kept_count", &count);
    if (!ctx->enqueueV3(stream)) fail(ATP_ERR_BACKEND, "TensorRT vision enqueue failed (" + logger_.last + ")");
    cuda_check(cudaStreamSynchronize(stream), "vision");
    VisionOutput v;
    if (emb.dims.nbDims != 3 || idx.dims.nbDims != 2) fail(ATP_ERR_BACKEND, "vision engine returned outputs of unexpected rank");
    v.k = emb.dims.d[1];
    v.dim = emb.dims.d[2];
    if (it->second->getTensorDataType("image_embeds") != nvinfer1::DataType::kFLOAT ||
        it->second->getTensorDataType("kept_index") != nvinfer1::DataType::kINT64)
      fail(ATP_ERR_UNSUPPORTED, "vision engine I/O must be image_embeds float32 and kept_index int64");
    v.embeds.resize(size_t(v.k * v.dim));
    v.kept.resize(size_t(idx.dims.d[1]));  // fewer than v.k rows when contextual (merged) tokens follow
    cuda_check(cudaMemcpy(v.embeds.data(), emb.buf.ptr, v.embeds.size() * 4, cudaMemcpyDeviceToHost), "copy image_embeds");
    cuda_check(cudaMemcpy(v.kept.data(), idx.buf.ptr, v.kept.size() * 8, cudaMemcpyDeviceToHost), "copy kept_index");
    return v;
  }

  std::unique_ptr<DecoderState> new_decoder() override { return std::make_unique<TrtDecoder>(*this); }
  int max_sequence() const override { return max_sequence_; }

  const Manifest& m_;
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::map<std::string, std::unique_ptr<nvinfer1::ICudaEngine>> engines_;
  int max_sequence_ = 0;
};

TrtDecoder::TrtDecoder(TrtBackend& b) : b_(b) {
  nvinfer1::ICudaEngine& e = *b.engines_.at("decoder");
  prefill_.reset(e.createExecutionContext());
  decode_.reset(e.createExecutionContext());
  if (!prefill_ || !decode_) fail(ATP_ERR_BACKEND, "TensorRT: cannot create decoder execution contexts (" + b.logger_.last + ")");
  cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
  if (e.getNbOptimizationProfiles() >= 2) {
    if (!decode_->setOptimizationProfileAsync(1, stream_)) fail(ATP_ERR_BACKEND, "TensorRT: cannot select the decode profile");
  }
  for (auto& side : kv_) side.resize(size_t(2 * b.m_.num_layers));
}

void TrtDecoder::step(const float* embeds, int64_t n, const std::vector<int64_t>& positions, std::vector<float>& logits,
                      const float* deepstack) {
  if (deepstack || b_.m_.deepstack_levels) fail(ATP_ERR_UNSUPPORTED, "the TensorRT backend runs DeepStack decoders not yet (use the ort backend)");
  const Manifest& m = b_.m_;
  nvinfer1::ICudaEngine& e = *b_.engines_.at("decoder");
  nvinfer1::IExecutionContext* ctx = (past_ == 0 || e.getNbOptimizationProfiles() < 2) ? prefill_.get() : decode_.get();
  const int64_t total = past_ + n, D = m.hidden_size, KV = m.num_kv_heads, HD = m.head_dim;
  embeds_.reserve(size_t(n * D) * 4);
  mask_.reserve(size_t(total) * 8);
  pos_.reserve(size_t(n) * 8);
  if (m.position_scheme != "1d") fail(ATP_ERR_UNSUPPORTED, "the TensorRT backend runs 1-D positions only so far (mrope: use the ort backend)");
  std::vector<int64_t> mask(static_cast<size_t>(total), 1);
  const std::vector<int64_t>& pos = positions;
  cuda_check(cudaMemcpyAsync(embeds_.ptr, embeds, size_t(n * D) * 4, cudaMemcpyHostToDevice, stream_), "copy embeds");
  cuda_check(cudaMemcpyAsync(mask_.ptr, mask.data(), mask.size() * 8, cudaMemcpyHostToDevice, stream_), "copy mask");
  cuda_check(cudaMemcpyAsync(pos_.ptr, pos.data(), pos.size() * 8, cudaMemcpyHostToDevice, stream_), "copy positions");
  ctx->setInputShape("inputs_embeds", nvinfer1::Dims3{1, n, D});
  ctx->setTensorAddress("inputs_embeds", embeds_.ptr);
  ctx->setInputShape("attention_mask", nvinfer1::Dims2{1, total});
  ctx->setTensorAddress("attention_mask", mask_.ptr);
  ctx->setInputShape("position_ids", nvinfer1::Dims2{1, n});
  ctx->setTensorAddress("position_ids", pos_.ptr);
  const size_t kv_bytes = size_t(KV * total * HD) * 4;
  int nxt = 1 - cur_;
  for (int i = 0; i < m.num_layers; ++i) {
    for (int j = 0; j < 2; ++j) {
      std::string suffix = std::to_string(i) + (j ? ".value" : ".key");
      DeviceBuffer& past = kv_[cur_][size_t(2 * i + j)];
      DeviceBuffer& present = kv_[nxt][size_t(2 * i + j)];
      past.reserve(std::max<size_t>(size_t(KV * past_ * HD) * 4, 4));
      present.reserve(kv_bytes);
      std::string pin = "past_key_values." + suffix, pout = "present." + suffix;
      ctx->setInputShape(pin.c_str(), nvinfer1::Dims4{1, KV, past_, HD});
      ctx->setTensorAddress(pin.c_str(), past.ptr);
      ctx->setTensorAddress(pout.c_str(), present.ptr);
    }
  }
  nvinfer1::Dims ld = ctx->getTensorShape("logits");
  if (ld.nbDims < 2 || volume(ld) <= 0) fail(ATP_ERR_BACKEND, "TensorRT: cannot infer the logits shape for this step");
  const int64_t V = ld.d[ld.nbDims - 1];
  logits_.reserve(size_t(volume(ld)) * dtype_size(e.getTensorDataType("logits")));
  ctx->setTensorAddress("logits", logits_.ptr);
  if (e.getTensorDataType("logits") != nvinfer1::DataType::kFLOAT)
    fail(ATP_ERR_UNSUPPORTED, "decoder engine logits must be float32");
  if (!ctx->enqueueV3(stream_)) fail(ATP_ERR_BACKEND, "TensorRT decoder enqueue failed (" + b_.logger_.last + ")");
  logits.resize(size_t(V));
  const char* last_row = static_cast<const char*>(logits_.ptr) + size_t(volume(ld) - V) * 4;
  cuda_check(cudaMemcpyAsync(logits.data(), last_row, size_t(V) * 4, cudaMemcpyDeviceToHost, stream_), "copy logits");
  cuda_check(cudaStreamSynchronize(stream_), "decoder step");
  cur_ = nxt;
  past_ = total;
}

}  // namespace

std::unique_ptr<Backend> make_trt_backend(const Manifest& m, const OpenOptions& o) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
    fail(ATP_ERR_BACKEND, "the TensorRT backend needs a CUDA GPU, and none is visible (use backend \"ort\" here)");
  return std::make_unique<TrtBackend>(m, o);
}

}  // namespace atp_impl
