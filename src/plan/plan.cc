#include "plan/plan.h"

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "plan/eval.h"
#include "plan/explain.h"
#include "plan/filter.h"
#include "plan/score.h"
#include "plan/search.h"

namespace ggfleet::plan {
namespace {

// Places replica `i` on `state`: filter, search, score, and for the first replica (when asked)
// the explanation. Appends the replica to plan.replicas and returns true, or sets plan.reason and
// returns false when nothing fits. Its filter and search are gone when it returns, before the
// caller copies the cluster for the claims.
bool place_replica(std::uint32_t i, const estimate::ModelMemory& m, const cluster::Cluster& state,
                   const Request& r, const perf::Constants& c, Plan& plan) {
  const Filter filter(state, r);
  Search s(m, state, r, c, filter);
  std::string why_not;
  if (!r.gpus.empty()) why_not = filter.requested_gpus_drop();
  SearchResult found;
  const Eval* chosen = nullptr;
  if (why_not.empty()) {
    found = search_layouts(s, r);
    std::vector<const Eval*> layouts;
    layouts.reserve(found.all.size());
    for (const Eval& e : found.all) layouts.push_back(&e);
    chosen = pick_layout(layouts, r);
    if (chosen == nullptr) why_not = why_nothing_fits(s, filter, r);
  }
  plan.layouts_evaluated += found.layouts;
  plan.mains_evaluated += found.mains;
  if (chosen == nullptr) {
    plan.reason = i == 0 ? why_not
                         : "placed " + std::to_string(i) + " of " + std::to_string(r.replicas) +
                               " replicas; then " + why_not;
    return false;
  }
  Replica rep;
  rep.chosen = candidate_of(*chosen, "plan", state, m, r, c);
  rep.launch = launch_for(rep.chosen, state, r);
  rep.commands = commands(rep.launch);
  if (i == 0 && r.explain) {
    plan.alternatives = alternatives(*chosen, found, s, state, m, r, c);
    plan.rejected = rejections(*chosen, found, filter, state, r);
    plan.notes = download_notes(*chosen, found, state, r);
    if (std::optional<std::string> note = offload_note(*chosen)) plan.notes.push_back(*note);
    if (std::optional<std::string> note = pinned_note(rep.chosen, state, m, r, c))
      plan.notes.push_back(*note);
  }
  plan.replicas.push_back(std::move(rep));
  return true;
}

}  // namespace

cluster::Cluster with_claims(const cluster::Cluster& cl, const Candidate& c,
                             const std::string& instance) {
  cluster::Cluster out = cl;
  for (std::size_t i = 0; i < c.places.size(); ++i) {
    for (cluster::Worker& w : out.workers) {
      if (w.name != c.places[i].worker) continue;
      cluster::Gpu& g = w.gpus.at(c.places[i].gpu);
      g.claimed_bytes += c.estimate.devices[i].total_bytes;
      if (c.layout.devices[i].remote) g.lent_to = instance;
    }
  }
  for (cluster::Worker& w : out.workers) {
    if (w.name == c.main_worker) w.claimed_ram_bytes += c.estimate.host.total_bytes;
  }
  return out;
}

bool holds_model(const cluster::Worker& w, const Request& r) {
  for (const std::string& f : r.model_files)
    if (!w.cached_files.count(f)) return false;
  return true;
}

double download_s(const cluster::Worker& w, const Request& r) {
  if (holds_model(w, r)) return 0;
  const double rate =
      w.download_bytes_per_s > 0 ? w.download_bytes_per_s : kDefaultDownloadBytesPerS;
  return static_cast<double>(r.model_bytes) / rate;
}

Plan make_plan(const estimate::ModelMemory& m, const cluster::Cluster& cl, const Request& r,
               const perf::Constants& c) {
  validate_request(m, cl, r);
  Plan plan;
  cluster::Cluster state = cl;
  for (std::uint32_t i = 0; i < r.replicas; ++i) {
    if (!place_replica(i, m, state, r, c, plan)) break;
    state = with_claims(state, plan.replicas.back().chosen, "replica-" + std::to_string(i));
  }
  plan.feasible = plan.replicas.size() == r.replicas;
  return plan;
}

}  // namespace ggfleet::plan
