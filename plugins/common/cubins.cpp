#include "cubins.h"

#include <algorithm>
#include <vector>

namespace atp
{
namespace
{
std::vector<CubinEntry>& table()
{
    static std::vector<CubinEntry> entries;
    return entries;
}
} // namespace

bool registerCubins(CubinEntry const* entries, std::size_t count)
{
    table().insert(table().end(), entries, entries + count);
    return true;
}

CubinEntry const* findCubin(std::string const& key, int sm)
{
    CubinEntry const* best = nullptr;
    for (auto const& e : table())
    {
        // SASS runs on the same major with an equal or higher minor (sm_86 code runs on sm_87 and sm_89)
        if (key != e.key || e.sm / 10 != sm / 10 || e.sm > sm)
        {
            continue;
        }
        if (best == nullptr || e.sm > best->sm)
        {
            best = &e;
        }
    }
    return best;
}

std::string embeddedArchs()
{
    std::vector<int> archs;
    for (auto const& e : table())
    {
        if (std::find(archs.begin(), archs.end(), e.sm) == archs.end())
        {
            archs.push_back(e.sm);
        }
    }
    std::string out;
    for (int a : archs)
    {
        out += (out.empty() ? "" : ";") + std::to_string(a);
    }
    return out;
}

} // namespace atp
