#include "plan/plan.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "plan/eval.h"
#include "plan/explain.h"
#include "plan/filter.h"
#include "plan/search.h"

namespace ggfleet::plan {
namespace {

// Picks the winner: the best generation speed, then within the tie tolerance the policy
// (spread: lowest load; binpack: highest), fewer GPUs, faster prompts, the main's name.
const Eval* pick(const std::vector<const Eval*>& evals, const Request& r) {
  if (evals.empty()) return nullptr;
  double best_tg = 0;
  for (const Eval* e : evals) best_tg = std::max(best_tg, e->tg);
  const Eval* winner = nullptr;
  for (const Eval* e : evals) {
    if (e->tg * (1.0 + r.tie_tolerance) < best_tg) continue;
    if (winner == nullptr) {
      winner = e;
      continue;
    }
    const double dl = e->load - winner->load;
    if (std::abs(dl) > 0.02) {  // a clearly different load: the policy decides
      if ((r.policy == Policy::kSpread) == (dl < 0)) winner = e;
      continue;
    }
    if (e->devs.size() != winner->devs.size()) {
      if (e->devs.size() < winner->devs.size()) winner = e;
      continue;
    }
    if (e->remote_devices != winner->remote_devices) {  // fewer rpc-servers, quicker start
      if (e->remote_devices < winner->remote_devices) winner = e;
      continue;
    }
    if (std::abs(e->tg - winner->tg) > 1e-9 * winner->tg) {
      if (e->tg > winner->tg) winner = e;
      continue;
    }
    if (std::abs(e->pp - winner->pp) > 1e-9 * winner->pp) {
      if (e->pp > winner->pp) winner = e;
      continue;
    }
    if (e->main->name < winner->main->name) winner = e;
  }
  return winner;
}

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
  if (const Eval* w = pick(ptrs, r)) {
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
