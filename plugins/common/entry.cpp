// Library entry points: TensorRT's plugin-library interface (getCreators, setLoggerFinder) and the
// metadata functions the Python side and the contract tests read (atpPlugin*).
#include "../mixed_gemm/plugin.h"
#include "../topk_gate/plugin.h"
#include "cubins.h"
#include "plugin_common.h"

#include <NvInferVersion.h>

#include <memory>
#include <string>

#define ATP_EXPORT extern "C" __attribute__((visibility("default")))

namespace
{
nvinfer1::IPluginCreatorInterface* const* creators(int32_t& count)
{
    static atp::TopKGateCreator topk;
    static atp::MixedGemmCreator gemm;
    static nvinfer1::IPluginCreatorInterface* const list[] = {&topk, &gemm};
    count = static_cast<int32_t>(sizeof(list) / sizeof(list[0]));
    return list;
}

char const* fieldType(nvinfer1::PluginFieldType t)
{
    switch (t)
    {
    case nvinfer1::PluginFieldType::kINT32: return "int32";
    case nvinfer1::PluginFieldType::kINT64: return "int64";
    case nvinfer1::PluginFieldType::kFLOAT32: return "float32";
    case nvinfer1::PluginFieldType::kCHAR: return "string";
    default: return "other";
    }
}

std::string buildContracts()
{
    int32_t n = 0;
    auto* const* list = creators(n);
    std::string json = "[";
    for (int32_t i = 0; i < n; ++i)
    {
        auto* c = static_cast<nvinfer1::IPluginCreatorV3One*>(list[i]);
        nvinfer1::PluginFieldCollection const* fc = c->getFieldNames();
        std::string fields = "[";
        for (int32_t f = 0; f < fc->nbFields; ++f)
        {
            nvinfer1::PluginField const& pf = fc->fields[f];
            std::string def = "null";
            if (pf.type == nvinfer1::PluginFieldType::kINT32 && pf.data != nullptr)
            {
                def = std::to_string(*static_cast<int32_t const*>(pf.data));
            }
            fields += std::string(f ? "," : "") + "{\"name\":\"" + pf.name + "\",\"type\":\"" + fieldType(pf.type)
                + "\",\"default\":" + def + "}";
        }
        fields += "]";
        std::unique_ptr<nvinfer1::IPluginV3> plugin(c->createPlugin(c->getPluginName(), nullptr, nvinfer1::TensorRTPhase::kBUILD));
        int nbOutputs = -1;
        if (plugin)
        {
            auto* build = static_cast<nvinfer1::IPluginV3OneBuild*>(plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
            nbOutputs = build != nullptr ? build->getNbOutputs() : -1;
        }
        json += std::string(i ? "," : "") + "{\"name\":\"" + c->getPluginName() + "\",\"version\":\"" + c->getPluginVersion()
            + "\",\"namespace\":\"" + c->getPluginNamespace() + "\",\"fields\":" + fields
            + ",\"nb_outputs\":" + std::to_string(nbOutputs) + "}";
    }
    return json + "]";
}
} // namespace

ATP_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    atp::setLoggerFinder(finder);
}

ATP_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    return creators(nbCreators);
}

// JSON list of the creators: name, version, namespace, fields (name, type, default), number of outputs.
ATP_EXPORT char const* atpPluginContracts()
{
    static std::string const json = buildContracts();
    return json.c_str();
}

// NV_TENSORRT_VERSION of the headers the library was compiled against (major*10000 + minor*100 + patch).
ATP_EXPORT int atpPluginTensorRTVersion()
{
    return NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH;
}

// "87;86;89;90": archs with embedded cubins.
ATP_EXPORT char const* atpPluginArchs()
{
    static std::string const archs = atp::embeddedArchs();
    return archs.c_str();
}
