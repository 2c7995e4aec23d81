// libatp_ort_cpu: ONNX Runtime CPU custom ops `atp.cpu::MatMulInt4` / `MatMulInt8`, int4 / int8 x int8 GEMMs that read
// com.microsoft.MatMulNBits' own initializers (bits 4 or 8, symmetric: no zero points), so a graph rewrite swaps
// the op type and keeps every tensor (atp.plugins.ort_cpu.swap_matmulnbits).
//
// Why: at decode (M = 1) MatMulNBits (accuracy_level 4) streams its packed weights at ~6.6 GB/s per thread on
// the Xeon we measure on, a third of fp32 MatMul's rate, which kept int4 decode near 3x fp32. This op runs one
// decode step's GEMVs 1.6-1.8x faster (bench/decode_gemv.py --atpcpu); the prototype is bench/int4_gemv_cpu/.
//
// Numerics = MatMulNBits accuracy_level 4: each row of A is quantized to int8 per block of `block_size`
// (symmetric, scale = max|a| / 127, round half to even), y = sum_b sw[n,b] * sa[m,b] * dot(q_w, q_a), the block
// dots exact in int32. Weights: B uint8 [N, nblk, block_size / 2] (byte j of a block: element 2j in the low
// nibble, 2j + 1 in the high one, unsigned code = q + 8; bits 8: [N, nblk, block_size], code = q + 128), scales
// fp32 [N * nblk]; K is padded to
// nblk * block_size with zeros. A's codes are laid out to match B's packing (see Problem); reference.py is the
// numpy reference. Optional `swiglu = 1`: rows are [gate; up] and the output is silu(gate) * up.
//
// Paths: AVX-512 VNNI (the fast one), AVX2 (maddubs) and portable scalar C++; the best the CPU has is picked at
// kernel creation (ATP_ORT_CPU_ISA=scalar|avx2|avx512vnni picks a lower one, e.g. for tests). Threads: ORT's intra-op pool
// (KernelContext_ParallelFor), so the op never competes with ORT's own spinning workers.
//
// Files: kernels.h (layout, A quantization, scalar kernels), kernels_x86.h (AVX-512 VNNI and AVX2), this file (the
// ORT op: attributes, threads, RegisterCustomOps).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#include <atomic>
#include <mutex>
#include <string>
#include <stdexcept>

#include "dispatch.h"

namespace atp_cpu {

constexpr const char* kDomain = "atp.cpu";
constexpr const char* kVersion = "1";

// ---------------------------------------------------------------------------------------------- the ORT op
constexpr size_t kTasks = 24;  // row ranges per GEMM: even shares for 1, 2, 3, 4, 6, 8 and 12 threads

struct RowTask {
  const Problem* p;
  Isa isa;
  int64_t rows, groups, per_task;  // rows: N, or H = N / 2 with the SwiGLU epilogue (gate row j pairs with up row H + j)
  float* act = nullptr;            // the SwiGLU output [M, H], or null
};

void row_task(void* data, size_t i) {
  const RowTask& t = *static_cast<const RowTask*>(data);
  const int64_t g0 = int64_t(i) * t.per_task, g1 = std::min(t.groups, g0 + t.per_task);
  if (g0 >= g1) return;
  const int64_t r0 = 4 * g0, r1 = std::min(t.rows, 4 * g1);
  run_rows(*t.p, r0, r1, t.isa);
  if (!t.act) return;
  run_rows(*t.p, t.rows + r0, t.rows + r1, t.isa);
  swiglu(t.p->y, t.p->n, t.p->m, r0, r1, t.act, t.isa);
}

struct QuantTask {
  const float* a;
  Problem* p;
  int8_t* xq;
  float *sx, *corr;
  int32_t* ncx;
  Isa isa;
};

void quant_task(void* data, size_t m) {
  const QuantTask& t = *static_cast<const QuantTask*>(data);
  quantize_a(t.a + m * t.p->k, *t.p, t.xq + m * t.p->kp, t.sx + m * t.p->nblk, t.corr + m * t.p->nblk,
             t.ncx + m * t.p->units * 16, t.isa);
}

int64_t optional_int(const Ort::ConstKernelInfo& ki, const char* name, int64_t fallback) {
  try {
    return ki.GetAttribute<int64_t>(name);
  } catch (const Ort::Exception&) {
    return fallback;
  }
}

struct MatMulKernel {
  int64_t k = 0, n = 0, bs = 0, nblk = 0;
  bool swiglu = false;
  std::vector<float> yfull;  // [M, N] before the SwiGLU epilogue
  Isa isa = Isa::kScalar;
  std::vector<int8_t> xq;
  std::vector<float> sx, corr;
  std::vector<int32_t> ncx;

  int bits = 4;
  std::string name;

  MatMulKernel(const OrtKernelInfo* info, int op_bits) : bits(op_bits), name(op_bits == 8 ? "MatMulInt8" : "MatMulInt4") {
    Ort::ConstKernelInfo ki(info);
    k = ki.GetAttribute<int64_t>("K");
    n = ki.GetAttribute<int64_t>("N");
    bs = ki.GetAttribute<int64_t>("block_size");
    const int64_t attr_bits = ki.GetAttribute<int64_t>("bits");
    swiglu = optional_int(ki, "swiglu", 0) != 0;
    if (swiglu && n % 2) throw std::invalid_argument(name + " swiglu = 1 needs an even N (gate rows, then up rows)");
    if (attr_bits != bits)
      throw std::invalid_argument(name + " supports bits = " + std::to_string(bits) + " only, got " + std::to_string(attr_bits));
    if (k < 1 || n < 1) throw std::invalid_argument(name + " needs K >= 1 and N >= 1");
    if (!(bs == 32 || (bs >= 64 && bs % 64 == 0)))
      throw std::invalid_argument(name + " needs block_size 32 or a multiple of 64, got " + std::to_string(bs));
    nblk = (k + bs - 1) / bs;
    if ((nblk * bs) % kChunk)
      throw std::invalid_argument(name + " needs ceil(K / block_size) * block_size to be a multiple of 64");
    if (bs != 32 && (bs & (bs - 1)))
      throw std::invalid_argument(name + " needs a power-of-two block_size, got " + std::to_string(bs));
    isa = detect_isa();  // per kernel: ATP_ORT_CPU_ISA applies to sessions created after it is set
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::KernelContext ctx(context);
      Ort::ConstValue a = ctx.GetInput(0), b = ctx.GetInput(1), s = ctx.GetInput(2);
      std::vector<int64_t> shape = a.GetTensorTypeAndShapeInfo().GetShape();
      if (shape.empty() || shape.back() != k)
        return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, (name + ": A's last dimension must be K = " + std::to_string(k)).c_str());
      const size_t b_elems = b.GetTensorTypeAndShapeInfo().GetElementCount(), s_elems = s.GetTensorTypeAndShapeInfo().GetElementCount();
      if (b_elems != size_t(n * nblk * bs * bits / 8) || s_elems != size_t(n * nblk))
        return Ort::GetApi().CreateStatus(ORT_INVALID_ARGUMENT, (name + ": B or scales do not hold N x ceil(K / block_size) blocks").c_str());
      int64_t m = 1;
      for (size_t i = 0; i + 1 < shape.size(); ++i) m *= shape[i];
      shape.back() = swiglu ? n / 2 : n;
      Ort::UnownedValue y = ctx.GetOutput(0, shape);
      if (m == 0) return nullptr;
      Problem p = make_problem(m, n, k, bs, bits);
      p.b = b.GetTensorData<uint8_t>();
      p.sw = s.GetTensorData<float>();
      if (swiglu) {
        yfull.resize(size_t(m * n));
        p.y = yfull.data();
      } else {
        p.y = y.GetTensorMutableData<float>();
      }
      xq.resize(size_t(m * p.kp) + kChunk);  // + slack: no vector load ends past the buffer
      sx.resize(size_t(m * nblk));
      corr.resize(size_t(m * nblk));
      ncx.resize(size_t(m * p.units * 16));
      const float* ad = a.GetTensorData<float>();
      QuantTask qt{ad, &p, xq.data(), sx.data(), corr.data(), ncx.data(), isa};
      if (m == 1) {
        quant_task(&qt, 0);
      } else {
        ctx.ParallelFor(quant_task, size_t(m), 0, &qt);
      }
      p.xq = xq.data(), p.sx = sx.data(), p.corr = corr.data(), p.ncx = ncx.data();
      const int64_t rows = swiglu ? n / 2 : n;
      RowTask rt{&p, isa, rows, (rows + 3) / 4, 0, swiglu ? y.GetTensorMutableData<float>() : nullptr};
      rt.per_task = (rt.groups + kTasks - 1) / kTasks;
      const size_t tasks = size_t((rt.groups + rt.per_task - 1) / rt.per_task);
      if (tasks == 1) {
        row_task(&rt, 0);
      } else {
        ctx.ParallelFor(row_task, tasks, 0, &rt);
      }
      return nullptr;
    } catch (const Ort::Exception& e) {
      return Ort::GetApi().CreateStatus(e.GetOrtErrorCode(), e.what());
    } catch (const std::exception& e) {
      return Ort::GetApi().CreateStatus(ORT_FAIL, (name + ": " + e.what()).c_str());
    }
  }
};

// MatMulInt4 (bits 4) and MatMulInt8 (bits 8, MatMulNBits' int8 layout: one code q + 128 per byte): same contract
template <int kBits>
struct MatMulOp : Ort::CustomOpBase<MatMulOp<kBits>, MatMulKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    try {
      *kernel = new MatMulKernel(info, kBits);
      return nullptr;
    } catch (const std::exception& e) {
      return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
    }
  }
  const char* GetName() const { return kBits == 8 ? "MatMulInt8" : "MatMulInt4"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetInputType(size_t i) const {
    return i == 1 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

  // Y = A's shape with the last dimension N (N / 2 with swiglu). ORT hands an unknown dimension (no value, no
  // name: common in traced graphs) over as the integer -1 and would write a -1 back as a *known* size, which
  // later shape inference (Slice, Gather: std::clamp(x, 0, dim - 1)) trips over and aborts the process. Unknown
  // dimensions therefore go out as fresh symbols; a rank-unknown A leaves Y's shape unknown.
  static Ort::Status InferOutputShape(Ort::ShapeInferContext& ctx) {
    static std::atomic<uint64_t> fresh{0};
    Ort::ShapeInferContext::Shape shape = ctx.GetInputShape(0);
    if (shape.empty()) return Ort::Status(nullptr);
    int64_t swiglu = 0;
    try {
      swiglu = ctx.GetAttrInt("swiglu");
    } catch (const Ort::Exception&) {
    }
    std::vector<std::string> names;  // own the symbol strings until SetOutputShape has copied them
    names.reserve(shape.size());
    for (auto& dim : shape)
      if (dim.IsInt() && dim.AsInt() < 0) {
        names.push_back("atp_cpu_unk_" + std::to_string(fresh.fetch_add(1)));
        dim = Ort::ShapeInferContext::SymbolicInteger(names.back().c_str());
      }
    shape.back() = Ort::ShapeInferContext::SymbolicInteger(ctx.GetAttrInt("N") / (swiglu ? 2 : 1));
    return ctx.SetOutputShape(0, shape);
  }
};

}  // namespace atp_cpu

using namespace atp_cpu;

extern "C" {

__attribute__((visibility("default"))) const char* atp_ort_cpu_isa() { return isa_name(detect_isa()); }
__attribute__((visibility("default"))) const char* atp_ort_cpu_version() { return kVersion; }

__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(ORT_API_VERSION);
  if (!api) return nullptr;  // an ONNX Runtime older than the headers: nothing we can report through
  Ort::InitApi(api);
  static const MatMulOp<4> op4;
  static const MatMulOp<8> op8;
  static std::vector<Ort::CustomOpDomain> domains;  // must outlive every session that uses them
  static std::mutex mu;
  try {
    Ort::CustomOpDomain domain{kDomain};
    domain.Add(&op4);
    domain.Add(&op8);
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(mu);
    domains.push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  }
  return nullptr;
}

}  // extern "C"
