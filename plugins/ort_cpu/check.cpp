// Stand-alone check of the kernels without ONNX Runtime (used to test the Arm path under qemu-aarch64, and any
// path on a machine without ORT headers): check DIR ISA M N K BITS BLOCK reads DIR/a.bin (float [M, K]), DIR/b.bin
// (MatMulNBits' B), DIR/s.bin (float scales [N * ceil(K / BLOCK)]) and writes DIR/y.bin (float [M, N]); prints
// the ISA path it ran. Exit 2 on bad input, 3 when this build lacks the ISA path.
#include <cstdio>
#include <string>
#include <vector>

#include "dispatch.h"

using namespace atp_cpu;

namespace {
bool read(const std::string& path, void* dst, size_t bytes) {
  FILE* f = std::fopen(path.c_str(), "rb");
  const size_t got = f ? std::fread(dst, 1, bytes, f) : 0;
  if (f) std::fclose(f);
  if (got != bytes) std::fprintf(stderr, "error: %s: expected %zu bytes, read %zu\n", path.c_str(), bytes, got);
  return got == bytes;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s DIR ISA M N K BITS BLOCK\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1], want = argv[2];
  const int64_t m = std::stoll(argv[3]), n = std::stoll(argv[4]), k = std::stoll(argv[5]), bs = std::stoll(argv[7]);
  const int bits = std::stoi(argv[6]);
  setenv("ATP_ORT_CPU_ISA", want.c_str(), 1);
  const Isa isa = detect_isa();
  if (want != isa_name(isa)) {
    std::fprintf(stderr, "this build / CPU has no %s path (best: %s)\n", want.c_str(), isa_name(isa));
    return 3;
  }
  Problem p = make_problem(m, n, k, bs, bits);
  std::vector<float> a(size_t(m * k)), s(size_t(n * p.nblk)), y(size_t(m * n)), sx(size_t(m * p.nblk)), corr(size_t(m * p.nblk));
  std::vector<uint8_t> b(size_t(n) * p.stride);
  std::vector<int8_t> xq(size_t(m * p.kp) + kChunk);
  std::vector<int32_t> ncx(size_t(m * p.units * 16));
  if (!read(dir + "/a.bin", a.data(), a.size() * 4) || !read(dir + "/b.bin", b.data(), b.size()) ||
      !read(dir + "/s.bin", s.data(), s.size() * 4))
    return 2;
  p.b = b.data(), p.sw = s.data(), p.y = y.data();
  for (int64_t i = 0; i < m; ++i)
    quantize_a(a.data() + i * k, p, xq.data() + i * p.kp, sx.data() + i * p.nblk, corr.data() + i * p.nblk,
               ncx.data() + i * p.units * 16, isa);
  p.xq = xq.data(), p.sx = sx.data(), p.corr = corr.data(), p.ncx = ncx.data();
  run_rows(p, 0, n, isa);
  FILE* f = std::fopen((dir + "/y.bin").c_str(), "wb");
  if (!f || std::fwrite(y.data(), 4, y.size(), f) != y.size()) return 2;
  std::fclose(f);
  std::printf("%s\n", isa_name(isa));
  return 0;
}
