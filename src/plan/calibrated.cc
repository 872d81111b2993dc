#include "plan/calibrated.h"

#include <cstdio>

#include "plan/eval.h"

namespace ggfleet::plan {
namespace {

std::string rate(double tokens_per_s) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.2f tokens/s", tokens_per_s);
  return buf;
}

// The prediction of `c` (planned on some cluster) on `cluster`.
double predicted_on(const estimate::ModelMemory& model, const Candidate& c,
                    const cluster::Cluster& cluster, const Request& request,
                    const perf::Constants& constants) {
  return perf::predict_rates(model, c.layout, c.estimate,
                             scenario_for(cluster, c.main_worker, c.places, request), constants)
      .first;
}

bool same_layout(const Candidate& a, const Candidate& b) {
  if (a.main_worker != b.main_worker || a.places.size() != b.places.size()) return false;
  for (std::size_t i = 0; i < a.places.size(); ++i) {
    if (a.places[i].worker != b.places[i].worker || a.places[i].gpu != b.places[i].gpu)
      return false;
  }
  return a.cpu_layers() == b.cpu_layers();
}

}  // namespace

CalibrationNote plan_calibrated(const estimate::ModelMemory& model, const cluster::Cluster& raw,
                                const perf::Corrections& corrections, const Request& request,
                                Plan& plan, const perf::Constants& constants) {
  CalibrationNote n;
  const cluster::Cluster fixed = perf::corrected(raw, corrections);
  plan = make_plan(model, fixed, request, constants);
  n.factors = perf::describe(corrections);
  if (!plan.feasible || plan.replicas.empty()) return n;
  const Candidate& chosen = plan.replicas.front().chosen;
  n.corrected_tokens_per_s = chosen.prediction.generation_tokens_per_s;
  n.uncorrected_tokens_per_s = predicted_on(model, chosen, raw, request, constants);
  n.sentence = "with the learned factors: main " + chosen.main_worker + ", " +
               rate(n.corrected_tokens_per_s) + " (the speed model alone says " +
               rate(n.uncorrected_tokens_per_s) + ")";
  if (corrections.empty()) return n;
  Request one = request;
  one.replicas = 1;
  one.explain = false;
  const Plan alone = make_plan(model, raw, one, constants);
  if (alone.feasible && !alone.replicas.empty() &&
      !same_layout(alone.replicas.front().chosen, chosen)) {
    const Candidate& a = alone.replicas.front().chosen;
    n.model_alone_differs = true;
    n.model_alone_main = a.main_worker;
    n.model_alone_tokens_per_s = a.prediction.generation_tokens_per_s;
    n.model_alone_corrected_tokens_per_s = predicted_on(model, a, fixed, request, constants);
    n.sentence += "; the speed model alone would choose main " + a.main_worker + " (" +
                  std::to_string(a.places.size()) + " GPU(s), " + std::to_string(a.cpu_layers()) +
                  " CPU layer(s)) at " + rate(n.model_alone_tokens_per_s) +
                  ", which the measurements correct to " +
                  rate(n.model_alone_corrected_tokens_per_s);
  }
  return n;
}

nlohmann::json calibration_note_json(const CalibrationNote& n) {
  nlohmann::json j = {{"factors", n.factors},
                      {"generation_tokens_per_s", n.corrected_tokens_per_s},
                      {"uncorrected_generation_tokens_per_s", n.uncorrected_tokens_per_s},
                      {"explanation", n.sentence}};
  if (n.model_alone_differs) {
    j["model_alone"] = {
        {"main_worker", n.model_alone_main},
        {"generation_tokens_per_s", n.model_alone_tokens_per_s},
        {"corrected_generation_tokens_per_s", n.model_alone_corrected_tokens_per_s}};
  }
  return j;
}

}  // namespace ggfleet::plan
