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
    if (i.state == "pending") continue;
    std::set<std::string> workers = lenders[i.id];
    if (!i.main_worker.empty()) workers.insert(i.main_worker);
    const json assignment = parse_or(i.assignment_json, json::object());
    for (const std::string& name : workers) {
      if (!only.empty() && name != only) continue;
      json a = instance_json(i, false);
      json commands = json::array();
      for (const json& c : assignment.value("commands", json::array())) {
        if (c.value("worker", "") == name) commands.push_back(c);
      }
      a["role"] = i.main_worker == name ? "main" : "rpc";
      a["commands"] = commands;
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
    for (const char* k : {"id", "role", "model", "server_port", "commands", "devices"})
      out += a.value(k, json()).dump() + "\x1f";
    out += "\x1e";
  }
  return out;
}

}  // namespace ggfleet::server
