// JSON forms of predictions and plans, shared by the CLI (--json) and the server's API.
#pragma once

#include <nlohmann/json.hpp>
#include <vector>

#include "plan/plan.h"

namespace ggfleet::plan {

// layout.{devices[].{name,worker,gpu,gpu_name,remote,layers,first_block,last_block,has_output,
// weights_bytes,kv_bytes,compute_bytes,vram_bytes,free_bytes,fits},gpu_layers,total_layers,
// cpu_layers,tensor_split,context_tokens,host} and prediction.{generation_tokens_per_s,
// prompt_tokens_per_s,time_to_first_token_s,generation_token_s,startup_s,rpc_load_bytes,
// bottleneck,breakdown[]}.
nlohmann::json prediction_json(const estimate::Layout& layout,
                               const std::vector<perf::DevicePlace>& places,
                               const cluster::Cluster& cluster, const estimate::Estimate& e,
                               const perf::Prediction& p);

// One candidate: prediction_json plus label and layout.main_worker.
nlohmann::json candidate_json(const Candidate& c, const cluster::Cluster& cluster);

nlohmann::json commands_json(const std::vector<Command>& commands);

// feasible, reason, layout, prediction, commands, alternatives[], rejected[], replicas[].
nlohmann::json plan_json(const Plan& p, const cluster::Cluster& cluster);

}  // namespace ggfleet::plan
