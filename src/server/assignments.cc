#include "server/assignments.h"

#include <set>

#include "server/api_util.h"

namespace ggfleet::server {

using nlohmann::json;

std::map<std::string, json> assignments_by_worker(const std::vector<store::InstanceRow>& instances,
                                                  const std::vector<store::ClaimRow>& claims,
                                                  const std::string& only) {
  std::map<std::string, std::set<std::string>> lenders;  // instance -> workers lending over RPC
  for (const store::ClaimRow& c : claims) {
    if (c.rpc) lenders[c.instance].insert(c.worker);
  }
  std::map<std::string, json> out;
  for (const store::InstanceRow& i : instances) {
    if (i.state == InstanceState::kPending) continue;
    std::set<std::string> workers = lenders[i.id];
    if (!i.main_worker.empty()) workers.insert(i.main_worker);
    const json assignment = parse_or(i.assignment_json, json::object());
    if (!assignment.contains("launch")) continue;
    const json launch = assignment["launch"];
    for (const std::string& name : workers) {
      if (!only.empty() && name != only) continue;
      json a = instance_json(i, false);
      const bool main = i.main_worker == name;
      a["role"] = text(main ? Role::kMain : Role::kRpc);
      // Only the parts this worker runs: its rpc-servers, and llama-server on the main.
      json rpc = json::array();
      for (const json& r : launch.value("rpc_servers", json::array())) {
        if (r.value("worker", "") == name) rpc.push_back(r);
      }
      a["rpc_servers"] = rpc;
      if (main && launch.contains("server")) a["server"] = launch["server"];
      if (main) a["instance_key"] = assignment.value("instance_key", "");
      if (main && assignment.contains("model_files")) a["model_files"] = assignment["model_files"];
      a["model"] = assignment.value("model", "");
      a["server_port"] = assignment.value("server_port", 0);
      a["rpc_port_base"] = assignment.value("rpc_port_base", 0);
      a["devices"] =
          assignment.contains("plan") ? assignment["plan"]["layout"]["devices"] : json::array();
      auto [it, fresh] = out.try_emplace(name, json::array());
      it->second.push_back(std::move(a));
    }
  }
  return out;
}

std::string assignment_digest(const json& list) {
  std::string out;
  for (const json& a : list) {
    for (const char* k :
         {"id", "role", "model", "model_files", "server_port", "rpc_servers", "server", "devices"})
      out += a.value(k, json()).dump() + "\x1f";
    out += "\x1e";
  }
  return out;
}

json poll_answer(std::int64_t version, json list, bool to_worker, int retry_after_ms) {
  if (!to_worker) {
    for (json& a : list) a.erase("instance_key");
  }
  json out = {{"version", version}, {"instances", std::move(list)}};
  if (retry_after_ms > 0) out["retry_after_ms"] = retry_after_ms;
  return out;
}

}  // namespace ggfleet::server
