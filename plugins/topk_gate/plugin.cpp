#include "plugin.h"

#include "../common/cubins.h"
#include "../common/driver.h"

#include <string>
#include <vector>

using namespace nvinfer1;

namespace atp
{
namespace
{
constexpr int kScores = 0;
constexpr int kTokens = 1;
constexpr int kKeep = 2;
constexpr int kNbInputs = 3;

bool isFloat(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF;
}

char const* dtypeKey(DataType t)
{
    return t == DataType::kHALF ? "fp16" : "fp32";
}

// Smallest embedded TOPK row width >= n (plugins/aot.py TOPK_BLOCKS).
int topkBlock(int64_t n)
{
    for (int b : {256, 1024, 4096})
    {
        if (n <= b)
        {
            return b;
        }
    }
    return -1;
}
} // namespace

int32_t TopKGatePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    ATP_TRY
    {
        check(nbInputs == kNbInputs && nbOutputs == 3, "TopKGate takes (scores, tokens, keep) and gives 3 outputs");
        check(in[kScores].desc.dims.nbDims == 2 && in[kTokens].desc.dims.nbDims == 3,
            "TopKGate: scores must be [B, N] and tokens [B, N, D]");
        int64_t maxN = in[kScores].max.d[1];
        check(maxN <= kMaxTokens,
            "TopKGate supports at most " + std::to_string(kMaxTokens) + " tokens per row; the profile allows " + std::to_string(maxN));
        return 0;
    }
    ATP_CATCH("TopKGate::configurePlugin", -1)
}

int32_t TopKGatePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    ATP_TRY
    {
        check(nbInputs == kNbInputs && nbOutputs == 3, "TopKGate: wrong number of inputs or outputs");
        outputTypes[0] = inputTypes[kTokens];
        outputTypes[1] = DataType::kINT32;
        outputTypes[2] = DataType::kINT64;
        return 0;
    }
    ATP_CATCH("TopKGate::getOutputDataTypes", -1)
}

int32_t TopKGatePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    ATP_TRY
    {
        check(nbInputs == kNbInputs && nbOutputs == 3, "TopKGate: wrong number of inputs or outputs");
        check(inputs[kScores].nbDims == 2 && inputs[kTokens].nbDims == 3, "TopKGate: scores [B, N], tokens [B, N, D]");
        IDimensionExpr const* n = inputs[kScores].d[1];
        IDimensionExpr const* opt = exprBuilder.operation(DimensionOperation::kCEIL_DIV, *n, *exprBuilder.constant(2));
        // K is read on the device: a size tensor (output 2) bounded by N, so one engine serves every K
        IDimensionExpr const* k = exprBuilder.declareSizeTensor(2, *opt, *n);
        outputs[0].nbDims = 3;
        outputs[0].d[0] = inputs[kTokens].d[0];
        outputs[0].d[1] = k;
        outputs[0].d[2] = inputs[kTokens].d[2];
        outputs[1].nbDims = 2;
        outputs[1].d[0] = inputs[kScores].d[0];
        outputs[1].d[1] = k;
        outputs[2].nbDims = 0;
        return 0;
    }
    ATP_CATCH("TopKGate::getOutputShapes", -1)
}

bool TopKGatePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    ATP_TRY
    {
        check(nbInputs == kNbInputs && nbOutputs == 3 && pos < nbInputs + nbOutputs, "TopKGate: bad format query");
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        switch (pos)
        {
        case kScores:
        case kTokens: return isFloat(d.type);
        case kKeep: return d.type == DataType::kINT64;
        case 3: return d.type == inOut[kTokens].desc.type;
        case 4: return d.type == DataType::kINT32;
        default: return d.type == DataType::kINT64;
        }
    }
    ATP_CATCH("TopKGate::supportsFormatCombination", false)
}

int32_t TopKGatePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    ATP_TRY
    {
        check(nbInputs == kNbInputs, "TopKGate: wrong number of inputs");
        check(in[kScores].dims.d[1] <= kMaxTokens, "TopKGate: more than 4096 tokens per row");
        check(in[kScores].dims.d[1] == in[kTokens].dims.d[1], "TopKGate: scores and tokens disagree on N");
        return 0;
    }
    ATP_CATCH("TopKGate::onShapeChange", -1)
}

int32_t TopKGatePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    ATP_TRY
    {
        int64_t const b = inputDesc[kScores].dims.d[0];
        int64_t const n = inputDesc[kScores].dims.d[1];
        int64_t const d = inputDesc[kTokens].dims.d[2];
        int const block = topkBlock(n);
        check(block > 0, "TopKGate: more than 4096 tokens per row");
        std::string error;
        std::string const topkKey = std::string("topk_index/") + dtypeKey(inputDesc[kScores].type) + "/" + std::to_string(block);
        CubinEntry const* topk = resolveCubin(topkKey, error);
        check(topk != nullptr, error);
        std::string const gatherKey = std::string("gather_rows/") + dtypeKey(inputDesc[kTokens].type);
        CubinEntry const* gather = resolveCubin(gatherKey, error);
        check(gather != nullptr, error);

        void const* scores = inputs[kScores];
        void const* tokens = inputs[kTokens];
        void const* keep = inputs[kKeep];
        void* kept = outputs[0];
        void* index = outputs[1];
        void* size = outputs[2];
        int32_t n32 = static_cast<int32_t>(n);
        int32_t d32 = static_cast<int32_t>(d);
        int32_t strideSb = n32;
        int32_t strideTb = static_cast<int32_t>(n * d);
        int32_t strideTn = d32;
        // topk_index_kernel(scores, keep, index, size, N, stride_sb)
        std::vector<void*> args{&scores, &keep, &index, &size, &n32, &strideSb};
        error = launchKernel(*topk, static_cast<unsigned>(b), 1, 1, args, reinterpret_cast<CUstream>(stream));
        check(error.empty(), error);
        // gather_rows_kernel(tokens, index, keep, out, N, D, stride_tb, stride_tn): the grid covers N rows
        std::vector<void*> gargs{&tokens, &index, &keep, &kept, &n32, &d32, &strideTb, &strideTn};
        unsigned const rowBlocks = static_cast<unsigned>(ceilDiv(n, gather->blockK));
        error = launchKernel(*gather, static_cast<unsigned>(b), rowBlocks, 1, gargs, reinterpret_cast<CUstream>(stream));
        check(error.empty(), error);
        return 0;
    }
    ATP_CATCH("TopKGate::enqueue", -1)
}

void TopKGatePlugin::serializeFields(FieldStore& /*fields*/) const
{
    // no fields (contract.yaml: attributes: [])
}

TopKGateCreator::TopKGateCreator() = default;

IPluginV3* TopKGateCreator::createPlugin(char const* /*name*/, PluginFieldCollection const* /*fc*/, TensorRTPhase /*phase*/) noexcept
{
    ATP_TRY
    {
        // no attributes (the ONNX node's plugin_version / plugin_namespace are the parser's, not ours)
        return new TopKGatePlugin();
    }
    ATP_CATCH("TopKGateCreator::createPlugin", nullptr)
}

} // namespace atp
