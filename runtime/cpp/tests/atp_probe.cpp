// Test helper for tests/cpp/test_cpp_runtime.py (Python vs C++ parity):
//   atp_probe tokenize TOKENIZER_JSON INPUT   INPUT: one hex-encoded UTF-8 text per line; prints one line per text:
//                                             ids (no special) | ids (with special) | hex of decode(ids, skip special)
//   atp_probe preprocess BUNDLE OUTDIR IMG... writes each image's preprocessed float32 [3, H, W] tensor to
//                                             OUTDIR/<index>.f32
#include <atp/runtime.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

static std::string unhex(const std::string& h) {
  std::string s;
  for (size_t i = 0; i + 1 < h.size(); i += 2) s += char(std::stoi(h.substr(i, 2), nullptr, 16));
  return s;
}
static std::string hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string h;
  for (unsigned char c : s) {
    h += d[c >> 4];
    h += d[c & 15];
  }
  return h;
}
static std::string join(const std::vector<int32_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? " " : "") + std::to_string(v[i]);
  return s;
}

int main(int argc, char** argv) {
  try {
    std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "tokenize" && argc == 4) {
      atp::Tokenizer tok(argv[2]);
      std::ifstream in(argv[3]);
      std::string line;
      while (std::getline(in, line)) {
        std::string text = unhex(line);
        auto plain = tok.encode(text, false);
        auto special = tok.encode(text, true);
        std::cout << join(plain) << "|" << join(special) << "|" << hex(tok.decode(special, true)) << "\n";
      }
      return 0;
    }
    if (cmd == "preprocess" && argc >= 5) {
      atp::OpenOptions o;
      o.verify = false;
      atp::Bundle b(argv[2], o);
      for (int i = 4; i < argc; ++i) {
        std::vector<float> px = b.preprocess_file(argv[i]);
        std::string out = std::string(argv[3]) + "/" + std::to_string(i - 4) + ".f32";
        std::ofstream(out, std::ios::binary).write(reinterpret_cast<const char*>(px.data()), std::streamsize(px.size() * 4));
      }
      return 0;
    }
    std::fprintf(stderr, "usage: atp_probe tokenize TOKENIZER_JSON INPUT | preprocess BUNDLE OUTDIR IMG...\n");
    return 2;
  } catch (const atp::Error& e) {
    std::fprintf(stderr, "atp_probe: %s\n", e.what());
    return 1;
  }
}
