#include "plan/report.h"

#include <cstdio>

#include "estimate/experts.h"

namespace ggfleet::plan {

nlohmann::json prediction_json(const estimate::Layout& layout,
                               const std::vector<perf::DevicePlace>& places,
                               const cluster::Cluster& cluster, const estimate::Estimate& e,
                               const perf::Prediction& p) {
  nlohmann::json devices = nlohmann::json::array();
  for (std::size_t i = 0; i < e.devices.size(); ++i) {
    const estimate::DeviceUsage& d = e.devices[i];
    const perf::DevicePlace& place = places[i];
    devices.push_back({{"name", d.name},
                       {"worker", place.worker},
                       {"gpu", place.gpu},
                       {"gpu_name", cluster.find(place.worker)->gpus[place.gpu].name},
                       {"remote", layout.devices[i].remote},
                       {"layers", d.layers},
                       {"first_block", d.first_block},
                       {"last_block", d.last_block},
                       {"has_output", d.has_output},
                       {"weights_bytes", d.weights_bytes},
                       {"kv_bytes", d.kv_bytes},
                       {"compute_bytes", d.compute_bytes},
                       {"runtime_bytes", d.runtime_bytes},
                       {"vram_bytes", d.total_bytes},
                       {"free_bytes", d.free_bytes},
                       {"fits", d.fits}});
  }
  nlohmann::json parts = nlohmann::json::array();
  for (const perf::PartTime& part : p.parts) {
    nlohmann::json pj = {{"part", part.what},
                         {"worker", part.worker},
                         {"layers", part.layers},
                         {"read_bytes", part.read_bytes},
                         {"bandwidth_bytes_per_s", part.bandwidth_bytes_per_s},
                         {"generation_s", part.generation_s},
                         {"prompt_s", part.prompt_s}};
    if (!part.factor.empty()) {
      pj["factor"] = part.factor;
      pj["generation_factor"] = part.generation_factor;
      pj["prompt_factor"] = part.prompt_factor;
    }
    parts.push_back(std::move(pj));
  }
  nlohmann::json j;
  j["layout"] = {{"devices", devices},
                 {"gpu_layers", e.offloaded_layers},
                 {"total_layers", e.total_layers},
                 {"cpu_layers", e.total_layers - e.offloaded_layers},
                 {"host_expert_blocks", estimate::host_expert_blocks(layout)},
                 {"tensor_split", layout.tensor_split},
                 {"context_tokens", e.context_tokens},
                 {"host",
                  {{"weights_bytes", e.host.weights_bytes},
                   {"kv_bytes", e.host.kv_bytes},
                   {"compute_bytes", e.host.compute_bytes},
                   {"total_bytes", e.host.total_bytes}}}};
  j["prediction"] = {{"generation_tokens_per_s", p.generation_tokens_per_s},
                     {"prompt_tokens_per_s", p.prompt_tokens_per_s},
                     {"time_to_first_token_s", p.time_to_first_token_s},
                     {"generation_token_s", p.generation_token_s},
                     {"startup_s", p.startup_s},
                     {"download_s", p.download_s},
                     {"rpc_load_bytes", p.rpc_load_bytes},
                     {"bottleneck", p.bottleneck},
                     {"breakdown", parts}};
  return j;
}

nlohmann::json candidate_json(const Candidate& c, const cluster::Cluster& cluster) {
  nlohmann::json j = prediction_json(c.layout, c.places, cluster, c.estimate, c.prediction);
  j["label"] = c.label;
  j["layout"]["main_worker"] = c.main_worker;
  return j;
}

nlohmann::json commands_json(const std::vector<Command>& commands) {
  nlohmann::json out = nlohmann::json::array();
  for (const Command& c : commands) {
    out.push_back({{"worker", c.worker},
                   {"role", c.role},
                   {"env", c.env},
                   {"argv", c.argv},
                   {"line", c.line()}});
  }
  return out;
}

std::string why_main(const Plan& p) {
  if (p.replicas.empty()) return "";
  const Candidate& c = p.replicas[0].chosen;
  for (const Candidate& a : p.alternatives) {
    if (a.main_worker == c.main_worker || a.label.find("same GPUs") == std::string::npos) continue;
    const double chosen = c.prediction.generation_tokens_per_s;
    const double other = a.prediction.generation_tokens_per_s;
    char numbers[160];
    std::snprintf(numbers, sizeof numbers, "%.2f tokens/s against %.2f (%.0f%% faster with ", other,
                  chosen, other > 0 ? 100.0 * (chosen / other - 1) : 0.0);
    return "with the same GPUs, main " + a.main_worker + " is predicted " + numbers +
           c.main_worker + "); its bottleneck: " + a.prediction.bottleneck;
  }
  return "";
}

nlohmann::json plan_json(const Plan& p, const cluster::Cluster& cluster) {
  nlohmann::json j;
  j["feasible"] = p.feasible;
  if (!p.reason.empty()) j["reason"] = p.reason;
  j["layouts_evaluated"] = p.layouts_evaluated;
  j["mains_evaluated"] = p.mains_evaluated;
  nlohmann::json replicas = nlohmann::json::array();
  for (const Replica& r : p.replicas) {
    nlohmann::json rj = candidate_json(r.chosen, cluster);
    rj["commands"] = commands_json(r.commands);
    replicas.push_back(rj);
  }
  j["replicas"] = replicas;
  if (!p.replicas.empty()) {
    const nlohmann::json first = replicas[0];
    j["layout"] = first["layout"];
    j["prediction"] = first["prediction"];
    j["commands"] = first["commands"];
  }
  nlohmann::json alts = nlohmann::json::array();
  for (const Candidate& c : p.alternatives) alts.push_back(candidate_json(c, cluster));
  j["alternatives"] = alts;
  nlohmann::json rejected = nlohmann::json::array();
  for (const Rejection& r : p.rejected)
    rejected.push_back({{"worker", r.worker}, {"reason", r.reason}});
  j["rejected"] = rejected;
  j["notes"] = p.notes;
  j["why_main"] = why_main(p);
  return j;
}

}  // namespace ggfleet::plan
