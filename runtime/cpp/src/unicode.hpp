// UTF-8 and the Unicode character classes the pre-tokenizers need.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace atp_impl::unicode {

/// Code points of UTF-8 text; invalid bytes become U+FFFD (as Rust's from_utf8_lossy does per bad sequence).
std::vector<uint32_t> decode(const std::string& text);
void append_utf8(std::string& out, uint32_t cp);
std::string encode(const std::vector<uint32_t>& cps, size_t begin, size_t end);

bool is_letter(uint32_t cp);
bool is_number(uint32_t cp);
bool is_mark(uint32_t cp);
bool is_connector(uint32_t cp);
/// Unicode White_Space (what \s matches in the tokenizers' regex engine).
bool is_space(uint32_t cp);

/// Length of the longest prefix of `s` that is a complete UTF-8 sequence run (for streaming text pieces).
size_t complete_utf8_prefix(const std::string& s);

}  // namespace atp_impl::unicode
