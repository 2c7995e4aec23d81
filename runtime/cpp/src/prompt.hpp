// The prompt splice (mirror of atp/runtime/prompt.py): where an image's visual tokens go in the tokenized prompt.
// plan() turns prompt ids into segments (text ids, image slots) per the bundle's token layout; splice() fills them
// from the embedding table and the vision graph's kept tokens. Tested against the Python module (tests/cpp).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace atp_impl {

/// manifest "token_layout" (format version 2; version 1 bundles imply one image and no wrapper tokens).
struct TokenLayout {
  std::string placeholder;
  int32_t placeholder_id = -1;
  int images = 1, tiles = 1, tokens_per_tile = 0;
  std::vector<int32_t> prefix_ids, suffix_ids;
  std::string kept_policy = "global_topk_ascending";
  std::string kind = "fixed";  // or "anyres" (LLaVA-NeXT: base view + tiles, newline rows)
  std::string newline;         // bundle file of the [1, D] newline embedding (anyres)
  std::map<std::string, std::vector<std::vector<int32_t>>> markers;  // tiled: "RxC" -> marker runs (views + 1)
};

struct Segment {
  std::vector<int32_t> ids;  // text token ids (empty for an image slot)
  int image = -1;            // image index, or -1 for text
  bool is_image() const { return image >= 0; }
};

/// Segments of the spliced sequence; ATP_ERR_INPUT "<what> must contain the image placeholder ..." unless the prompt
/// holds exactly layout.images placeholders.
std::vector<Segment> plan(const std::vector<int32_t>& ids, const TokenLayout& layout, const std::string& what);

/// Index in the spliced sequence where the first image slot begins (its first visual token).
int64_t image_start(const std::vector<Segment>& segments);

/// Length of the spliced sequence with kept[i] visual tokens for image i.
int64_t spliced_length(const std::vector<Segment>& segments, const std::vector<int64_t>& kept);

/// Row-major [L, D] embeddings: text rows from the table (row(id) -> D floats), image slots from images[i] ([K_i, D]).
template <class Table>
std::vector<float> splice(const std::vector<Segment>& segments, const std::vector<const std::vector<float>*>& images,
                          const Table& table, size_t dim) {
  std::vector<float> out;
  for (const Segment& s : segments) {
    if (s.is_image()) {
      const std::vector<float>& v = *images[size_t(s.image)];
      out.insert(out.end(), v.begin(), v.end());
    } else {
      for (int32_t id : s.ids) out.insert(out.end(), table.row(id), table.row(id) + dim);
    }
  }
  return out;
}

}  // namespace atp_impl
