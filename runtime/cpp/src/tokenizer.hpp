// Hugging Face tokenizer.json (tokenizers format) in C++: WordLevel and byte-level BPE models.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace atp_impl {

/// Encoder/decoder for the subset of tokenizer.json that atp bundles use:
/// normalizer none; pre-tokenizers Whitespace, WhitespaceSplit, ByteLevel (GPT-2 regex), Digits, Sequence;
/// models WordLevel and BPE (merges, unk, byte_fallback, ignore_merges); added/special tokens;
/// post-processors TemplateProcessing, ByteLevel, Sequence; decoders none (join with spaces) and ByteLevel.
/// Anything else is refused at load with ATP_ERR_UNSUPPORTED naming the component.
class Tokenizer {
 public:
  static std::unique_ptr<Tokenizer> from_json_text(const std::string& text, const std::string& origin);
  static std::unique_ptr<Tokenizer> from_file(const std::string& path);
  ~Tokenizer();

  std::vector<int32_t> encode(const std::string& text, bool add_special_tokens) const;
  /// Raw bytes of the decoded text (may end inside a UTF-8 sequence); decode() is its lossy UTF-8 form.
  std::string decode_bytes(const std::vector<int32_t>& ids, bool skip_special_tokens) const;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const;
  /// Id of a token (added or in the model vocabulary), -1 if unknown.
  int32_t token_to_id(const std::string& token) const;
  size_t vocab_size() const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace atp_impl
