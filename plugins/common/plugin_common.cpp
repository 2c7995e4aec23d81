#include "plugin_common.h"

#include <atomic>
#include <cstdio>
#include <cstring>

namespace atp
{
namespace
{
std::atomic<nvinfer1::ILoggerFinder*> gLoggerFinder{nullptr};
}

void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    gLoggerFinder.store(finder);
}

void logError(std::string const& where, std::string const& what) noexcept
{
    try
    {
        std::string const msg = "[atp plugin] " + where + ": " + what;
        nvinfer1::ILoggerFinder* finder = gLoggerFinder.load();
        nvinfer1::ILogger* logger = finder != nullptr ? finder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(nvinfer1::ILogger::Severity::kERROR, msg.c_str());
        }
        else
        {
            std::fprintf(stderr, "%s\n", msg.c_str());
        }
    }
    catch (...)
    {
        std::fputs("[atp plugin] error while reporting an error\n", stderr);
    }
}

int32_t readInt32Field(nvinfer1::PluginFieldCollection const* fc, char const* name, int32_t fallback)
{
    if (fc == nullptr)
    {
        return fallback;
    }
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        nvinfer1::PluginField const& f = fc->fields[i];
        if (f.name == nullptr || std::strcmp(f.name, name) != 0)
        {
            continue;
        }
        check(f.length == 1 && f.data != nullptr, std::string("field ") + name + " must hold one value");
        if (f.type == nvinfer1::PluginFieldType::kINT32)
        {
            return *static_cast<int32_t const*>(f.data);
        }
        if (f.type == nvinfer1::PluginFieldType::kINT64)
        {
            return static_cast<int32_t>(*static_cast<int64_t const*>(f.data));
        }
        throw PluginError(std::string("field ") + name + " must be an integer");
    }
    return fallback;
}

} // namespace atp
