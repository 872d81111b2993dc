// `ggfleet predict`: one layout on a cluster — layers and memory per device in llama.cpp's order,
// and the predicted generation and prompt speed with the time each part takes.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli/estimate_cmd.h"
#include "cluster/cluster.h"
#include "perf/perf.h"

namespace ggfleet::cli {

struct PredictRequest {
  std::string cluster_file;
  std::string main_worker;
  std::vector<std::string> devices;  // "worker:gpu", in any order; tensor_split follows it
  EstimateRequest options;           // model, tensor_split, gpu_layers (-2 = fit), context, json
  std::uint32_t threads = 0;         // llama.cpp threads on the main (0 = its cores)
  std::uint32_t prompt_tokens = 512;
  std::uint32_t depth_tokens = 0;
};

// A placed layout: llama.cpp's device order (remote GPUs first, in the order given, then the
// main's own GPUs) and where each device lives.
struct PlacedLayout {
  estimate::Layout layout;
  std::vector<perf::DevicePlace> places;
};

// Builds the layout for `devices` ("worker:gpu") with `main` as the main worker. Free memory is
// what the cluster leaves after use and reservations. `split` (may be empty) follows `devices`.
// Throws perf::PlacementError for a malformed entry, an unknown worker or GPU, or a GPU listed
// twice.
PlacedLayout place_devices(const cluster::Cluster& cluster, const std::string& main,
                           const std::vector<std::string>& devices,
                           const std::vector<double>& split);

std::string prediction_text(const PlacedLayout& placed, const cluster::Cluster& cluster,
                            const estimate::Estimate& e, const perf::Prediction& p,
                            std::uint32_t prompt_tokens);

// Runs the command; returns the exit code. Throws on bad input (including a layout that does
// not fit: an explicit -ngl over any device's free memory, or CPU layers over the main's RAM).
int run_predict(const PredictRequest& request);

}  // namespace ggfleet::cli
