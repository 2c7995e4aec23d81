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
enum Input : int
{
    kX = 0,
    kW8,
    kS8,
    kW4,
    kS4,
    kZ4
};

constexpr int32_t kGroupMultiple = 32; // the kernels step through Kin 32 at a time
} // namespace

MixedGemmPlugin::MixedGemmPlugin(int32_t groupSize, int32_t hasZeroPoints)
    : mGroupSize(groupSize)
    , mHasZeroPoints(hasZeroPoints)
{
    check(groupSize > 0 && groupSize % kGroupMultiple == 0,
        "MixedGemm: group_size must be a positive multiple of 32, got " + std::to_string(groupSize));
    check(hasZeroPoints == 0 || hasZeroPoints == 1, "MixedGemm: has_zero_points must be 0 or 1");
}

int32_t MixedGemmPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    ATP_TRY
    {
        check(nbInputs == 5 + mHasZeroPoints && nbOutputs == 1,
            "MixedGemm takes (x, w8, s8, w4, s4" + std::string(mHasZeroPoints ? ", z4)" : ")") + " and gives y");
        int32_t const kin = static_cast<int32_t>(in[kX].desc.dims.d[in[kX].desc.dims.nbDims - 1]);
        check(kin > 0 && kin % mGroupSize == 0,
            "MixedGemm: Kin=" + std::to_string(kin) + " is not a multiple of group_size=" + std::to_string(mGroupSize));
        check(in[kW8].desc.dims.d[1] == kin && in[kW4].desc.dims.d[1] * 2 == kin,
            "MixedGemm: w8 must be [n8, Kin] and w4 [n4, Kin/2]");
        return 0;
    }
    ATP_CATCH("MixedGemm::configurePlugin", -1)
}

int32_t MixedGemmPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* /*inputTypes*/, int32_t /*nbInputs*/) const noexcept
{
    ATP_TRY
    {
        check(nbOutputs == 1, "MixedGemm has one output");
        outputTypes[0] = DataType::kHALF;
        return 0;
    }
    ATP_CATCH("MixedGemm::getOutputDataTypes", -1)
}

int32_t MixedGemmPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    ATP_TRY
    {
        check(nbInputs == 5 + mHasZeroPoints && nbOutputs == 1, "MixedGemm: wrong number of inputs or outputs");
        check(inputs[kX].nbDims >= 2 && inputs[kW8].nbDims == 2 && inputs[kW4].nbDims == 2,
            "MixedGemm: x [..., Kin], w8 [n8, Kin], w4 [n4, Kin/2]");
        outputs[0] = inputs[kX];
        outputs[0].d[inputs[kX].nbDims - 1]
            = exprBuilder.operation(DimensionOperation::kSUM, *inputs[kW8].d[0], *inputs[kW4].d[0]);
        return 0;
    }
    ATP_CATCH("MixedGemm::getOutputShapes", -1)
}

bool MixedGemmPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    ATP_TRY
    {
        check(pos < nbInputs + nbOutputs, "MixedGemm: bad format query");
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR)
        {
            return false;
        }
        if (pos == nbInputs)
        {
            return d.type == DataType::kHALF; // y
        }
        switch (pos)
        {
        case kX: return d.type == DataType::kHALF;
        case kW8:
        case kW4:
        case kZ4: return d.type == DataType::kINT8;
        default: return d.type == DataType::kFLOAT; // s8, s4
        }
    }
    ATP_CATCH("MixedGemm::supportsFormatCombination", false)
}

int32_t MixedGemmPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t /*nbOutputs*/) noexcept
{
    ATP_TRY
    {
        check(nbInputs == 5 + mHasZeroPoints, "MixedGemm: wrong number of inputs");
        int64_t const kin = in[kX].dims.d[in[kX].dims.nbDims - 1];
        check(kin % mGroupSize == 0, "MixedGemm: Kin is not a multiple of group_size");
        check(in[kS4].dims.d[1] * mGroupSize == kin, "MixedGemm: s4 must be [n4, Kin/group_size]");
        return 0;
    }
    ATP_CATCH("MixedGemm::onShapeChange", -1)
}

int32_t MixedGemmPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    ATP_TRY
    {
        Dims const& xd = inputDesc[kX].dims;
        int64_t m = 1;
        for (int i = 0; i < xd.nbDims - 1; ++i)
        {
            m *= xd.d[i];
        }
        int32_t const kin = static_cast<int32_t>(xd.d[xd.nbDims - 1]);
        int32_t const n8 = static_cast<int32_t>(inputDesc[kW8].dims.d[0]);
        int32_t const n4 = static_cast<int32_t>(inputDesc[kW4].dims.d[0]);
        int32_t m32 = static_cast<int32_t>(m);
        int32_t const nout = n8 + n4;
        char const* path = m <= kGemvMaxM ? "gemv" : "prefill";
        CUstream const cuStream = reinterpret_cast<CUstream>(stream);
        void const* x = inputs[kX];
        std::string error;

        auto run = [&](std::string const& key, void const* w, void const* s, void const* z, void* y, int32_t n, int32_t group,
                       int32_t strideWn, int32_t strideSn) {
            CubinEntry const* k = resolveCubin(key, error);
            check(k != nullptr, error);
            int32_t nn = n;
            int32_t kk = kin;
            int32_t gg = group;
            int32_t strideXm = kin;
            int32_t strideYm = nout;
            // mixed_gemm_kernel(x, w, s, z, y, M, N, KIN, GROUP, stride_xm, stride_wn, stride_sn, stride_ym)
            std::vector<void*> args{&x, &w, &s, &z, &y, &m32, &nn, &kk, &gg, &strideXm, &strideWn, &strideSn, &strideYm};
            error = launchKernel(*k, static_cast<unsigned>(ceilDiv(m, k->blockM)), static_cast<unsigned>(ceilDiv(n, k->blockN)),
                1, args, cuStream);
            check(error.empty(), error);
        };
        if (n8 > 0)
        {
            // the int8 rows are one group spanning Kin with one scale per output feature
            run(std::string("mixed_gemm/int8/") + path, inputs[kW8], inputs[kS8], inputs[kS8], outputs[0], n8, kin, kin, 1);
        }
        if (n4 > 0)
        {
            void* y4 = static_cast<char*>(outputs[0]) + static_cast<std::size_t>(n8) * 2; // fp16 columns n8..
            void const* z = mHasZeroPoints ? inputs[kZ4] : inputs[kS4];
            std::string const key = std::string("mixed_gemm/int4/") + (mHasZeroPoints ? "zp/" : "") + path;
            run(key, inputs[kW4], inputs[kS4], z, y4, n4, mGroupSize, kin / 2, kin / mGroupSize);
        }
        return 0;
    }
    ATP_CATCH("MixedGemm::enqueue", -1)
}

void MixedGemmPlugin::serializeFields(FieldStore& fields) const
{
    fields.addInt32("group_size", mGroupSize);
    fields.addInt32("has_zero_points", mHasZeroPoints);
}

MixedGemmCreator::MixedGemmCreator()
{
    // names and defaults: contract.yaml (checked by tests/unit/test_plugin_contracts.py)
    mFields.addInt32("group_size", 128);
    mFields.addInt32("has_zero_points", 0);
}

IPluginV3* MixedGemmCreator::createPlugin(char const* /*name*/, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    ATP_TRY
    {
        int32_t const group = readInt32Field(fc, "group_size", 128);
        int32_t const zp = readInt32Field(fc, "has_zero_points", 0);
        return new MixedGemmPlugin(group, zp);
    }
    ATP_CATCH("MixedGemmCreator::createPlugin", nullptr)
}

} // namespace atp
