// The board of assignments: what each worker runs (the instances it is main of or lends GPUs to,
// with the typed parts of their launch it runs: plan/launch.h), as the long poll hands it out, and
// the digest a poll compares to tell news from state changes. Internal to src/server/.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "store/store.h"

namespace ggfleet::server {

// Per worker, its assignment list: the instance, its role (main | rpc), `rpc_servers` (the
// RpcServerLaunch of the GPUs it lends), `server` (the ServerLaunch, main only), the model, the
// planned ports and the layout's devices. One pass over the store's instances and claims; `only`
// (if not empty) limits it to that worker. Instances placed before launches were typed (no
// "launch" in their assignment) are left out: the scheduler places them again.
std::map<std::string, nlohmann::json> assignments_by_worker(
    const std::vector<store::InstanceRow>& instances, const std::vector<store::ClaimRow>& claims,
    const std::string& only = "");

// The part of a worker's assignments that it acts on (not states or times).
std::string assignment_digest(const nlohmann::json& list);

// The answer to a poll of a worker's assignments: {version, instances, retry_after_ms if > 0}.
// The instances' own keys stay in it only for the worker itself (`to_worker`), never a person.
nlohmann::json poll_answer(std::int64_t version, nlohmann::json list, bool to_worker,
                           int retry_after_ms = 0);

}  // namespace ggfleet::server
