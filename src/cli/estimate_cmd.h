// `ggfleet estimate`: memory per device for a layout, as a table per offload level or as JSON.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "estimate/estimate.h"
#include "estimate/experts.h"

namespace ggfleet::cli {

// gpu_layers value meaning "the largest -ngl that fits" (predict, plan).
constexpr std::int32_t kFitGpuLayers = -2;

struct EstimateRequest {
  std::string model;
  std::string backend = "cuda";       // cuda | cpu
  std::vector<std::string> gpus;      // free memory per local GPU ("48GiB")
  std::vector<std::string> rpc_gpus;  // free memory per remote GPU, listed first
  std::vector<double> tensor_split;
  std::int32_t gpu_layers = -1;
  std::int32_t gpu_layers_step = 0;  // > 0: one row per offload level
  estimate::ContextOptions context;
  std::string cache_type_k = "f16";
  std::string cache_type_v = "f16";
  std::string flash_attn = "auto";
  estimate::ExpertOverrides experts;  // --cpu-moe, --n-cpu-moe, --override-tensor
  bool json = false;
};

// Builds the layout (devices named as llama.cpp names them) or throws estimate::LayoutError.
estimate::Layout build_layout(const EstimateRequest& request);

nlohmann::json estimate_json(const estimate::Estimate& e);
std::string estimate_table(const std::vector<std::pair<std::int32_t, estimate::Estimate>>& rows);

// Runs the command; returns the process exit code. Throws on bad input.
int run_estimate(const EstimateRequest& request);

}  // namespace ggfleet::cli
