// The IPluginV3 glue every atp plugin shares: capability interfaces, clone, name/version/namespace,
// attachToContext, serialized fields, and the creator's metadata. A plugin derives from
// PluginV3Base<Itself> (CRTP) and implements only its build and runtime behaviour.
#pragma once

#include "plugin_common.h"

#include <string>

namespace atp
{

// Derived provides: static kName / kVersion, a copy constructor (clone copies the configured plugin),
// `void serializeFields(FieldStore&) const` (its creator fields, in contract.yaml order), and the
// IPluginV3OneBuild / IPluginV3OneRuntime methods.
template <typename Derived>
class PluginV3Base : public nvinfer1::IPluginV3,
                     public nvinfer1::IPluginV3OneCore,
                     public nvinfer1::IPluginV3OneBuild,
                     public nvinfer1::IPluginV3OneRuntime
{
public:
    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        ATP_TRY
        {
            switch (type)
            {
            case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
            case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
            case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
            }
            return nullptr;
        }
        ATP_CATCH(where("getCapabilityInterface"), nullptr)
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        ATP_TRY
        {
            return new Derived(static_cast<Derived const&>(*this));
        }
        ATP_CATCH(where("clone"), nullptr)
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return Derived::kName; }
    char const* getPluginVersion() const noexcept override { return Derived::kVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneRuntime (shared part)
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept override
    {
        return clone();
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        ATP_TRY
        {
            mSerialized = FieldStore{};
            static_cast<Derived const&>(*this).serializeFields(mSerialized);
            return mSerialized.finish();
        }
        ATP_CATCH(where("getFieldsToSerialize"), nullptr)
    }

protected:
    // "<plugin name>::<method>", for error reports
    static std::string where(char const* method)
    {
        return std::string(Derived::kName) + "::" + method;
    }

private:
    FieldStore mSerialized;
};

// Plugin's creator: metadata from Plugin and the field names (with defaults) the derived creator adds.
template <typename Plugin>
class PluginCreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    char const* getPluginName() const noexcept override { return Plugin::kName; }
    char const* getPluginVersion() const noexcept override { return Plugin::kVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return mFields.finish(); }

protected:
    FieldStore mFields;
};

} // namespace atp
