#include "prompt.hpp"

#include <algorithm>

#include "common.hpp"

namespace atp_impl {

std::vector<Segment> plan(const std::vector<int32_t>& ids, const TokenLayout& layout, const std::string& what) {
  const long count = std::count(ids.begin(), ids.end(), layout.placeholder_id);
  if (count != layout.images) {
    std::string want = layout.images == 1 ? "exactly once" : std::to_string(layout.images) + " times";
    fail(ATP_ERR_INPUT, what + " must contain the image placeholder '" + layout.placeholder + "' " + want + " (found " +
                            std::to_string(count) + ")");
  }
  std::vector<Segment> out;
  size_t start = 0;
  int image = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] != layout.placeholder_id) continue;
    Segment text;
    text.ids.assign(ids.begin() + long(start), ids.begin() + long(i));
    text.ids.insert(text.ids.end(), layout.prefix_ids.begin(), layout.prefix_ids.end());
    if (!text.ids.empty()) out.push_back(std::move(text));
    Segment slot;
    slot.image = image++;
    out.push_back(slot);
    start = i + 1;
    if (!layout.suffix_ids.empty()) {
      Segment suffix;
      suffix.ids = layout.suffix_ids;
      out.push_back(std::move(suffix));
    }
  }
  if (start < ids.size()) {
    Segment tail;
    tail.ids.assign(ids.begin() + long(start), ids.end());
    out.push_back(std::move(tail));
  }
  return out;
}

int64_t image_start(const std::vector<Segment>& segments) {
  int64_t n = 0;
  for (const Segment& s : segments) {
    if (s.is_image()) break;
    n += int64_t(s.ids.size());
  }
  return n;
}

int64_t spliced_length(const std::vector<Segment>& segments, const std::vector<int64_t>& kept) {
  int64_t n = 0;
  for (const Segment& s : segments) n += s.is_image() ? kept[size_t(s.image)] : int64_t(s.ids.size());
  return n;
}

}  // namespace atp_impl
