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

}  // namespace ggfleet::server
