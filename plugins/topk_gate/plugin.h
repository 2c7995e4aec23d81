// TopKGate: IPluginV3 (OneCore/OneBuild/OneRuntime) keeping the K highest-scoring tokens in ascending
// index order. Contract: contract.yaml. Kernels: kernel.py (Triton), launched from embedded cubins.
#pragma once

#include "../common/plugin_base.h"

namespace atp
{

class TopKGatePlugin : public PluginV3Base<TopKGatePlugin>
{
public:
    static constexpr char const* kName = "TopKGate";
    static constexpr char const* kVersion = "1";
    static constexpr int64_t kMaxTokens = 4096;

    TopKGatePlugin() = default;
    ~TopKGatePlugin() override = default;

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
    int32_t getNbOutputs() const noexcept override { return 3; }

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

    // PluginV3Base: the creator fields, as getFieldsToSerialize reports them
    void serializeFields(FieldStore& fields) const;
};

class TopKGateCreator : public PluginCreatorBase<TopKGatePlugin>
{
public:
    TopKGateCreator();
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
};

} // namespace atp
