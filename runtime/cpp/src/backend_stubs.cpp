// Backends compiled out: open fails with ATP_ERR_UNSUPPORTED naming the CMake option.
#include "backend.hpp"
#include "common.hpp"

namespace atp_impl {

#ifndef ATP_WITH_ORT
std::unique_ptr<Backend> make_ort_backend(const Manifest&, const OpenOptions&) {
  fail(ATP_ERR_UNSUPPORTED, "this atp_runtime was built without the ONNX Runtime backend (configure with -DATP_WITH_ORT=ON)");
}
#endif
#ifndef ATP_WITH_TRT
std::unique_ptr<Backend> make_trt_backend(const Manifest&, const OpenOptions&) {
  fail(ATP_ERR_UNSUPPORTED, "this atp_runtime was built without the TensorRT backend (configure with -DATP_WITH_TRT=ON)");
}
#endif

}  // namespace atp_impl
