// Build-phase tests of the atp IPluginV3 plugins without TensorRT or a GPU: the TensorRT interfaces are
// header-only wrappers over apiv:: implementation classes, so fakes of IExprBuilder/IDimensionExpr and
// ILogger drive getOutputShapes (size tensor included), type/format negotiation, fields and errors.
// Built by plugins/CMakeLists.txt with -DATP_BUILD_TESTS=ON; run by tests/unit/test_plugin_contracts.py.
#include "../../plugins/mixed_gemm/plugin.h"
#include "../../plugins/topk_gate/plugin.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

extern "C" void setLoggerFinder(ILoggerFinder* finder);
extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace
{
int gFailures = 0;
#define EXPECT(cond)                                                                                                   \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                                                \
            ++gFailures;                                                                                               \
        }                                                                                                              \
    } while (0)

struct ExprImpl : apiv::VDimensionExpr
{
    int64_t value{0};
    bool constant{true};
    bool size{false};
    bool isConstant() const override { return constant; }
    int64_t getConstantValue() const override { return constant ? value : INT64_MIN; }
    bool isSizeTensor() const override { return size; }
};

struct Expr : IDimensionExpr
{
    ExprImpl impl;
    Expr() { mImpl = &impl; }
    ~Expr() noexcept override = default;
};

struct BuilderImpl : apiv::VExprBuilder
{
    std::deque<std::unique_ptr<Expr>> exprs;
    int sizeIndex{-1};
    int64_t sizeOpt{-1};
    int64_t sizeUpper{-1};

    Expr* make(int64_t v, bool constant = true)
    {
        exprs.emplace_back(new Expr());
        exprs.back()->impl.value = v;
        exprs.back()->impl.constant = constant;
        return exprs.back().get();
    }
    IDimensionExpr const* constant(int64_t value) override { return make(value); }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override
    {
        int64_t x = a.getConstantValue(), y = b.getConstantValue();
        switch (op)
        {
        case DimensionOperation::kSUM: return make(x + y);
        case DimensionOperation::kPROD: return make(x * y);
        case DimensionOperation::kCEIL_DIV: return make((x + y - 1) / y);
        default: return make(0, false);
        }
    }
    IDimensionExpr const* declareSizeTensor(int32_t outputIndex, IDimensionExpr const& opt, IDimensionExpr const& upper) override
    {
        sizeIndex = outputIndex;
        sizeOpt = opt.getConstantValue();
        sizeUpper = upper.getConstantValue();
        Expr* e = make(0, false);
        e->impl.size = true;
        return e;
    }
};

struct Builder : IExprBuilder
{
    BuilderImpl impl;
    Builder() { mImpl = &impl; }
    ~Builder() noexcept override = default;
};

struct CaptureLogger : ILogger
{
    std::vector<std::string> errors;
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kERROR)
        {
            errors.emplace_back(msg);
        }
    }
};

struct Finder : ILoggerFinder
{
    CaptureLogger logger;
    ILogger* findLogger() override { return &logger; }
};

bool lastErrorHas(Finder& f, char const* text)
{
    bool ok = !f.logger.errors.empty() && f.logger.errors.back().find(text) != std::string::npos;
    if (!ok)
    {
        std::printf("  last error: %s\n", f.logger.errors.empty() ? "(none)" : f.logger.errors.back().c_str());
    }
    return ok;
}

DimsExprs dims(Builder& b, std::vector<int64_t> const& v)
{
    DimsExprs d{};
    d.nbDims = static_cast<int32_t>(v.size());
    for (std::size_t i = 0; i < v.size(); ++i)
    {
        d.d[i] = b.constant(v[i]);
    }
    return d;
}

DynamicPluginTensorDesc desc(DataType t, std::vector<int64_t> const& shape, std::vector<int64_t> const& max = {})
{
    DynamicPluginTensorDesc d{};
    d.desc.type = t;
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.dims.nbDims = static_cast<int32_t>(shape.size());
    d.max.nbDims = d.desc.dims.nbDims;
    for (std::size_t i = 0; i < shape.size(); ++i)
    {
        d.desc.dims.d[i] = shape[i];
        d.max.d[i] = max.empty() ? shape[i] : max[i];
    }
    return d;
}

IPluginCreatorV3One* creator(char const* name)
{
    int32_t n = 0;
    auto* const* list = getCreators(n);
    for (int32_t i = 0; i < n; ++i)
    {
        auto* c = static_cast<IPluginCreatorV3One*>(list[i]);
        if (std::strcmp(c->getPluginName(), name) == 0)
        {
            return c;
        }
    }
    return nullptr;
}

IPluginV3OneBuild* build(IPluginV3* p)
{
    return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}

void testTopKGate(Finder& finder)
{
    IPluginCreatorV3One* c = creator("TopKGate");
    EXPECT(c != nullptr && std::strcmp(c->getPluginNamespace(), "atp") == 0);
    std::unique_ptr<IPluginV3> p(c->createPlugin("gate", nullptr, TensorRTPhase::kBUILD));
    EXPECT(p != nullptr);
    IPluginV3OneBuild* b = build(p.get());
    EXPECT(b->getNbOutputs() == 3);

    DataType in[3] = {DataType::kFLOAT, DataType::kHALF, DataType::kINT64};
    DataType out[3] = {};
    EXPECT(b->getOutputDataTypes(out, 3, in, 3) == 0);
    EXPECT(out[0] == DataType::kHALF && out[1] == DataType::kINT32 && out[2] == DataType::kINT64);

    Builder eb;
    DimsExprs ins[3] = {dims(eb, {2, 576}), dims(eb, {2, 576, 64}), dims(eb, {})};
    DimsExprs outs[3] = {};
    EXPECT(b->getOutputShapes(ins, 3, nullptr, 0, outs, 3, eb) == 0);
    EXPECT(eb.impl.sizeIndex == 2 && eb.impl.sizeOpt == 288 && eb.impl.sizeUpper == 576);
    EXPECT(outs[0].nbDims == 3 && outs[0].d[0]->getConstantValue() == 2 && !outs[0].d[1]->isConstant()
        && outs[0].d[2]->getConstantValue() == 64);
    EXPECT(outs[1].nbDims == 2 && outs[1].d[1] == outs[0].d[1]);
    EXPECT(outs[2].nbDims == 0);

    DynamicPluginTensorDesc io[6] = {desc(DataType::kFLOAT, {2, 576}), desc(DataType::kHALF, {2, 576, 64}),
        desc(DataType::kINT64, {}), desc(DataType::kHALF, {2, 10, 64}), desc(DataType::kINT32, {2, 10}),
        desc(DataType::kINT64, {})};
    for (int pos = 0; pos < 6; ++pos)
    {
        EXPECT(b->supportsFormatCombination(pos, io, 3, 3));
    }
    io[3].desc.type = DataType::kFLOAT; // kept tokens must have the tokens' type
    EXPECT(!b->supportsFormatCombination(3, io, 3, 3));
    io[2].desc.type = DataType::kINT32; // keep is int64
    EXPECT(!b->supportsFormatCombination(2, io, 3, 3));
    io[0].desc.type = DataType::kINT8;
    EXPECT(!b->supportsFormatCombination(0, io, 3, 3));

    DynamicPluginTensorDesc cin[3] = {desc(DataType::kFLOAT, {-1, -1}, {1, 5000}), desc(DataType::kFLOAT, {-1, -1, 64}, {1, 5000, 64}),
        desc(DataType::kINT64, {})};
    EXPECT(b->configurePlugin(cin, 3, nullptr, 3) != 0);
    EXPECT(lastErrorHas(finder, "at most 4096 tokens"));
    cin[0].max.d[1] = 4096;
    EXPECT(b->configurePlugin(cin, 3, nullptr, 3) == 0);

    if (dlopen("libcuda.so.1", RTLD_NOW) == nullptr) // no driver here: enqueue reports it instead of crashing
    {
        auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        PluginTensorDesc rin[3] = {io[0].desc, io[1].desc, io[2].desc};
        rin[0].type = DataType::kFLOAT;
        rin[2].type = DataType::kINT64;
        void const* inputs[3] = {nullptr, nullptr, nullptr};
        void* outputs[3] = {nullptr, nullptr, nullptr};
        EXPECT(rt->enqueue(rin, nullptr, inputs, outputs, nullptr, nullptr) != 0);
        EXPECT(lastErrorHas(finder, "libcuda.so.1"));
    }
}

void testMixedGemm(Finder& finder)
{
    IPluginCreatorV3One* c = creator("MixedGemm");
    EXPECT(c != nullptr);
    int32_t group = 64;
    int32_t zp = 1;
    PluginField f[2] = {PluginField("group_size", &group, PluginFieldType::kINT32, 1),
        PluginField("has_zero_points", &zp, PluginFieldType::kINT32, 1)};
    PluginFieldCollection fc{2, f};
    std::unique_ptr<IPluginV3> p(c->createPlugin("gemm", &fc, TensorRTPhase::kBUILD));
    EXPECT(p != nullptr);
    IPluginV3OneBuild* b = build(p.get());
    EXPECT(b->getNbOutputs() == 1);

    auto* rt = static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* ser = rt->getFieldsToSerialize();
    EXPECT(ser->nbFields == 2 && std::strcmp(ser->fields[0].name, "group_size") == 0
        && *static_cast<int32_t const*>(ser->fields[0].data) == 64 && *static_cast<int32_t const*>(ser->fields[1].data) == 1);
    std::unique_ptr<IPluginV3> q(c->createPlugin("gemm", ser, TensorRTPhase::kRUNTIME)); // deserialisation round trip
    EXPECT(q != nullptr);

    Builder eb;
    DimsExprs ins[6] = {dims(eb, {3, 7, 256}), dims(eb, {16, 256}), dims(eb, {16}), dims(eb, {48, 128}), dims(eb, {48, 4}),
        dims(eb, {48, 4})};
    DimsExprs outs[1] = {};
    EXPECT(b->getOutputShapes(ins, 6, nullptr, 0, outs, 1, eb) == 0);
    EXPECT(outs[0].nbDims == 3 && outs[0].d[0]->getConstantValue() == 3 && outs[0].d[2]->getConstantValue() == 64);
    EXPECT(b->getOutputShapes(ins, 5, nullptr, 0, outs, 1, eb) != 0); // has_zero_points=1 needs z4
    EXPECT(lastErrorHas(finder, "wrong number of inputs"));

    DynamicPluginTensorDesc io[7] = {desc(DataType::kHALF, {8, 256}), desc(DataType::kINT8, {16, 256}), desc(DataType::kFLOAT, {16}),
        desc(DataType::kINT8, {48, 128}), desc(DataType::kFLOAT, {48, 4}), desc(DataType::kINT8, {48, 4}),
        desc(DataType::kHALF, {8, 64})};
    for (int pos = 0; pos < 7; ++pos)
    {
        EXPECT(b->supportsFormatCombination(pos, io, 6, 1));
    }
    io[0].desc.type = DataType::kFLOAT; // the kernels take fp16 activations
    EXPECT(!b->supportsFormatCombination(0, io, 6, 1));
    io[0].desc.type = DataType::kHALF;
    EXPECT(b->configurePlugin(io, 6, nullptr, 1) == 0);
    DynamicPluginTensorDesc odd[6] = {desc(DataType::kHALF, {8, 96}), desc(DataType::kINT8, {16, 96}), io[2],
        desc(DataType::kINT8, {48, 48}), io[4], io[5]};
    EXPECT(b->configurePlugin(odd, 6, nullptr, 1) != 0);
    EXPECT(lastErrorHas(finder, "not a multiple of group_size=64"));

    int32_t badGroup = 48;
    PluginField bf[1] = {PluginField("group_size", &badGroup, PluginFieldType::kINT32, 1)};
    PluginFieldCollection bfc{1, bf};
    EXPECT(c->createPlugin("gemm", &bfc, TensorRTPhase::kBUILD) == nullptr);
    EXPECT(lastErrorHas(finder, "group_size must be a positive multiple of 32, got 48"));
}
} // namespace

int main()
{
    static Finder finder;
    setLoggerFinder(&finder);
    testTopKGate(finder);
    testMixedGemm(finder);
    std::printf("%s: %d failure(s)\n", gFailures ? "FAILED" : "OK", gFailures);
    return gFailures ? 1 : 0;
}
