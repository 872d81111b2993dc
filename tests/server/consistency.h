// The invariants the scheduler keeps, read straight from the store: no GPU claimed beyond its
// free memory, no GPU lent over RPC to two instances, no claim without its instance, instance ids
// unique, and (once settled) every deployment with exactly its replica count of instances, each
// placed (with claims) or pending with a reason.
#pragma once

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "server/scheduler.h"
#include "store/store.h"

namespace ggfleet::test {

inline std::vector<std::string> consistency_problems(store::Store& s, bool settled) {
  std::vector<std::string> problems;
  std::vector<store::WorkerRow> workers;
  std::vector<store::ClaimRow> claims;
  std::vector<store::InstanceRow> instances;
  std::vector<store::DeploymentRow> deployments;
  s.snapshot([&] {  // one committed state, as a reader in the middle of the load sees it
    workers = s.workers();
    claims = s.claims();
    instances = s.instances();
    deployments = s.deployments();
  });
  std::map<std::string, cluster::Worker> fleet;
  for (const store::WorkerRow& w : workers) {
    fleet[w.name] =
        cluster::worker_from_json(w.name, w.address, nlohmann::json::parse(w.labels_json),
                                  nlohmann::json::parse(w.resources_json));
  }
  std::set<std::string> ids;
  for (const store::InstanceRow& i : instances) {
    if (!ids.insert(i.id).second) problems.push_back("instance " + i.id + " twice");
  }
  std::map<std::pair<std::string, std::int64_t>, std::int64_t> claimed;
  std::map<std::pair<std::string, std::int64_t>, std::set<std::string>> lent;
  for (const store::ClaimRow& c : claims) {
    if (!ids.count(c.instance)) problems.push_back("claim of missing instance " + c.instance);
    claimed[{c.worker, c.gpu}] += c.bytes;
    if (c.rpc) lent[{c.worker, c.gpu}].insert(c.instance);
  }
  for (const auto& [where, bytes] : claimed) {
    if (where.second < 0) continue;
    const auto it = fleet.find(where.first);
    if (it == fleet.end()) continue;  // a removed worker: its instances are re-planned
    const cluster::Worker& w = it->second;
    const auto g = static_cast<std::size_t>(where.second);
    if (g >= w.gpus.size()) {
      problems.push_back("claim on missing GPU " + where.first + ":" + std::to_string(g));
      continue;
    }
    const std::uint64_t free = w.free_vram_bytes(g);  // no claims applied: total - used - reserved
    if (static_cast<std::uint64_t>(bytes) > free) {
      problems.push_back("GPU " + where.first + ":" + std::to_string(g) +
                         " over-claimed: " + std::to_string(bytes) + " of " + std::to_string(free));
    }
  }
  for (const auto& [where, who] : lent) {
    if (who.size() > 1)
      problems.push_back("GPU " + where.first + ":" + std::to_string(where.second) + " lent twice");
  }
  if (settled) {
    std::map<std::string, std::int64_t> count;
    for (const store::InstanceRow& i : instances) {
      ++count[i.deployment];
      const bool has_claims =
          std::any_of(claims.begin(), claims.end(),
                      [&](const store::ClaimRow& c) { return c.instance == i.id; });
      if (i.state == InstanceState::kPending && i.reason.empty())
        problems.push_back(i.id + " pending without a reason");
      if (i.state != InstanceState::kPending && !has_claims)
        problems.push_back(i.id + " placed without claims");
      if (i.state == InstanceState::kPending && has_claims)
        problems.push_back(i.id + " pending with claims");
    }
    for (const store::DeploymentRow& d : deployments) {
      if (count[d.name] != d.replicas) {
        problems.push_back(d.name + " has " + std::to_string(count[d.name]) + " instances for " +
                           std::to_string(d.replicas) + " replicas");
      }
    }
  }
  return problems;
}

// Waits until the scheduler has settled (every invariant holds); returns the last problems.
// One connection for the whole wait: a new one four times a second checks the schema (under
// SQLite's write lock) against the server it waits for. An ASan build running beside another
// loaded test has needed more than 30 s to place the last scale-ups.
inline std::vector<std::string> settle(const std::string& db, double seconds = 60) {
  std::vector<std::string> problems;
  store::Store s(db);
  for (int i = 0; i < static_cast<int>(seconds * 4); ++i) {
    problems = consistency_problems(s, true);
    if (problems.empty()) return problems;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return problems;
}

}  // namespace ggfleet::test
