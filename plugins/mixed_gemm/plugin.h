// MixedGemm: IPluginV3 (OneCore/OneBuild/OneRuntime) computing y = x @ W^T with W split into int8 rows and
// group-wise int4 rows. Contract: contract.yaml. Kernel: kernel.py (Triton), launched from embedded cubins.
#pragma once

#include "../common/plugin_base.h"

namespace atp
{

class MixedGemmPlugin : public PluginV3Base<MixedGemmPlugin>
{
public:
    static constexpr char const* kName = "MixedGemm";
    static constexpr char const* kVersion = "1";
    static constexpr int32_t kGemvMaxM = 8; // M <= 8: fp16 GEMV path; above: int8-MMA prefill path (kernel.py)

    MixedGemmPlugin(int32_t groupSize, int32_t hasZeroPoints);
    ~MixedGemmPlugin() override = default;

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override { return 1; }

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

    // PluginV3Base: the creator fields, as getFieldsToSerialize reports them
    void serializeFields(FieldStore& fields) const;

private:
    int32_t mGroupSize;
    int32_t mHasZeroPoints;
};

class MixedGemmCreator : public PluginCreatorBase<MixedGemmPlugin>
{
public:
    MixedGemmCreator();
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
};

} // namespace atp
