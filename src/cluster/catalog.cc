#include "cluster/catalog.h"

#include <algorithm>
#include <array>
#include <cctype>

namespace ggfleet::cluster {
namespace {

// Bandwidth in GB/s, rates in T(FL)OPS, memory in GiB. `all_of`: lower-case tokens that must all
// appear in the reported name; the first matching entry wins, so specific entries come first.
struct Entry {
  const char* name;
  double bandwidth_gb_per_s;
  double fp16_tflops;
  double int8_tops;
  std::uint64_t vram_gib;
  std::array<const char*, 3> all_of;
};

constexpr Entry kEntries[] = {
    {"NVIDIA B200", 8000, 2250, 4500, 180, {"b200", nullptr, nullptr}},
    {"NVIDIA H200", 4800, 989, 1979, 141, {"h200", nullptr, nullptr}},
    {"NVIDIA H100 PCIe", 2000, 756, 1513, 80, {"h100", "pcie", nullptr}},
    {"NVIDIA H100 NVL", 3900, 835, 1671, 94, {"h100", "nvl", nullptr}},
    {"NVIDIA H100 SXM", 3350, 989, 1979, 80, {"h100", nullptr, nullptr}},
    {"NVIDIA A100 40GB", 1555, 312, 624, 40, {"a100", "40gb", nullptr}},
    {"NVIDIA A100 80GB PCIe", 1935, 312, 624, 80, {"a100", "80gb", "pcie"}},
    {"NVIDIA A100 80GB", 2039, 312, 624, 80, {"a100", nullptr, nullptr}},
    {"NVIDIA L40S", 864, 362, 733, 48, {"l40s", nullptr, nullptr}},
    {"NVIDIA L40", 864, 181, 362, 48, {"l40", nullptr, nullptr}},
    {"NVIDIA A40", 696, 150, 299, 48, {"a40", nullptr, nullptr}},
    {"NVIDIA A10G", 600, 125, 250, 24, {"a10g", nullptr, nullptr}},
    {"NVIDIA A10", 600, 125, 250, 24, {"a10", nullptr, nullptr}},
    {"NVIDIA L4", 300, 121, 242, 24, {"l4", nullptr, nullptr}},
    {"NVIDIA T4", 320, 65, 130, 16, {"t4", nullptr, nullptr}},
    {"NVIDIA GeForce RTX 5090", 1792, 209.5, 838, 32, {"rtx", "5090", nullptr}},
    {"NVIDIA GeForce RTX 4090", 1008, 165.2, 660.6, 24, {"rtx", "4090", nullptr}},
    {"NVIDIA GeForce RTX 4080", 717, 97.5, 389.9, 16, {"rtx", "4080", nullptr}},
    {"NVIDIA GeForce RTX 3090", 936, 71, 284, 24, {"rtx", "3090", nullptr}},
    {"AMD Instinct MI300X", 5300, 1307, 2615, 192, {"mi300x", nullptr, nullptr}},
    {"Apple M3 Ultra", 819, 28.4, 56.8, 512, {"m3", "ultra", nullptr}},
    {"Apple M2 Ultra", 800, 27.2, 54.4, 192, {"m2", "ultra", nullptr}},
};

GpuSpec spec_of(const Entry& e) {
  return {e.name, e.bandwidth_gb_per_s * 1e9, e.fp16_tflops * 1e12, e.int8_tops * 1e12,
          e.vram_gib << 30};
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// Whole-token match for short model numbers ("l4" must not match "l40s"; "a10" not "a100").
bool has_token(const std::string& haystack, const std::string& needle) {
  for (std::size_t at = haystack.find(needle); at != std::string::npos;
       at = haystack.find(needle, at + 1)) {
    const bool left_ok = at == 0 || !std::isalnum(static_cast<unsigned char>(haystack[at - 1]));
    const std::size_t end = at + needle.size();
    const bool right_ok =
        end == haystack.size() || !std::isalnum(static_cast<unsigned char>(haystack[end]));
    if (left_ok && right_ok) return true;
  }
  return false;
}

}  // namespace

std::optional<GpuSpec> find_gpu(std::string_view reported_name) {
  const std::string name = lower(reported_name);
  for (const Entry& e : kEntries) {
    const bool all = std::all_of(e.all_of.begin(), e.all_of.end(),
                                 [&](const char* p) { return p == nullptr || has_token(name, p); });
    if (all) return spec_of(e);
  }
  return std::nullopt;
}

const std::vector<GpuSpec>& gpu_catalog() {
  static const std::vector<GpuSpec> kSpecs = [] {
    std::vector<GpuSpec> v;
    for (const Entry& e : kEntries) v.push_back(spec_of(e));
    return v;
  }();
  return kSpecs;
}

}  // namespace ggfleet::cluster
