// Published peak figures of GPUs by the names NVML (or ROCm, or Metal) reports, so a cluster
// file can name a GPU without numbers. Figures are the vendors' dense (no sparsity) peaks; the
// speed model applies measured efficiency factors to them.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ggfleet::cluster {

struct GpuSpec {
  std::string name;                     // canonical, e.g. "NVIDIA H100 SXM"
  double memory_bandwidth_bytes_per_s;  // HBM/GDDR peak
  double fp16_flops;                    // dense tensor FP16 with FP32 accumulate where stated
  double int8_ops;                      // dense tensor INT8
  std::uint64_t vram_bytes;             // largest common variant
};

// The catalog entry for a reported name ("NVIDIA L40S", "NVIDIA H100 80GB HBM3",
// "NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 4090", "AMD Instinct MI300X", "Apple M2 Ultra"),
// matched case-insensitively; nullopt when no entry matches.
std::optional<GpuSpec> find_gpu(std::string_view reported_name);

// Every entry, for listing.
const std::vector<GpuSpec>& gpu_catalog();

}  // namespace ggfleet::cluster
