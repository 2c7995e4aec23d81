// SHA-256 (FIPS 180-4), streamed, for bundle checksums.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common.hpp"

namespace atp_impl {
namespace {

const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
    0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
    0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
    0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

struct Sha256 {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t buf[64];
  size_t buf_len = 0;
  uint64_t total = 0;

  void block(const uint8_t* p) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) w[i] = (uint32_t(p[4 * i]) << 24) | (uint32_t(p[4 * i + 1]) << 16) | (uint32_t(p[4 * i + 2]) << 8) | p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      uint32_t ch = (e & f) ^ (~e & g);
      uint32_t t1 = hh + S1 + ch + K[i] + w[i];
      uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      uint32_t mj = (a & b) ^ (a & c) ^ (b & c);
      uint32_t t2 = S0 + mj;
      hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  void update(const uint8_t* p, size_t n) {
    total += n;
    if (buf_len) {
      size_t take = std::min(n, 64 - buf_len);
      std::memcpy(buf + buf_len, p, take);
      buf_len += take; p += take; n -= take;
      if (buf_len == 64) { block(buf); buf_len = 0; }
    }
    while (n >= 64) { block(p); p += 64; n -= 64; }
    if (n) { std::memcpy(buf, p, n); buf_len = n; }
  }
  std::string hex() {
    uint64_t bits = total * 8;
    uint8_t pad = 0x80;
    update(&pad, 1);
    uint8_t zero = 0;
    while (buf_len != 56) update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(bits >> (56 - 8 * i));
    update(len, 8);
    char out[65];
    for (int i = 0; i < 8; ++i) std::snprintf(out + 8 * i, 9, "%08x", h[i]);
    return std::string(out, 64);
  }
};

}  // namespace

std::string sha256_hex(const void* data, size_t size) {
  Sha256 s;
  s.update(static_cast<const uint8_t*>(data), size);
  return s.hex();
}

std::string sha256_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(ATP_ERR_BUNDLE, "cannot open " + path + " to check its sha256");
  Sha256 s;
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    s.update(reinterpret_cast<const uint8_t*>(buf.data()), static_cast<size_t>(f.gcount()));
  }
  return s.hex();
}

std::string read_file(const std::string& path, atp_status status) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(status, "cannot read " + path + ": the file is missing or unreadable");
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

NpyMatrix load_npy_f32(const std::string& path) {
  std::string raw = read_file(path);
  if (raw.size() < 10 || raw.compare(0, 6, "\x93NUMPY") != 0) fail(ATP_ERR_BUNDLE, path + " is not a .npy file");
  int major = static_cast<uint8_t>(raw[6]);
  size_t hlen, off;
  if (major == 1) {
    hlen = static_cast<uint8_t>(raw[8]) | (static_cast<uint8_t>(raw[9]) << 8);
    off = 10;
  } else {
    if (raw.size() < 12) fail(ATP_ERR_BUNDLE, path + " is a truncated .npy file");
    hlen = static_cast<uint8_t>(raw[8]) | (static_cast<uint8_t>(raw[9]) << 8) | (static_cast<uint8_t>(raw[10]) << 16) |
           (size_t(static_cast<uint8_t>(raw[11])) << 24);
    off = 12;
  }
  if (off + hlen > raw.size()) fail(ATP_ERR_BUNDLE, path + " is a truncated .npy file");
  std::string header = raw.substr(off, hlen);
  if (header.find("'descr': '<f4'") == std::string::npos) fail(ATP_ERR_BUNDLE, path + ": embedding table must be float32 little-endian ('<f4')");
  if (header.find("'fortran_order': False") == std::string::npos) fail(ATP_ERR_BUNDLE, path + ": embedding table must be C-ordered");
  size_t sp = header.find("'shape': (");
  if (sp == std::string::npos) fail(ATP_ERR_BUNDLE, path + ": .npy header has no shape");
  long long r = 0, c = 0;
  if (std::sscanf(header.c_str() + sp + 10, "%lld, %lld", &r, &c) != 2 || r <= 0 || c <= 0)
    fail(ATP_ERR_BUNDLE, path + ": embedding table must be 2-D");
  NpyMatrix m;
  m.rows = r;
  m.cols = c;
  size_t bytes = size_t(r) * size_t(c) * 4;
  if (off + hlen + bytes != raw.size()) fail(ATP_ERR_BUNDLE, path + ": .npy data size does not match its shape");
  m.data.resize(size_t(r) * size_t(c));
  std::memcpy(m.data.data(), raw.data() + off + hlen, bytes);
  return m;
}

}  // namespace atp_impl
