// Table of the ahead-of-time Triton cubins embedded in libatp_plugins.so.
// Generated sources (atp.plugins.aot, one per arch in ATP_CUDA_ARCHS) register their entries at load time.
#pragma once

#include <cstddef>
#include <string>

namespace atp
{

struct CubinEntry
{
    char const* key;    // variant key, e.g. "mixed_gemm/int4/prefill" (see plugins/aot.py)
    int sm;             // compute capability major*10+minor the cubin was built for
    char const* symbol; // kernel function name inside the cubin
    int numWarps;       // block = 32 * numWarps threads
    int sharedBytes;    // dynamic shared memory to request
    int blockM;         // the kernel's tile constexprs (0 where the kernel has none): grids derive from them
    int blockN;
    int blockK;
    unsigned char const* data;
    std::size_t size;
};

// Called by the generated sources; returns true so it can initialise a static.
bool registerCubins(CubinEntry const* entries, std::size_t count);

// The cubin for `key` that runs on a device of compute capability `sm`: the same major version and the
// highest minor <= the device's. Returns nullptr when none matches (the caller reports the embedded archs).
CubinEntry const* findCubin(std::string const& key, int sm);

// "87;86;89;90": the archs with embedded cubins, in registration order.
std::string embeddedArchs();

} // namespace atp
