#include "driver.h"

#include "cubins.h"

#include <dlfcn.h>

#include <map>
#include <mutex>
#include <utility>

namespace atp
{
namespace
{

struct Driver
{
    decltype(&cuCtxGetCurrent) ctxGetCurrent{};
    decltype(&cuCtxGetDevice) ctxGetDevice{};
    decltype(&cuDeviceGetAttribute) deviceGetAttribute{};
    decltype(&cuModuleLoadData) moduleLoadData{};
    decltype(&cuModuleGetFunction) moduleGetFunction{};
    decltype(&cuFuncSetAttribute) funcSetAttribute{};
    decltype(&cuLaunchKernel) launchKernel{};
    decltype(&cuGetErrorString) getErrorString{};
    std::string error;
};

template <typename T>
bool bind(void* lib, char const* name, T& fn)
{
    fn = reinterpret_cast<T>(dlsym(lib, name));
    return fn != nullptr;
}

Driver const& driver()
{
    static Driver const d = [] {
        Driver r;
        void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (lib == nullptr)
        {
            r.error = "the CUDA driver (libcuda.so.1) is not installed or not on the library path";
            return r;
        }
        bool ok = bind(lib, "cuCtxGetCurrent", r.ctxGetCurrent) && bind(lib, "cuCtxGetDevice", r.ctxGetDevice)
            && bind(lib, "cuDeviceGetAttribute", r.deviceGetAttribute) && bind(lib, "cuModuleLoadData", r.moduleLoadData)
            && bind(lib, "cuModuleGetFunction", r.moduleGetFunction) && bind(lib, "cuFuncSetAttribute", r.funcSetAttribute)
            && bind(lib, "cuLaunchKernel", r.launchKernel) && bind(lib, "cuGetErrorString", r.getErrorString);
        if (!ok)
        {
            r.error = "libcuda.so.1 lacks a driver API entry point atp needs (driver too old?)";
        }
        return r;
    }();
    return d;
}

std::string describe(Driver const& d, CUresult rc, char const* what)
{
    char const* msg = nullptr;
    if (d.getErrorString != nullptr)
    {
        d.getErrorString(rc, &msg);
    }
    return std::string(what) + " failed: " + (msg != nullptr ? msg : "CUDA error " + std::to_string(static_cast<int>(rc)));
}

} // namespace

int currentComputeCapability(std::string& error)
{
    Driver const& d = driver();
    if (!d.error.empty())
    {
        error = d.error;
        return -1;
    }
    CUdevice dev{};
    CUresult rc = d.ctxGetDevice(&dev);
    if (rc != CUDA_SUCCESS)
    {
        error = describe(d, rc, "cuCtxGetDevice");
        return -1;
    }
    int major = 0;
    int minor = 0;
    d.deviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
    d.deviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
    return major * 10 + minor;
}

CubinEntry const* resolveCubin(std::string const& key, std::string& error)
{
    int sm = currentComputeCapability(error);
    if (sm < 0)
    {
        return nullptr;
    }
    CubinEntry const* cubin = findCubin(key, sm);
    if (cubin == nullptr)
    {
        error = "no cubin of kernel " + key + " runs on this GPU (sm_" + std::to_string(sm)
            + "); libatp_plugins.so embeds sm " + embeddedArchs() + ": rebuild it with -DATP_CUDA_ARCHS=" + std::to_string(sm);
    }
    return cubin;
}

std::string launchKernel(CubinEntry const& entry, unsigned gridX, unsigned gridY, unsigned gridZ,
    std::vector<void*> const& args, CUstream stream)
{
    Driver const& d = driver();
    if (!d.error.empty())
    {
        return d.error;
    }
    CubinEntry const* cubin = &entry;
    std::string const key = entry.key;
    CUcontext ctx{};
    d.ctxGetCurrent(&ctx);
    static std::mutex mutex;
    static std::map<std::pair<CUcontext, CubinEntry const*>, CUfunction> functions;
    CUfunction fn{};
    {
        std::lock_guard<std::mutex> lock(mutex);
        auto it = functions.find({ctx, cubin});
        if (it == functions.end())
        {
            CUmodule module{};
            CUresult rc = d.moduleLoadData(&module, cubin->data);
            if (rc != CUDA_SUCCESS)
            {
                return describe(d, rc, "cuModuleLoadData");
            }
            rc = d.moduleGetFunction(&fn, module, cubin->symbol);
            if (rc != CUDA_SUCCESS)
            {
                return describe(d, rc, "cuModuleGetFunction");
            }
            if (cubin->sharedBytes > 48 * 1024)
            {
                d.funcSetAttribute(fn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, cubin->sharedBytes);
            }
            functions[{ctx, cubin}] = fn;
        }
        else
        {
            fn = it->second;
        }
    }
    // Triton kernels take two trailing scratch pointers (global and profile scratch); the AOT step
    // refuses kernels that need either, so both are null.
    std::vector<void*> params = args;
    static CUdeviceptr const nullScratch = 0;
    params.push_back(const_cast<CUdeviceptr*>(&nullScratch));
    params.push_back(const_cast<CUdeviceptr*>(&nullScratch));
    CUresult rc = d.launchKernel(fn, gridX, gridY, gridZ, 32 * cubin->numWarps, 1, 1, cubin->sharedBytes, stream,
        params.data(), nullptr);
    return rc == CUDA_SUCCESS ? std::string() : describe(d, rc, ("cuLaunchKernel(" + key + ")").c_str());
}

} // namespace atp
