#include "plan/launch.h"

#include <stdexcept>

#include "estimate/experts.h"
#include "plan/plan.h"

namespace ggfleet::plan {
namespace {

using nlohmann::json;

template <class T>
std::string joined(const std::vector<T>& items) {
  std::string out;
  for (const T& v : items) {
    if (!out.empty()) out += ",";
    if constexpr (std::is_same_v<T, Endpoint>) {
      out += v.text();
    } else {
      out += std::to_string(v);
    }
  }
  return out;
}

// Reads `key` of `j` into `out` when present; a wrong type names the field.
template <class T>
void read(const json& j, const char* key, T& out) {
  const auto it = j.find(key);
  if (it == j.end()) return;
  try {
    out = it->get<T>();
  } catch (const json::exception&) {
    throw std::invalid_argument(std::string("launch: '") + key + "' has the wrong type");
  }
}

void require_object(const json& j, const char* what) {
  if (!j.is_object())
    throw std::invalid_argument(std::string("launch: ") + what + " must be an object");
}

}  // namespace

std::string Command::line() const {
  std::string out;
  for (const auto& [k, v] : env) out += k + "=" + v + " ";
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    const bool plain =
        !a.empty() && a.find_first_of(" \t\"'$\\`|&;<>(){}*?!#~") == std::string::npos;
    out += (i ? " " : "") + (plain ? a : "'" + a + "'");
  }
  return out;
}

std::string Endpoint::text() const {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

Command command(const RpcServerLaunch& r, const std::string& binary) {
  Command c;
  c.worker = r.worker;
  c.role = "rpc-server";
  c.argv = {binary, "-H", r.host, "-p", std::to_string(r.port)};
  if (r.gpu) {
    // The one GPU made visible is CUDA0 inside the process.
    c.env["CUDA_VISIBLE_DEVICES"] = std::to_string(*r.gpu);
    c.argv.insert(c.argv.end(), {"-d", "CUDA0"});
  } else {
    c.env["CUDA_VISIBLE_DEVICES"] = "";
  }
  if (r.cache) c.argv.push_back("-c");
  return c;
}

Command command(const ServerLaunch& s, const std::string& binary) {
  Command c;
  c.worker = s.worker;
  c.role = "llama-server";
  c.env["CUDA_VISIBLE_DEVICES"] = joined(s.gpus);  // "" hides every GPU not in the layout
  std::vector<std::string>& a = c.argv;
  a = {binary, "-m", s.model};
  if (!s.rpc.empty()) a.insert(a.end(), {"--rpc", joined(s.rpc)});
  a.insert(a.end(), {"-ngl", std::to_string(s.gpu_layers)});
  if (!s.layers_per_device.empty()) a.insert(a.end(), {"-ts", joined(s.layers_per_device)});
  if (!s.host_expert_blocks.empty()) {
    const std::vector<std::string> experts = estimate::host_expert_args(s.host_expert_blocks);
    a.insert(a.end(), experts.begin(), experts.end());
  }
  a.insert(a.end(), {"-c", std::to_string(s.context_tokens), "--parallel",
                     std::to_string(s.parallel), "-fa", s.flash_attention ? "on" : "off"});
  if (s.cache_type_k != "f16") a.insert(a.end(), {"-ctk", s.cache_type_k});
  if (s.cache_type_v != "f16") a.insert(a.end(), {"-ctv", s.cache_type_v});
  if (s.batch_tokens != 2048) a.insert(a.end(), {"-b", std::to_string(s.batch_tokens)});
  if (s.ubatch_tokens != 512) a.insert(a.end(), {"-ub", std::to_string(s.ubatch_tokens)});
  if (s.kv_unified) a.push_back("-kvu");
  if (!s.kv_offload) a.push_back("--no-kv-offload");
  if (s.swa_full) a.push_back("--swa-full");
  // The pinned llama.cpp has no --no-mmap any more (llama-server exits on it): load mode none.
  if (!s.mmap) a.insert(a.end(), {"--load-mode", "none"});
  if (s.threads > 0) a.insert(a.end(), {"-t", std::to_string(s.threads)});
  if (!s.alias.empty()) a.insert(a.end(), {"--alias", s.alias});
  a.insert(a.end(), {"--host", s.host, "--port", std::to_string(s.port), "--metrics"});
  a.insert(a.end(), s.extra_args.begin(), s.extra_args.end());
  return c;
}

std::vector<Command> commands(const Launch& l) {
  std::vector<Command> out;
  for (const RpcServerLaunch& r : l.rpc_servers) out.push_back(command(r));
  out.push_back(command(l.server));
  return out;
}

json to_json(const RpcServerLaunch& r) {
  json j = {{"worker", r.worker}, {"host", r.host}, {"port", r.port}, {"cache", r.cache}};
  j["gpu"] = r.gpu ? json(*r.gpu) : json(nullptr);
  return j;
}

json to_json(const ServerLaunch& s) {
  json rpc = json::array();
  for (const Endpoint& e : s.rpc) rpc.push_back({{"host", e.host}, {"port", e.port}});
  return {{"worker", s.worker},
          {"model", s.model},
          {"host", s.host},
          {"port", s.port},
          {"gpus", s.gpus},
          {"rpc", rpc},
          {"gpu_layers", s.gpu_layers},
          {"layers_per_device", s.layers_per_device},
          {"host_expert_blocks", s.host_expert_blocks},
          {"context_tokens", s.context_tokens},
          {"parallel", s.parallel},
          {"flash_attention", s.flash_attention},
          {"cache_type_k", s.cache_type_k},
          {"cache_type_v", s.cache_type_v},
          {"batch_tokens", s.batch_tokens},
          {"ubatch_tokens", s.ubatch_tokens},
          {"kv_unified", s.kv_unified},
          {"kv_offload", s.kv_offload},
          {"swa_full", s.swa_full},
          {"mmap", s.mmap},
          {"threads", s.threads},
          {"alias", s.alias},
          {"extra_args", s.extra_args}};
}

json to_json(const Launch& l) {
  json rpc = json::array();
  for (const RpcServerLaunch& r : l.rpc_servers) rpc.push_back(to_json(r));
  return {{"rpc_servers", rpc}, {"server", to_json(l.server)}};
}

RpcServerLaunch rpc_server_launch_from_json(const json& j) {
  require_object(j, "an rpc-server");
  RpcServerLaunch r;
  read(j, "worker", r.worker);
  read(j, "host", r.host);
  read(j, "port", r.port);
  read(j, "cache", r.cache);
  if (j.contains("gpu") && !j["gpu"].is_null()) {
    std::uint32_t g = 0;
    read(j, "gpu", g);
    r.gpu = g;
  }
  if (r.host.empty() || r.port == 0)
    throw std::invalid_argument("launch: rpc-server needs host and port");
  return r;
}

ServerLaunch server_launch_from_json(const json& j) {
  require_object(j, "the server");
  ServerLaunch s;
  read(j, "worker", s.worker);
  read(j, "model", s.model);
  read(j, "host", s.host);
  read(j, "port", s.port);
  read(j, "gpus", s.gpus);
  if (j.contains("rpc")) {
    if (!j["rpc"].is_array()) throw std::invalid_argument("launch: 'rpc' must be an array");
    for (const json& e : j["rpc"]) {
      require_object(e, "an RPC endpoint");
      Endpoint ep;
      read(e, "host", ep.host);
      read(e, "port", ep.port);
      s.rpc.push_back(ep);
    }
  }
  read(j, "gpu_layers", s.gpu_layers);
  read(j, "layers_per_device", s.layers_per_device);
  read(j, "host_expert_blocks", s.host_expert_blocks);
  for (std::size_t i = 1; i < s.host_expert_blocks.size(); ++i) {
    if (s.host_expert_blocks[i] <= s.host_expert_blocks[i - 1])
      throw std::invalid_argument("launch: 'host_expert_blocks' must be ascending");
  }
  read(j, "context_tokens", s.context_tokens);
  read(j, "parallel", s.parallel);
  read(j, "flash_attention", s.flash_attention);
  read(j, "cache_type_k", s.cache_type_k);
  read(j, "cache_type_v", s.cache_type_v);
  read(j, "batch_tokens", s.batch_tokens);
  read(j, "ubatch_tokens", s.ubatch_tokens);
  read(j, "kv_unified", s.kv_unified);
  read(j, "kv_offload", s.kv_offload);
  read(j, "swa_full", s.swa_full);
  read(j, "mmap", s.mmap);
  read(j, "threads", s.threads);
  read(j, "alias", s.alias);
  read(j, "extra_args", s.extra_args);
  if (s.model.empty() || s.host.empty())
    throw std::invalid_argument("launch: server needs model and host");
  return s;
}

Launch launch_from_json(const json& j) {
  require_object(j, "a launch");
  Launch l;
  if (j.contains("rpc_servers")) {
    if (!j["rpc_servers"].is_array())
      throw std::invalid_argument("launch: 'rpc_servers' must be an array");
    for (const json& r : j["rpc_servers"]) l.rpc_servers.push_back(rpc_server_launch_from_json(r));
  }
  if (!j.contains("server")) throw std::invalid_argument("launch: no server");
  l.server = server_launch_from_json(j["server"]);
  return l;
}

Launch launch_for(const Candidate& c, const cluster::Cluster& cl, const Request& r) {
  Launch out;
  ServerLaunch& s = out.server;
  // Ports count per host: workers that share an address (several on one machine) share its ports.
  std::map<std::string, std::uint16_t> next_port;
  for (std::size_t i = 0; i < c.layout.devices.size(); ++i) {
    const perf::DevicePlace& p = c.places[i];
    if (!c.layout.devices[i].remote) {
      s.gpus.push_back(p.gpu);
      continue;
    }
    const cluster::Worker& w = *cl.find(p.worker);
    auto [it, inserted] =
        next_port.try_emplace(w.address.empty() ? p.worker : w.address, r.rpc_port_base);
    RpcServerLaunch rpc;
    rpc.worker = p.worker;
    rpc.host = w.address;
    rpc.port = it->second++;
    rpc.gpu = p.gpu;
    s.rpc.push_back({rpc.host, rpc.port});
    out.rpc_servers.push_back(std::move(rpc));
  }
  s.worker = c.main_worker;
  s.model = r.model_path;
  s.host = cl.find(c.main_worker)->address;
  s.port = r.server_port;
  s.gpu_layers = static_cast<std::int32_t>(c.estimate.offloaded_layers);
  if (c.layout.devices.size() > 1) {
    for (const estimate::DeviceUsage& d : c.estimate.devices)
      s.layers_per_device.push_back(d.layers);
  }
  s.host_expert_blocks = estimate::host_expert_blocks(c.layout);
  const estimate::ContextOptions& o = r.context;
  s.context_tokens = c.estimate.context_tokens;
  s.parallel = o.parallel;
  s.flash_attention = c.estimate.flash_attention;
  s.cache_type_k = std::string(gguf::traits(o.cache_type_k).name);
  s.cache_type_v = std::string(gguf::traits(o.cache_type_v).name);
  s.batch_tokens = o.batch_tokens;
  s.ubatch_tokens = o.ubatch_tokens;
  s.kv_unified = o.kv_unified;
  s.kv_offload = o.kv_offload;
  s.swa_full = o.swa_full;
  s.mmap = o.mmap;
  s.threads = r.threads;
  s.extra_args = r.extra_args;
  return out;
}

}  // namespace ggfleet::plan
