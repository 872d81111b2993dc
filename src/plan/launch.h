// What a placement runs, as typed fields: one rpc-server per lent GPU and the main's llama-server
// with everything the plan decided (model, RPC endpoints, local GPUs, split, context options,
// port). Built once, by launch_for(); sent to the workers as JSON (to_json / launch_from_json);
// turned into argv and environment only where a process starts (command()), so no component
// parses a command line back.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace ggfleet::plan {

// A process as a shell would start it.
struct Command {
  std::string worker;
  std::string role;  // "rpc-server" or "llama-server"
  std::map<std::string, std::string> env;
  std::vector<std::string> argv;
  std::string line() const;  // shell form: VAR=value prog args... (arguments quoted as needed)
};

struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string text() const;  // host:port, [host]:port for IPv6 literals
};

struct RpcServerLaunch {
  std::string worker;  // whose GPU it serves
  std::string host;    // the address it listens on
  std::uint16_t port = 0;
  // Index of the GPU among the worker's GPUs (CUDA_VISIBLE_DEVICES); nullopt: CPU backend, every
  // GPU hidden (a worker that simulates its GPUs).
  std::optional<std::uint32_t> gpu;
  bool cache = true;  // -c: keep received tensors in the local cache
};

struct ServerLaunch {
  std::string worker;
  std::string model;  // path as the main worker sees it
  std::string host;
  std::uint16_t port = 0;
  std::vector<std::uint32_t> gpus;  // the main's own GPUs in llama.cpp's order; empty: none
  bool hide_gpus = false;           // CUDA_VISIBLE_DEVICES="" even when gpus is empty
  std::vector<Endpoint> rpc;        // remote devices in llama.cpp's order (--rpc)
  std::int32_t gpu_layers = -1;     // -ngl
  std::vector<std::uint32_t> layers_per_device;  // -ts, one per device (RPC first); empty: none
  // Blocks whose routed experts stay in host RAM (--n-cpu-moe N or one -ot rule), ascending.
  std::vector<std::uint32_t> host_expert_blocks;
  std::uint32_t context_tokens = 4096;
  std::uint32_t parallel = 1;
  bool flash_attention = false;
  std::string cache_type_k = "f16", cache_type_v = "f16";
  std::uint32_t batch_tokens = 2048, ubatch_tokens = 512;
  bool kv_unified = false, kv_offload = true, swa_full = false, mmap = true;
  std::uint32_t threads = 0;  // 0: llama.cpp's default
  std::string alias;          // --alias: the name responses carry as "model" (the deployment)
  std::vector<std::string> extra_args;
};

struct Launch {
  std::vector<RpcServerLaunch> rpc_servers;  // in the order of ServerLaunch::rpc
  ServerLaunch server;
};

// The process for each part; `binary` is the program's path (default: its name on PATH).
Command command(const RpcServerLaunch& r, const std::string& binary = "ggml-rpc-server");
Command command(const ServerLaunch& s, const std::string& binary = "llama-server");
// Every process of a launch: the rpc-servers, then llama-server.
std::vector<Command> commands(const Launch& l);

nlohmann::json to_json(const RpcServerLaunch& r);
nlohmann::json to_json(const ServerLaunch& s);
nlohmann::json to_json(const Launch& l);
// Inverse of to_json. Throws std::invalid_argument naming the field that is missing or mistyped.
RpcServerLaunch rpc_server_launch_from_json(const nlohmann::json& j);
ServerLaunch server_launch_from_json(const nlohmann::json& j);
Launch launch_from_json(const nlohmann::json& j);

}  // namespace ggfleet::plan
