// The scheduling loop's one step (reconcile): workers that stopped heartbeating are marked, their
// instances re-planned after a grace period; each deployment gets its replica count of instances
// (scale-down removes the least preferred first); pending instances are planned on the live fleet
// (free memory = total - used - reserved - claims of other instances) and their claims written
// in the same transaction as the assignment; an instance that cannot be placed stays pending
// with the planner's reason as an event.
//
// Thread safety: reconcile() is called from one thread (the server's loop); the store
// serialises everything else.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cluster/cluster.h"
#include "estimate/model_memory.h"
#include "model/source.h"
#include "perf/corrections.h"
#include "plan/options.h"
#include "plan/plan.h"
#include "store/store.h"

namespace ggfleet::server {

// The fleet the planner sees: ready workers (not draining, not unreachable) with the claims of
// every instance except `except_instance`.
cluster::Cluster live_cluster(const std::vector<store::WorkerRow>& workers,
                              const std::vector<store::ClaimRow>& claims,
                              const std::string& except_instance = "");
// The two halves of live_cluster: the ready workers with their reported resources (no claims),
// and the claims of every instance except `except_instance` added to them.
cluster::Cluster ready_workers(const std::vector<store::WorkerRow>& workers);
void apply_claims(cluster::Cluster& c, const std::vector<store::ClaimRow>& claims,
                  const std::string& except_instance);

// Returns `instance` to pending for the scheduler to place again: its claims are released, the
// assignment version bumped and an "instance.replanned" event with `reason` written, in one
// transaction (joins the caller's). `avoid_worker` (if not empty) is added to the workers its next
// placement avoids when any other placement fits (kept in the pending instance's assignment as
// {"avoid": [...]}). Does nothing if the instance (or its deployment) is gone meanwhile.
void replan(store::Store& store, const store::InstanceRow& instance, const std::string& reason,
            const std::string& avoid_worker = "");

struct SchedulerConfig {
  std::int64_t heartbeat_timeout_ms = 10000;  // no heartbeat for this long: unreachable
  std::int64_t replan_grace_ms = 20000;       // unreachable for this long: instances re-planned
  // After the scheduler starts, no worker is judged unreachable until a full heartbeat timeout
  // has passed since the start (a server that was down saw no heartbeats, it did not miss them).
  // Below Linux's ephemeral range (32768+), so outgoing connections never hold them.
  int instance_port_base = 20000;  // llama-server ports: base .. base+499, one per placement
  int rpc_port_base = 21000;       // rpc-server ports: base .. base+7999, 16 per placement
};

struct ReconcileStats {
  int placed = 0;
  int pending = 0;
  int created = 0;
  int removed = 0;
  int replanned = 0;
  int remembered = 0;
  int vanished = 0;  // not written: the instance or its deployment was deleted meanwhile     //
                     // pending ones answered by an earlier identical plan on the same fleet
  double planning_s = 0;  // time spent in the planner
};

class Scheduler {
 public:
  Scheduler(store::Store& store, SchedulerConfig config);
  ReconcileStats reconcile();

  // The model's memory facts, read once per source (a path, a URL or hf://; from the header
  // alone) (thread-safe). Throws on unreadable files and sources that do not resolve.
  std::shared_ptr<const estimate::ModelMemory> model(const std::string& path);
  // The files the main worker downloads for a remote source (none for a local path), as resolved
  // when model() first read it.
  std::vector<model::ModelFile> model_files(const std::string& path);

  // The learned factors later placements are planned with (thread-safe).
  void set_corrections(perf::Corrections c);
  perf::Corrections corrections() const;

  // For each running instance: when, with the learned factors, a placement made now would be
  // predicted more than kSuggestReplan times faster than the instance's own layout (both
  // corrected), an "instance.replan_suggested" event with both predictions — once per instance
  // and suggested layout; nothing is moved. Returns the number of events. Call from the
  // scheduling loop's thread.
  // Only instances whose prediction a factor changed since the last call scales are looked at,
  // at most kMaxSuggestPlans of them per call (each costs a plan).
  static constexpr double kSuggestReplan = 1.2;
  static constexpr int kMaxSuggestPlans = 32;
  int suggest_replans();

  // The leader lease this scheduler writes under (fencing): every write of reconcile() checks it
  // in its own transaction and is rolled back (store::LeaseLost thrown) once another server holds
  // it or it expired. Unset: writes are not fenced (a scheduler alone on its store).
  // A new lease (this server starts leading) starts the heartbeat grace again, as a restart does:
  // while no server led, nobody judged silence.
  void set_lease(std::optional<store::Lease> lease);

 private:
  // Plans `instance` on `ready` (ready_workers of this pass, whose rows digest to ready_digest)
  // with the claims in the store now. A request that did not fit the same fleet (same ready
  // workers, same claims of the others, same learned factors) is not planned again: its reason
  // is reused, so that many pending replicas of an over-full fleet cost one plan per pass, not
  // one each.
  void place(const store::InstanceRow& instance, const store::DeploymentRow& d,
             const cluster::Cluster& ready, const std::string& ready_digest, ReconcileStats& stats);
  std::optional<std::string> known_infeasible(const std::string& request_key,
                                              const std::string& fleet_key);
  void remember_infeasible(const std::string& request_key, const std::string& fleet_key,
                           const std::string& reason);

  // One write transaction of the scheduler, fenced by lease_.
  void write(const std::function<void()>& fn);

  store::Store& store_;
  SchedulerConfig config_;
  std::optional<store::Lease> lease_;
  std::int64_t started_ms_;  // when this scheduler was made, or last began to lead
  mutable std::mutex corrections_mu_;
  perf::Corrections corrections_;
  std::set<std::string> changed_keys_;            // factors changed since suggest_replans last ran
  std::map<std::string, std::string> suggested_;  // instance -> the layout last suggested
  // request (model, options, avoided workers) -> the fleet it did not fit and why.
  static constexpr std::size_t kMaxRemembered = 1024;
  std::mutex infeasible_mu_;
  std::map<std::string, std::pair<std::string, std::string>> infeasible_;
  std::mutex models_mu_;
  struct KnownModel {
    std::shared_ptr<const estimate::ModelMemory> memory;
    std::vector<model::ModelFile> files;
  };
  std::map<std::string, KnownModel> models_;
};

}  // namespace ggfleet::server
