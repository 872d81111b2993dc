#include "plan/plan.h"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "plan/eval.h"
#include "plan/explain.h"
#include "plan/filter.h"
#include "plan/score.h"
#include "plan/search.h"

namespace ggfleet::plan {
namespace {

// One replica: what the search found and the layout the score picked, or why nothing fits.
struct OneReplica {
  std::optional<Eval> chosen;
  SearchResult found;
  std::string why_not;
};

OneReplica plan_one(Search& s, const Filter& filter, const Request& r) {
  OneReplica out;
  if (!r.gpus.empty()) {
    out.why_not = filter.requested_gpus_drop();
    if (!out.why_not.empty()) return out;
  }
  out.found = search_layouts(s, r);
  std::vector<const Eval*> ptrs;
  ptrs.reserve(out.found.all.size());
  for (const Eval& e : out.found.all) ptrs.push_back(&e);
  if (const Eval* w = pick_layout(ptrs, r)) {
    out.chosen = *w;
    return out;
  }
  out.why_not = why_nothing_fits(s, filter, r);
  return out;
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

Plan make_plan(const estimate::ModelMemory& m, const cluster::Cluster& cl, const Request& r,
               const perf::Constants& c) {
  validate_request(m, cl, r);
  Plan plan;
  cluster::Cluster state = cl;
  for (std::uint32_t i = 0; i < r.replicas; ++i) {
    const Filter filter(state, r);
    Search s(m, state, r, c, filter);
    OneReplica one = plan_one(s, filter, r);
    plan.layouts_evaluated += one.found.layouts;
    plan.mains_evaluated += one.found.mains;
    if (!one.chosen) {
      plan.reason = i == 0 ? one.why_not
                           : "placed " + std::to_string(i) + " of " + std::to_string(r.replicas) +
                                 " replicas; then " + one.why_not;
      break;
    }
    Replica rep;
    rep.chosen = candidate_of(*one.chosen, "plan", state, m, r, c);
    rep.launch = launch_for(rep.chosen, state, r);
    rep.commands = commands(rep.launch);
    if (i == 0 && r.explain) {
      plan.alternatives = alternatives(*one.chosen, one.found, s, state, m, r, c);
      plan.rejected = rejections(*one.chosen, one.found, filter, state, r);
    }
    plan.replicas.push_back(std::move(rep));
    state = with_claims(state, plan.replicas.back().chosen, "replica-" + std::to_string(i));
  }
  plan.feasible = plan.replicas.size() == r.replicas;
  return plan;
}

}  // namespace ggfleet::plan
