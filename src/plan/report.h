// JSON forms of predictions and plans, shared by the CLI (--json) and the server's API.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
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

// Why the first replica's main worker was chosen over the best other main with the same GPUs:
// "with the same GPUs, main B is predicted X tokens/s against Y (Z% faster with A); its
// bottleneck: ..."; "" when no other main could take those GPUs.
std::string why_main(const Plan& p);

// feasible, reason, layout, prediction, commands, alternatives[], rejected[], replicas[], notes[],
// why_main.
nlohmann::json plan_json(const Plan& p, const cluster::Cluster& cluster);

}  // namespace ggfleet::plan
