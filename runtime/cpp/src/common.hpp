// Internal helpers shared by the runtime's translation units (not installed).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "atp/atp_runtime.h"

namespace atp_impl {

/// The one exception type used inside the library; the C ABI turns it into a status + atp_last_error().
class Error : public std::runtime_error {
 public:
  Error(atp_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
  atp_status status() const noexcept { return status_; }

 private:
  atp_status status_;
};

[[noreturn]] inline void fail(atp_status status, const std::string& message) { throw Error(status, message); }

/// Whole file as bytes; Error(ATP_ERR_BUNDLE or `status`) naming the path when it cannot be read.
std::string read_file(const std::string& path, atp_status status = ATP_ERR_BUNDLE);

/// Lowercase hex sha256 of a file, streamed.
std::string sha256_file(const std::string& path);
/// Lowercase hex sha256 of a buffer.
std::string sha256_hex(const void* data, size_t size);

/// A float32 2-D table loaded from a .npy file (C order, little-endian '<f4').
struct NpyMatrix {
  int64_t rows = 0, cols = 0;
  std::vector<float> data;
  const float* row(int64_t r) const { return data.data() + r * cols; }
};
NpyMatrix load_npy_f32(const std::string& path);

}  // namespace atp_impl
