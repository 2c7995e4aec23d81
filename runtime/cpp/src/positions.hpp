// The decoder's position rule (mirror of atp/runtime/positions.py). "1d": the spliced prompt takes positions
// 0..L-1 whatever K is, each generated token the next one.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace atp_impl {

/// position_ids for n new tokens after `past` cached ones, scheme "1d" (the manifest's positions.scheme).
inline void positions_1d(int64_t past, int64_t n, std::vector<int64_t>& out) {
  out.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) out[size_t(i)] = past + i;
}

}  // namespace atp_impl
