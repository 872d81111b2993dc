#include "server/scheduler.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string_view>

#include "cluster/catalog.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "plan/report.h"
#include "server/api_util.h"
#include "server/auth.h"

namespace ggfleet::server {
namespace {

using nlohmann::json;

}  // namespace

cluster::Cluster ready_workers(const std::vector<store::WorkerRow>& workers) {
  cluster::Cluster c;
  for (const store::WorkerRow& row : workers) {
    if (row.status != WorkerStatus::kReady) continue;
    try {
      c.workers.push_back(cluster::worker_from_json(
          row.name, row.address, json::parse(row.labels_json), json::parse(row.resources_json)));
    } catch (const std::exception&) {
      continue;  // validated at registration; a row that no longer parses is left out
    }
  }
  return c;
}

void apply_claims(cluster::Cluster& c, const std::vector<store::ClaimRow>& claims,
                  const std::string& except_instance) {
  std::map<std::string_view, cluster::Worker*> by_name;
  for (cluster::Worker& w : c.workers) by_name[w.name] = &w;
  for (const store::ClaimRow& claim : claims) {
    if (claim.instance == except_instance) continue;
    const auto it = by_name.find(claim.worker);
    if (it == by_name.end()) continue;
    cluster::Worker& w = *it->second;
    if (claim.gpu < 0) {
      w.claimed_ram_bytes += static_cast<std::uint64_t>(claim.bytes);
    } else if (static_cast<std::size_t>(claim.gpu) < w.gpus.size()) {
      cluster::Gpu& g = w.gpus[static_cast<std::size_t>(claim.gpu)];
      g.claimed_bytes += static_cast<std::uint64_t>(claim.bytes);
      if (claim.rpc) g.lent_to = claim.instance;
    }
  }
}

cluster::Cluster live_cluster(const std::vector<store::WorkerRow>& workers,
                              const std::vector<store::ClaimRow>& claims,
                              const std::string& except_instance) {
  cluster::Cluster c = ready_workers(workers);
  apply_claims(c, claims, except_instance);
  return c;
}

Scheduler::Scheduler(store::Store& store, SchedulerConfig config)
    : store_(store), config_(config), started_ms_(store::now_ms()) {}

void replan(store::Store& store, const store::InstanceRow& instance, const std::string& reason,
            const std::string& avoid_worker) {
  json avoid = json::parse(instance.assignment_json, nullptr, false);
  avoid = avoid.is_object() ? avoid.value("avoid", json::array()) : json::array();
  if (!avoid.is_array()) avoid = json::array();
  if (!avoid_worker.empty() && std::find(avoid.begin(), avoid.end(), avoid_worker) == avoid.end())
    avoid.push_back(avoid_worker);
  store.transaction([&] {
    // Gone meanwhile (its deployment deleted or scaled down): nothing to re-plan, and writing it
    // would bring it back.
    if (!store.hold_deployment(instance.deployment) || !store.instance(instance.id)) return;
    store::InstanceRow p = instance;
    p.state = InstanceState::kPending;
    p.main_worker.clear();
    p.assignment_json = avoid.empty() ? "{}" : json{{"avoid", avoid}}.dump();
    p.reason = reason;
    p.updated_ms = store::now_ms();
    store.put_instance(p);
    store.set_claims(instance.id, {});
    store.bump_assignment_version();
    store.event("instance.replanned", instance.id, reason);
  });
}

std::shared_ptr<const estimate::ModelMemory> Scheduler::model(const std::string& path) {
  {
    std::lock_guard<std::mutex> lock(models_mu_);
    if (const auto it = models_.find(path); it != models_.end()) return it->second.memory;
  }
  model::OpenedModel opened = model::open_model_files(path);
  auto m = std::make_shared<const estimate::ModelMemory>(
      estimate::ModelMemory::from(opened.model, model::profile(opened.model)));
  std::lock_guard<std::mutex> lock(models_mu_);
  models_[path] = {m, std::move(opened.files)};
  return m;
}

std::vector<model::ModelFile> Scheduler::model_files(const std::string& path) {
  model(path);
  std::lock_guard<std::mutex> lock(models_mu_);
  return models_.at(path).files;
}

namespace {

// Lower is removed first when scaling down.
int keep_rank(const store::InstanceRow& i) {
  if (i.state == InstanceState::kPending) return 0;
  if (i.state == InstanceState::kError) return 1;
  if (i.state == InstanceState::kRunning) return 3;
  return 2;
}

bool on_worker(const store::InstanceRow& i, const std::vector<store::ClaimRow>& claims,
               const std::string& worker) {
  if (i.main_worker == worker) return true;
  return std::any_of(claims.begin(), claims.end(), [&](const store::ClaimRow& c) {
    return c.instance == i.id && c.worker == worker;
  });
}

// The fleet a placement of `instance` is planned on: the ready workers (ready_digest) and every
// other instance's claims.
std::string fleet_digest(const std::string& ready_digest,
                         const std::vector<store::ClaimRow>& claims, const std::string& instance) {
  std::string text = ready_digest;
  for (const store::ClaimRow& c : claims) {
    if (c.instance == instance) continue;
    text += '\n' + c.instance + ' ' + c.worker + ' ' + std::to_string(c.gpu) + ' ' +
            std::to_string(c.bytes) + (c.rpc ? " rpc" : "");
  }
  return sha256_hex(text);
}

}  // namespace

std::optional<std::string> Scheduler::known_infeasible(const std::string& request_key,
                                                       const std::string& fleet_key) {
  std::lock_guard<std::mutex> lock(infeasible_mu_);
  const auto it = infeasible_.find(request_key);
  if (it == infeasible_.end() || it->second.first != fleet_key) return std::nullopt;
  return it->second.second;
}

void Scheduler::remember_infeasible(const std::string& request_key, const std::string& fleet_key,
                                    const std::string& reason) {
  std::lock_guard<std::mutex> lock(infeasible_mu_);
  if (infeasible_.size() >= kMaxRemembered) infeasible_.clear();
  infeasible_[request_key] = {fleet_key, reason};
}

void Scheduler::place(const store::InstanceRow& instance, const store::DeploymentRow& d,
                      const cluster::Cluster& ready, const std::string& ready_digest,
                      ReconcileStats& stats) {
  std::string reason;
  try {
    // Workers where this instance kept crashing are avoided while anything else fits.
    json avoid = json::parse(instance.assignment_json, nullptr, false);
    avoid = avoid.is_object() ? avoid.value("avoid", json::array()) : json::array();
    // What decides the plan: the request, the ready workers and the claims of the others.
    const std::vector<store::ClaimRow> claims_now = store_.claims();
    const std::string request_key = d.model + '\n' + d.options_json + '\n' + avoid.dump();
    const std::string fleet_key = fleet_digest(ready_digest, claims_now, instance.id);
    if (const std::optional<std::string> known = known_infeasible(request_key, fleet_key)) {
      // The same request did not fit this same fleet a moment ago (another replica, or this one
      // in an earlier pass): planning it again would answer the same.
      ++stats.remembered;
      reason = *known;
    } else {
      plan::Request request = plan::request_from_options(json::parse(d.options_json), d.model);
      const std::shared_ptr<const estimate::ModelMemory> m = model(d.model);
      plan::add_download(request, model_files(d.model));
      const auto t0 = std::chrono::steady_clock::now();
      cluster::Cluster fleet = ready;  // the claims as they are now, earlier placements included
      apply_claims(fleet, claims_now, instance.id);
      plan::Request one = request;
      one.replicas = 1;
      one.explain = false;  // an assignment keeps the chosen layout only
      one.server_port = static_cast<std::uint16_t>(config_.instance_port_base);
      one.rpc_port_base = static_cast<std::uint16_t>(config_.rpc_port_base);
      plan::Plan p;
      std::int64_t n = 0;  // the placement's number
      if (avoid.is_array() && !avoid.empty()) {
        cluster::Cluster others = fleet;
        std::erase_if(others.workers, [&](const cluster::Worker& w) {
          return std::find(avoid.begin(), avoid.end(), w.name) != avoid.end();
        });
        p = plan::make_plan(*m, others, one);
        if (p.feasible) fleet = std::move(others);
      }
      if (!p.feasible) p = plan::make_plan(*m, fleet, one);
      if (p.feasible) {
        // Fresh ports for every placement (a re-placed instance must not wait for the old sockets'
        // TIME_WAIT on a shared host); unique among the last 500 placements. The counter moves only
        // for placements that are made.
        n = std::stoll(store_.next_id("placements"));
        one.server_port = static_cast<std::uint16_t>(config_.instance_port_base + n % 500);
        one.rpc_port_base = static_cast<std::uint16_t>(config_.rpc_port_base + (n % 500) * 16);
        plan::Replica& first = p.replicas.front();
        first.launch = plan::launch_for(first.chosen, fleet, one);
        first.launch.server.alias = d.name;  // responses name the deployment, not the file
        first.commands = plan::commands(first.launch);
      }
      stats.planning_s +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (p.feasible) {
        const plan::Replica& rep = p.replicas.front();
        store::InstanceRow placed = instance;
        placed.state = InstanceState::kAssigned;
        placed.main_worker = rep.chosen.main_worker;
        placed.reason.clear();
        placed.predicted_tokens_per_s = rep.chosen.prediction.generation_tokens_per_s;
        placed.updated_ms = store::now_ms();
        json assignment;
        assignment["plan"] = plan::candidate_json(rep.chosen, fleet);
        assignment["launch"] = plan::to_json(rep.launch);
        assignment["commands"] = plan::commands_json(rep.commands);  // for people: the shell lines
        assignment["model"] = d.model;
        if (const std::vector<model::ModelFile> files = model_files(d.model); !files.empty())
          assignment["model_files"] = model::files_json(files);  // the main downloads them
        assignment["server_port"] = one.server_port;
        assignment["rpc_port_base"] = one.rpc_port_base;
        assignment["slots"] = one.context.parallel;   // the proxy forwards this many at once
        assignment["placement"] = std::to_string(n);  // measurements belong to one placement
        // The prediction split by what learned factors scale: what its measurements teach.
        assignment["basis"] =
            perf::basis_json(perf::basis_of(rep.chosen.prediction, one.prompt_tokens));
        // llama-server's own key, fresh per placement: only the proxy (and the main worker, which
        // starts it) know it, so the instance's port serves nobody who bypasses ggfleet's keys.
        assignment["instance_key"] = new_secret("ggi_");
        if (avoid.is_array() && !avoid.empty()) assignment["avoid"] = avoid;
        placed.assignment_json = dump(assignment);
        std::vector<store::ClaimRow> claims;
        for (std::size_t k = 0; k < rep.chosen.places.size(); ++k) {
          claims.push_back({instance.id, rep.chosen.places[k].worker,
                            static_cast<std::int64_t>(rep.chosen.places[k].gpu),
                            static_cast<std::int64_t>(rep.chosen.estimate.devices[k].total_bytes),
                            rep.chosen.layout.devices[k].remote});
        }
        claims.push_back({instance.id, rep.chosen.main_worker, -1,
                          static_cast<std::int64_t>(rep.chosen.estimate.host.total_bytes), false});
        // The assignment and its claims in one transaction, checked against the claims as they are
        // now (nothing else writes claims, but the deployment may have gone meanwhile).
        bool written = false;
        write([&] {
          if (!store_.hold_deployment(d.name) || !store_.instance(instance.id)) return;
          store_.put_instance(placed);
          store_.set_claims(instance.id, claims);
          store_.bump_assignment_version();
          char msg[256];
          std::snprintf(msg, sizeof msg,
                        "assigned: main %s, %zu GPU(s), %u CPU layer(s), predicted %.2f tokens/s",
                        rep.chosen.main_worker.c_str(), rep.chosen.places.size(),
                        rep.chosen.cpu_layers(), rep.chosen.prediction.generation_tokens_per_s);
          store_.event("instance.assigned", instance.id, msg);
          written = true;
        });
        ++(written ? stats.placed : stats.vanished);
        return;
      }
      reason = p.reason;
      remember_infeasible(request_key, fleet_key, reason);
    }
  } catch (const std::exception& e) {
    reason = std::string("cannot plan: ") + e.what();
  }
  ++stats.pending;
  if (reason != instance.reason) {
    store::InstanceRow pending = instance;
    pending.reason = reason;
    pending.updated_ms = store::now_ms();
    write([&] {
      if (!store_.hold_deployment(d.name) || !store_.instance(instance.id)) return;
      store_.put_instance(pending);
      store_.event("instance.pending", instance.id, reason);
    });
  }
}

void Scheduler::set_lease(std::optional<store::Lease> lease) {
  if (lease && (!lease_ || lease_->token != lease->token)) started_ms_ = store::now_ms();
  lease_ = std::move(lease);
}

void Scheduler::write(const std::function<void()>& fn) {
  store_.transaction([&] {
    if (lease_) store_.check_lease(*lease_);
    fn();
  });
}

ReconcileStats Scheduler::reconcile() {
  ReconcileStats stats;
  const std::int64_t now = store::now_ms();
  // 1. Workers that stopped heartbeating; their instances after the grace period.
  std::vector<store::WorkerRow> workers = store_.workers();
  std::set<std::string> gone;
  for (store::WorkerRow& w : workers) {
    // Silence counts from this scheduler's start at the earliest: while the server was down, no
    // worker could heartbeat.
    const std::int64_t silent = now - std::max(w.last_heartbeat_ms, started_ms_);
    if (w.status == WorkerStatus::kReady && silent > config_.heartbeat_timeout_ms) {
      write([&] {
        store_.set_worker_status(w.name, WorkerStatus::kUnreachable);
        store_.event("worker.unreachable", w.name,
                     "no heartbeat for " + std::to_string(silent / 1000) + " s");
      });
      w.status = WorkerStatus::kUnreachable;
    }
    if (w.status == WorkerStatus::kUnreachable &&
        silent > config_.heartbeat_timeout_ms + config_.replan_grace_ms)
      gone.insert(w.name);
  }
  std::set<std::string> known;
  for (const store::WorkerRow& w : workers) known.insert(w.name);
  const std::vector<store::ClaimRow> claims = store_.claims();
  for (const store::InstanceRow& i : store_.instances()) {
    if (i.state == InstanceState::kPending) continue;
    std::string lost;
    for (const std::string& w : gone) {
      if (on_worker(i, claims, w)) lost = w;
    }
    if (lost.empty() && !i.main_worker.empty() && !known.count(i.main_worker)) lost = i.main_worker;
    for (const store::ClaimRow& c : claims) {
      if (lost.empty() && c.instance == i.id && !known.count(c.worker)) lost = c.worker;
    }
    if (lost.empty()) {
      // Placed by a ggfleet before launches were typed: its workers cannot run it; place it again.
      if (!parse_or(i.assignment_json, json::object()).contains("launch")) {
        write([&] {
          replan(store_, i, "placed by an older ggfleet (no typed launch); placing it again");
        });
        ++stats.replanned;
      }
      continue;
    }
    write([&] { replan(store_, i, "worker " + lost + " is gone; re-planning"); });
    ++stats.replanned;
  }
  // 2. Replica counts, per generation: the current one gets `replicas` instances; older ones
  // (a PATCH changed model or options) are removed as current ones run — all at once when the
  // current ones run, one per pass when a current one does not fit while old ones hold memory.
  // (All instances read once, not once per deployment: a pass over many deployments would
  // otherwise cost a round trip to the store for each.)
  const std::vector<store::DeploymentRow> all_deployments = store_.deployments();
  std::map<std::string, std::vector<store::InstanceRow>> by_deployment;
  for (store::InstanceRow& i : store_.instances())
    by_deployment[i.deployment].push_back(std::move(i));
  for (const store::DeploymentRow& d : all_deployments) {
    std::vector<store::InstanceRow> current, old;
    for (const store::InstanceRow& i : by_deployment[d.name])
      (i.generation == d.generation ? current : old).push_back(i);
    for (auto have = static_cast<std::int64_t>(current.size()); have < d.replicas; ++have) {
      store::InstanceRow i;
      i.id = d.name + "-" + store_.next_id("instances");
      i.deployment = d.name;
      i.generation = d.generation;
      i.created_ms = i.updated_ms = now;
      i.reason = "waiting for the scheduler";
      bool written = false;
      write([&] {
        if (!store_.hold_deployment(d.name)) return;
        written = true;
        store_.put_instance(i);
        store_.event("instance.created", i.id,
                     "replica of " + d.name +
                         (old.empty() ? "" : " (generation " + std::to_string(d.generation) + ")"));
      });
      ++(written ? stats.created : stats.vanished);
    }
    auto remove = [&](std::vector<store::InstanceRow>& list, std::size_t keep,
                      const std::string& why) {
      if (list.size() <= keep) return;
      std::sort(list.begin(), list.end(),
                [](const store::InstanceRow& a, const store::InstanceRow& b) {
                  if (keep_rank(a) != keep_rank(b)) return keep_rank(a) < keep_rank(b);
                  if (a.predicted_tokens_per_s != b.predicted_tokens_per_s)
                    return a.predicted_tokens_per_s < b.predicted_tokens_per_s;
                  return a.created_ms > b.created_ms;
                });
      for (std::size_t k = 0; k < list.size() - keep; ++k) {
        write([&] {
          store_.delete_instance(list[k].id);
          store_.bump_assignment_version();
          store_.event("instance.removed", list[k].id, why);
        });
        ++stats.removed;
      }
    };
    remove(current, static_cast<std::size_t>(std::max<std::int64_t>(d.replicas, 0)),
           "scaled down " + d.name + " to " + std::to_string(d.replicas));
    if (!old.empty()) {
      std::int64_t running = 0;
      bool blocked = false;  // a current instance that does not fit while old ones hold memory
      for (const store::InstanceRow& i : current) {
        running += i.state == InstanceState::kRunning;
        blocked = blocked ||
                  (i.state == InstanceState::kPending && i.reason.rfind("does not fit", 0) == 0);
      }
      std::size_t keep = static_cast<std::size_t>(std::max<std::int64_t>(0, d.replicas - running));
      if (blocked) keep = std::min(keep, old.size() - 1);
      remove(old, keep, "replaced by generation " + std::to_string(d.generation) + " of " + d.name);
    }
  }
  // 3. Place pending instances, oldest first.
  std::map<std::string, store::DeploymentRow> deployments;
  for (const store::DeploymentRow& d : store_.deployments()) deployments[d.name] = d;
  // The ready workers are read (and their resources parsed) once per pass, not per instance.
  std::optional<cluster::Cluster> ready;
  std::string ready_digest;  // what the ready workers were planned from
  for (const store::InstanceRow& i : store_.instances()) {
    if (i.state != InstanceState::kPending) continue;
    const auto it = deployments.find(i.deployment);
    if (it == deployments.end()) continue;
    if (!ready) {
      const std::vector<store::WorkerRow> rows = store_.workers();
      ready = perf::corrected(ready_workers(rows), corrections());
      for (const store::WorkerRow& w : rows) {
        if (w.status == WorkerStatus::kReady)
          ready_digest += w.name + '\n' + w.labels_json + '\n' + w.resources_json + '\n';
      }
      ready_digest = sha256_hex(ready_digest);
    }
    place(i, it->second, *ready, ready_digest, stats);
  }
  return stats;
}

void Scheduler::set_corrections(perf::Corrections c) {
  {
    std::lock_guard<std::mutex> lock(infeasible_mu_);
    infeasible_.clear();  // plans made with other factors
  }
  std::lock_guard<std::mutex> lock(corrections_mu_);
  // The generation factors that moved: only instances whose prediction they scale are looked at.
  const std::map<std::string, double> before = corrections_.generation_values();
  const std::map<std::string, double> after = c.generation_values();
  for (const auto& [key, v] : after) {
    const auto it = before.find(key);
    if (it == before.end() || it->second != v) changed_keys_.insert(key);
  }
  for (const auto& [key, v] : before) {
    if (!after.count(key)) changed_keys_.insert(key);
  }
  corrections_ = std::move(c);
}

perf::Corrections Scheduler::corrections() const {
  std::lock_guard<std::mutex> lock(corrections_mu_);
  return corrections_;
}

namespace {

std::string rate_text(double tokens_per_s) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.2f tokens/s", tokens_per_s);
  return buf;
}

}  // namespace

int Scheduler::suggest_replans() {
  perf::Corrections c;
  std::set<std::string> changed;
  {
    std::lock_guard<std::mutex> lock(corrections_mu_);
    c = corrections_;
    changed.swap(changed_keys_);
  }
  if (c.empty() || changed.empty()) return 0;
  const std::map<std::string, double> factors = c.generation_values();
  int planned = 0;
  std::map<std::string, store::DeploymentRow> deployments;
  for (const store::DeploymentRow& d : store_.deployments()) deployments[d.name] = d;
  const std::vector<store::ClaimRow> claims = store_.claims();
  std::optional<cluster::Cluster> ready;
  int suggested = 0;
  const std::vector<store::InstanceRow> instances = store_.instances();
  std::erase_if(suggested_, [&](const auto& kv) {
    return std::none_of(instances.begin(), instances.end(),
                        [&](const store::InstanceRow& i) { return i.id == kv.first; });
  });
  for (const store::InstanceRow& i : instances) {
    if (i.state != InstanceState::kRunning) continue;
    const auto d = deployments.find(i.deployment);
    if (d == deployments.end()) continue;
    const json a = json::parse(i.assignment_json, nullptr, false);
    if (!a.is_object() || !a.contains("basis")) continue;
    try {
      const perf::PredictionBasis basis = perf::basis_from_json(a["basis"]);
      if (std::none_of(basis.generation.parts_s.begin(), basis.generation.parts_s.end(),
                       [&](const auto& part) { return changed.count(part.first) > 0; }))
        continue;                                // none of its parts' factors moved
      if (planned++ == kMaxSuggestPlans) break;  // the scheduling loop is not held up longer
      const double now_s = basis.generation.seconds(factors);
      if (now_s <= 0) continue;
      const double now_tps = 1 / now_s;
      if (!ready) ready = perf::corrected(ready_workers(store_.workers()), c);
      cluster::Cluster fleet = *ready;
      apply_claims(fleet, claims, i.id);  // as if this instance were placed anew
      plan::Request r =
          plan::request_from_options(json::parse(d->second.options_json), d->second.model);
      r.replicas = 1;
      r.explain = false;
      plan::add_download(r, model_files(d->second.model));
      const plan::Plan p = plan::make_plan(*model(d->second.model), fleet, r);
      if (!p.feasible || p.replicas.empty()) continue;
      const plan::Candidate& best = p.replicas.front().chosen;
      const double best_tps = best.prediction.generation_tokens_per_s;
      if (best_tps <= kSuggestReplan * now_tps) {
        suggested_.erase(i.id);
        continue;
      }
      const std::string what = best.main_worker + "/" + std::to_string(best.places.size()) + "/" +
                               std::to_string(best.cpu_layers());
      if (suggested_[i.id] == what) continue;  // said already
      suggested_[i.id] = what;
      char pct[32];
      std::snprintf(pct, sizeof pct, "%.0f", 100 * (best_tps / now_tps - 1));
      store_.event("instance.replan_suggested", i.id,
                   "with the learned factors, main " + best.main_worker + " (" +
                       std::to_string(best.places.size()) + " GPU(s), " +
                       std::to_string(best.cpu_layers()) + " CPU layer(s)) is predicted " +
                       rate_text(best_tps) + " against " + rate_text(now_tps) +
                       " for this layout on main " + i.main_worker + " (+" + pct +
                       " %; planned at " + rate_text(i.predicted_tokens_per_s) +
                       "); not moved: scale or redeploy to take it");
      ++suggested;
    } catch (const std::exception&) {
      continue;  // a model or options that no longer plan: nothing to suggest
    }
  }
  return suggested;
}

}  // namespace ggfleet::server
