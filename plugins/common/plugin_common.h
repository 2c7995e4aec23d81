// Shared helpers of the atp TensorRT plugins: logging through TensorRT's logger, field parsing,
// the noexcept/try-catch boundary.
#pragma once

#include <NvInferRuntime.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace atp
{

constexpr char const* kPluginNamespace = "atp";

// Set by TensorRT through setLoggerFinder() when it loads the library.
void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
// Reports through the logger of the engine/context calling the plugin (stderr if none was set).
void logError(std::string const& where, std::string const& what) noexcept;

// Plugin errors carry their message to the noexcept boundary.
class PluginError : public std::runtime_error
{
public:
    using std::runtime_error::runtime_error;
};

inline void check(bool ok, std::string const& what)
{
    if (!ok)
    {
        throw PluginError(what);
    }
}

// The int32 field `name` of `fc`, or `fallback` when absent; a field of another type is an error.
int32_t readInt32Field(nvinfer1::PluginFieldCollection const* fc, char const* name, int32_t fallback);

inline int64_t ceilDiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

// Owns the field storage behind a PluginFieldCollection (int32 fields of one value each). Copies are safe:
// finish() points the fields at this store's own values.
struct FieldStore
{
    std::vector<nvinfer1::PluginField> fields;
    std::vector<int32_t> ints;
    nvinfer1::PluginFieldCollection collection{};

    void addInt32(char const* name, int32_t value)
    {
        ints.push_back(value);
        fields.emplace_back(name, nullptr, nvinfer1::PluginFieldType::kINT32, 1);
    }

    nvinfer1::PluginFieldCollection const* finish()
    {
        for (std::size_t i = 0; i < fields.size(); ++i)
        {
            fields[i].data = &ints[i];
        }
        collection.nbFields = static_cast<int32_t>(fields.size());
        collection.fields = fields.empty() ? nullptr : fields.data();
        return &collection;
    }
};

} // namespace atp

// Entry points of TensorRT methods: exceptions become a logged error and an error status.
#define ATP_TRY try
#define ATP_CATCH(where, status)                                                                                        \
    catch (std::exception const& e)                                                                                    \
    {                                                                                                                  \
        atp::logError(where, e.what());                                                                                \
        return status;                                                                                                 \
    }                                                                                                                  \
    catch (...)                                                                                                        \
    {                                                                                                                  \
        atp::logError(where, "unknown exception");                                                                     \
        return status;                                                                                                 \
    }
