#include "unicode.hpp"

#include <algorithm>

namespace atp_impl::unicode {
namespace {

struct CpRange {
  uint32_t lo, hi;
};
#include "unicode_data.inc"

template <size_t N>
bool in_table(const CpRange (&table)[N], uint32_t cp) {
  const CpRange* end = table + N;
  const CpRange* it = std::upper_bound(table, end, cp, [](uint32_t v, const CpRange& r) { return v < r.lo; });
  return it != table && cp <= (it - 1)->hi;
}

}  // namespace

bool is_letter(uint32_t cp) { return in_table(kLetter, cp); }
bool is_number(uint32_t cp) { return in_table(kNumber, cp); }
bool is_mark(uint32_t cp) { return in_table(kMark, cp); }
bool is_connector(uint32_t cp) { return in_table(kConnector, cp); }

bool is_space(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::vector<uint32_t> decode(const std::string& text) {
  // Invalid input: one U+FFFD per maximal subpart of an ill-formed sequence, as Rust's String::from_utf8_lossy
  // (what tokenizers' decode returns) and Python's errors="replace" do.
  std::vector<uint32_t> out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    if (c < 0x80) { out.push_back(c); ++i; continue; }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    uint32_t cp;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else { out.push_back(0xFFFD); ++i; continue; }
    size_t k = 1;
    for (; k < len && i + k < n; ++k) {
      unsigned char b = s[i + k];
      if (k == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80) break;
      cp = (cp << 6) | (b & 0x3F);
    }
    if (k < len) { out.push_back(0xFFFD); i += k; continue; }
    out.push_back(cp);
    i += len;
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string encode(const std::vector<uint32_t>& cps, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end; ++i) append_utf8(out, cps[i]);
  return out;
}

size_t complete_utf8_prefix(const std::string& s) {
  size_t n = s.size();
  // walk back over at most 3 continuation bytes to the last lead byte
  size_t i = n;
  int back = 0;
  while (i > 0 && back < 4) {
    unsigned char c = static_cast<unsigned char>(s[i - 1]);
    if ((c & 0xC0) != 0x80) {
      size_t need = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
      return (n - (i - 1) >= need) ? n : i - 1;
    }
    --i;
    ++back;
  }
  return n;
}

}  // namespace atp_impl::unicode
