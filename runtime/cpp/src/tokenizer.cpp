#include "tokenizer.hpp"

#include <algorithm>
#include <climits>
#include <map>
#include <nlohmann/json.hpp>

#include "common.hpp"
#include "unicode.hpp"

namespace atp_impl {

using json = nlohmann::json;
namespace uni = atp_impl::unicode;

namespace {

struct AddedToken {
  std::string content;
  int32_t id;
  bool special;
};

enum class PreKind { Whitespace, WhitespaceSplit, ByteLevel, Digits };
struct PreStep {
  PreKind kind;
  bool add_prefix_space = false;  // ByteLevel
  bool use_regex = true;          // ByteLevel
  bool individual_digits = false; // Digits
};

enum class PostKind { Template, ByteLevel };
struct PostStep {
  PostKind kind;
  std::vector<std::string> single;  // "$A" for the sequence, else a special token name
};

// GPT-2 byte <-> unicode char mapping used by the ByteLevel pre-tokenizer/decoder.
struct ByteMap {
  uint32_t byte_to_cp[256];
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  ByteMap() {
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      byte_to_cp[b] = keep ? uint32_t(b) : uint32_t(256 + n++);
      cp_to_byte[byte_to_cp[b]] = uint8_t(b);
    }
  }
};
const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

using Piece = std::vector<uint32_t>;  // code points

// GPT-2 pattern: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
void split_gpt2(const Piece& s, std::vector<Piece>& out) {
  size_t n = s.size(), i = 0;
  auto other = [](uint32_t c) { return !uni::is_space(c) && !uni::is_letter(c) && !uni::is_number(c); };
  while (i < n) {
    size_t j = i;
    uint32_t c = s[i];
    if (c == '\'' && i + 1 < n) {
      uint32_t a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') j = i + 2;
      else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) j = i + 3;
    }
    if (j == i) {
      size_t k = (c == ' ' && i + 1 < n) ? i + 1 : i;
      uint32_t d = s[k];
      if (uni::is_letter(d)) { j = k; while (j < n && uni::is_letter(s[j])) ++j; }
      else if (uni::is_number(d)) { j = k; while (j < n && uni::is_number(s[j])) ++j; }
      else if (other(d)) { j = k; while (j < n && other(s[j])) ++j; }
    }
    if (j == i) {  // whitespace run: \s+(?!\S) backs off one char before a non-space, else \s+
      size_t e = i;
      while (e < n && uni::is_space(s[e])) ++e;
      if (e == n || e - i == 1) j = e;
      else j = e - 1;
      if (j == i) j = i + 1;  // unreachable for valid input; guarantees progress
    }
    out.emplace_back(s.begin() + long(i), s.begin() + long(j));
    i = j;
  }
}

bool is_word(uint32_t c) { return uni::is_letter(c) || uni::is_mark(c) || uni::is_number(c) || uni::is_connector(c); }

// Whitespace pre-tokenizer: \w+|[^\w\s]+
void split_whitespace(const Piece& s, std::vector<Piece>& out) {
  size_t n = s.size(), i = 0;
  while (i < n) {
    if (uni::is_space(s[i])) { ++i; continue; }
    bool w = is_word(s[i]);
    size_t j = i;
    while (j < n && !uni::is_space(s[j]) && is_word(s[j]) == w) ++j;
    out.emplace_back(s.begin() + long(i), s.begin() + long(j));
    i = j;
  }
}

void split_on_space(const Piece& s, std::vector<Piece>& out) {
  size_t n = s.size(), i = 0;
  while (i < n) {
    if (uni::is_space(s[i])) { ++i; continue; }
    size_t j = i;
    while (j < n && !uni::is_space(s[j])) ++j;
    out.emplace_back(s.begin() + long(i), s.begin() + long(j));
    i = j;
  }
}

void split_digits(const Piece& s, bool individual, std::vector<Piece>& out) {
  size_t n = s.size(), i = 0;
  while (i < n) {
    bool d = uni::is_number(s[i]);
    size_t j = i + 1;
    if (!(d && individual))
      while (j < n && uni::is_number(s[j]) == d) ++j;
    out.emplace_back(s.begin() + long(i), s.begin() + long(j));
    i = j;
  }
}

}  // namespace

struct Tokenizer::Impl {
  enum class Model { WordLevel, BPE } model = Model::WordLevel;
  std::unordered_map<std::string, int32_t> vocab;
  std::vector<std::string> id_to_token;
  int32_t unk_id = -1;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;  // (left, right) -> (rank, merged id)
  std::vector<AddedToken> added;                                      // sorted by content length, longest first
  std::unordered_map<int32_t, bool> added_special;                    // id -> special
  std::vector<PreStep> pre;
  std::vector<PostStep> post;
  std::map<std::string, std::vector<int32_t>> post_special;  // TemplateProcessing special_tokens
  bool decoder_byte_level = false;

  int32_t lookup(const std::string& tok) const {
    auto it = vocab.find(tok);
    return it == vocab.end() ? -1 : it->second;
  }

  void pre_tokenize(const std::string& segment, std::vector<std::string>& words) const {
    std::vector<Piece> pieces{uni::decode(segment)};
    bool byte_level = false;
    for (const PreStep& step : pre) {
      std::vector<Piece> next;
      for (Piece& p : pieces) {
        switch (step.kind) {
          case PreKind::Whitespace: split_whitespace(p, next); break;
          case PreKind::WhitespaceSplit: split_on_space(p, next); break;
          case PreKind::Digits: split_digits(p, step.individual_digits, next); break;
          case PreKind::ByteLevel:
            if (step.add_prefix_space && (p.empty() || p[0] != ' ')) p.insert(p.begin(), ' ');
            if (step.use_regex) split_gpt2(p, next);
            else next.push_back(p);
            byte_level = true;
            break;
        }
      }
      pieces.swap(next);
    }
    const ByteMap& bm = byte_map();
    for (const Piece& p : pieces) {
      if (p.empty()) continue;
      std::string utf8 = uni::encode(p, 0, p.size());
      if (!byte_level) {
        words.push_back(std::move(utf8));
        continue;
      }
      std::string mapped;
      for (unsigned char b : utf8) uni::append_utf8(mapped, bm.byte_to_cp[b]);
      words.push_back(std::move(mapped));
    }
  }

  void bpe(const std::string& word, std::vector<int32_t>& out) const {
    if (ignore_merges) {
      int32_t id = lookup(word);
      if (id >= 0) { out.push_back(id); return; }
    }
    Piece cps = uni::decode(word);
    std::vector<int32_t> sym;
    for (uint32_t c : cps) {
      std::string ch;
      uni::append_utf8(ch, c);
      int32_t id = lookup(ch);
      if (id >= 0) { sym.push_back(id); continue; }
      if (byte_fallback) {
        bool all = true;
        std::vector<int32_t> bytes;
        for (unsigned char b : ch) {
          char name[8];
          std::snprintf(name, sizeof name, "<0x%02X>", b);
          int32_t bid = lookup(name);
          if (bid < 0) { all = false; break; }
          bytes.push_back(bid);
        }
        if (all) { sym.insert(sym.end(), bytes.begin(), bytes.end()); continue; }
      }
      if (unk_id >= 0 && !(fuse_unk && !sym.empty() && sym.back() == unk_id)) sym.push_back(unk_id);
    }
    // Repeatedly merge the pair of lowest rank (leftmost on ties), as tokenizers' BPE::merge_word does.
    while (sym.size() > 1) {
      int32_t best_rank = INT32_MAX, best_id = -1;
      size_t best_pos = 0;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = merges.find((uint64_t(uint32_t(sym[i])) << 32) | uint32_t(sym[i + 1]));
        if (it != merges.end() && it->second.first < best_rank) {
          best_rank = it->second.first;
          best_id = it->second.second;
          best_pos = i;
        }
      }
      if (best_id < 0) break;
      sym[best_pos] = best_id;
      sym.erase(sym.begin() + long(best_pos) + 1);
    }
    out.insert(out.end(), sym.begin(), sym.end());
  }

  void model_encode(const std::string& word, std::vector<int32_t>& out) const {
    if (model == Model::BPE) {
      bpe(word, out);
      return;
    }
    int32_t id = lookup(word);
    if (id < 0) {
      if (unk_id < 0) fail(ATP_ERR_INPUT, "the tokenizer has no token for '" + word + "' and no unk_token");
      id = unk_id;
    }
    out.push_back(id);
  }

  // Leftmost-longest match of added tokens; ordinary text between them goes through the model.
  std::vector<int32_t> encode(const std::string& text, bool add_special) const {
    std::vector<int32_t> ids;
    size_t start = 0, i = 0;
    auto flush = [&](size_t end) {
      if (end > start) {
        std::vector<std::string> words;
        pre_tokenize(text.substr(start, end - start), words);
        for (const std::string& w : words) model_encode(w, ids);
      }
    };
    while (i < text.size()) {
      const AddedToken* hit = nullptr;
      for (const AddedToken& t : added) {  // longest first
        if (!t.content.empty() && text.compare(i, t.content.size(), t.content) == 0) { hit = &t; break; }
      }
      if (!hit) { ++i; continue; }
      flush(i);
      ids.push_back(hit->id);
      i += hit->content.size();
      start = i;
    }
    flush(text.size());
    if (!add_special) return ids;
    for (const PostStep& p : post) {
      if (p.kind != PostKind::Template) continue;
      std::vector<int32_t> out;
      for (const std::string& item : p.single) {
        if (item == "$A") { out.insert(out.end(), ids.begin(), ids.end()); continue; }
        auto it = post_special.find(item);
        if (it == post_special.end()) fail(ATP_ERR_BUNDLE, "tokenizer post_processor names an undefined special token " + item);
        out.insert(out.end(), it->second.begin(), it->second.end());
      }
      ids.swap(out);
    }
    return ids;
  }

  std::string decode_bytes(const std::vector<int32_t>& ids, bool skip_special) const {
    std::vector<std::string> tokens;
    for (int32_t id : ids) {
      if (id < 0 || size_t(id) >= id_to_token.size() || id_to_token[size_t(id)].empty()) continue;  // unknown id: skipped, as tokenizers does
      auto sp = added_special.find(id);
      if (skip_special && sp != added_special.end() && sp->second) continue;
      tokens.push_back(id_to_token[size_t(id)]);
    }
    std::string out;
    if (!decoder_byte_level) {
      for (size_t i = 0; i < tokens.size(); ++i) {
        if (i) out += ' ';
        out += tokens[i];
      }
      return out;
    }
    const ByteMap& bm = byte_map();
    for (const std::string& t : tokens) {
      std::string bytes;
      bool ok = true;
      for (uint32_t c : uni::decode(t)) {
        auto it = bm.cp_to_byte.find(c);
        if (it == bm.cp_to_byte.end()) { ok = false; break; }
        bytes += static_cast<char>(it->second);
      }
      out += ok ? bytes : t;
    }
    return out;
  }
};

namespace {

std::string jstr(const json& j, const char* key, const std::string& dflt = "") {
  auto it = j.find(key);
  return (it == j.end() || it->is_null()) ? dflt : it->get<std::string>();
}
bool jbool(const json& j, const char* key, bool dflt) {
  auto it = j.find(key);
  return (it == j.end() || it->is_null()) ? dflt : it->get<bool>();
}

void parse_pre(const json& j, std::vector<PreStep>& out) {
  if (j.is_null()) return;
  std::string type = jstr(j, "type");
  if (type == "Sequence") {
    for (const json& s : j.at("pretokenizers")) parse_pre(s, out);
  } else if (type == "Whitespace") {
    out.push_back({PreKind::Whitespace});
  } else if (type == "WhitespaceSplit") {
    out.push_back({PreKind::WhitespaceSplit});
  } else if (type == "ByteLevel") {
    PreStep s{PreKind::ByteLevel};
    s.add_prefix_space = jbool(j, "add_prefix_space", false);
    s.use_regex = jbool(j, "use_regex", true);
    out.push_back(s);
  } else if (type == "Digits") {
    PreStep s{PreKind::Digits};
    s.individual_digits = jbool(j, "individual_digits", false);
    out.push_back(s);
  } else {
    fail(ATP_ERR_UNSUPPORTED, "tokenizer pre_tokenizer '" + type + "' is not supported by the C++ runtime "
                              "(supported: Whitespace, WhitespaceSplit, ByteLevel, Digits, Sequence)");
  }
}

void parse_post(const json& j, Tokenizer::Impl& t) {
  if (j.is_null()) return;
  std::string type = jstr(j, "type");
  if (type == "Sequence") {
    for (const json& s : j.at("processors")) parse_post(s, t);
  } else if (type == "ByteLevel") {
    t.post.push_back({PostKind::ByteLevel, {}});
  } else if (type == "TemplateProcessing") {
    PostStep p{PostKind::Template, {}};
    for (const json& item : j.at("single")) {
      if (item.contains("Sequence")) p.single.push_back("$A");
      else p.single.push_back(item.at("SpecialToken").at("id").get<std::string>());
    }
    for (auto& [name, spec] : j.at("special_tokens").items()) t.post_special[name] = spec.at("ids").get<std::vector<int32_t>>();
    t.post.push_back(std::move(p));
  } else {
    fail(ATP_ERR_UNSUPPORTED, "tokenizer post_processor '" + type + "' is not supported by the C++ runtime "
                              "(supported: TemplateProcessing, ByteLevel, Sequence)");
  }
}

}  // namespace

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::from_file(const std::string& path) { return from_json_text(read_file(path), path); }

std::unique_ptr<Tokenizer> Tokenizer::from_json_text(const std::string& text, const std::string& origin) {
  auto t = std::make_unique<Impl>();
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(ATP_ERR_BUNDLE, origin + " is not valid JSON: " + e.what());
  }
  try {
    if (!j.value("normalizer", json()).is_null())
      fail(ATP_ERR_UNSUPPORTED, origin + ": tokenizer normalizer '" + jstr(j["normalizer"], "type") +
                                    "' is not supported by the C++ runtime (bundles with no normalizer are)");
    const json& m = j.at("model");
    std::string type = jstr(m, "type", "BPE");
    if (type == "BPE") t->model = Impl::Model::BPE;
    else if (type != "WordLevel")
      fail(ATP_ERR_UNSUPPORTED, origin + ": tokenizer model '" + type + "' is not supported (WordLevel, BPE are)");
    for (auto& [tok, id] : m.at("vocab").items()) t->vocab[tok] = id.get<int32_t>();
    for (const json& a : j.value("added_tokens", json::array())) {
      AddedToken at{a.at("content").get<std::string>(), a.at("id").get<int32_t>(), jbool(a, "special", false)};
      if (jbool(a, "lstrip", false) || jbool(a, "rstrip", false) || jbool(a, "single_word", false))
        fail(ATP_ERR_UNSUPPORTED, origin + ": added token '" + at.content + "' uses lstrip/rstrip/single_word, not supported");
      t->vocab.emplace(at.content, at.id);
      t->added_special[at.id] = at.special;
      t->added.push_back(at);
    }
    std::stable_sort(t->added.begin(), t->added.end(),
                     [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
    int32_t max_id = -1;
    for (auto& [tok, id] : t->vocab) max_id = std::max(max_id, id);
    t->id_to_token.assign(size_t(max_id + 1), std::string());
    for (auto& [tok, id] : t->vocab) if (id >= 0) t->id_to_token[size_t(id)] = tok;
    std::string unk = jstr(m, "unk_token");
    if (!unk.empty()) t->unk_id = t->lookup(unk);
    if (t->model == Impl::Model::BPE) {
      t->fuse_unk = jbool(m, "fuse_unk", false);
      t->byte_fallback = jbool(m, "byte_fallback", false);
      t->ignore_merges = jbool(m, "ignore_merges", false);
      if (!jstr(m, "continuing_subword_prefix").empty() || !jstr(m, "end_of_word_suffix").empty())
        fail(ATP_ERR_UNSUPPORTED, origin + ": BPE continuing_subword_prefix/end_of_word_suffix are not supported");
      int32_t rank = 0;
      for (const json& mg : m.at("merges")) {
        std::string a, b;
        if (mg.is_string()) {
          std::string s = mg.get<std::string>();
          size_t sp = s.find(' ', 1);
          if (sp == std::string::npos) fail(ATP_ERR_BUNDLE, origin + ": malformed merge '" + s + "'");
          a = s.substr(0, sp);
          b = s.substr(sp + 1);
        } else {
          a = mg.at(0).get<std::string>();
          b = mg.at(1).get<std::string>();
        }
        int32_t ia = t->lookup(a), ib = t->lookup(b), im = t->lookup(a + b);
        if (ia < 0 || ib < 0 || im < 0) fail(ATP_ERR_BUNDLE, origin + ": merge '" + a + " " + b + "' uses tokens not in the vocab");
        t->merges.emplace((uint64_t(uint32_t(ia)) << 32) | uint32_t(ib), std::make_pair(rank++, im));
      }
    }
    parse_pre(j.value("pre_tokenizer", json()), t->pre);
    parse_post(j.value("post_processor", json()), *t);
    const json dec = j.value("decoder", json());
    if (!dec.is_null()) {
      std::string dtype = jstr(dec, "type");
      if (dtype != "ByteLevel")
        fail(ATP_ERR_UNSUPPORTED, origin + ": tokenizer decoder '" + dtype + "' is not supported (none, ByteLevel are)");
      t->decoder_byte_level = true;
    }
  } catch (const json::exception& e) {
    fail(ATP_ERR_BUNDLE, origin + ": unexpected tokenizer.json structure: " + e.what());
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(t)));
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_special_tokens) const {
  return impl_->encode(text, add_special_tokens);
}

std::string Tokenizer::decode_bytes(const std::vector<int32_t>& ids, bool skip) const { return impl_->decode_bytes(ids, skip); }

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip) const {
  std::vector<uint32_t> cps = uni::decode(impl_->decode_bytes(ids, skip));
  return uni::encode(cps, 0, cps.size());
}

int32_t Tokenizer::token_to_id(const std::string& token) const { return impl_->lookup(token); }
size_t Tokenizer::vocab_size() const { return impl_->id_to_token.size(); }

}  // namespace atp_impl
