// CUDA driver API, loaded with dlopen (libcuda.so.1 exists only where a driver is installed, so the
// library links and loads without it; a launch without a driver reports a clear error).
#pragma once

#include <cuda.h>

#include <cstdint>
#include <string>
#include <vector>

namespace atp
{

struct CubinEntry;

// The embedded cubin of `key` for the current context's device, or nullptr with the reason in `error`
// (no driver, no context, or no cubin for this compute capability).
CubinEntry const* resolveCubin(std::string const& key, std::string& error);

// Launches `cubin` (block = 32 x numWarps, its shared memory). Modules are loaded once per
// (context, cubin) and kept for the life of the process. Returns "" on success, else the problem.
std::string launchKernel(CubinEntry const& cubin, unsigned gridX, unsigned gridY, unsigned gridZ,
    std::vector<void*> const& args, CUstream stream);

// Compute capability (major*10+minor) of the current context's device, or -1 with the reason in `error`.
int currentComputeCapability(std::string& error);

} // namespace atp
