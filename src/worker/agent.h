// The worker agent: joins the server, heartbeats, reporting its resources and its instances'
// states when they change (HeartbeatDelta), learns its assignments by long-polling, and runs them:
// one rpc-server per GPU it lends, and llama-server (after the RPC servers it needs answer) for
// instances it is the main of. Processes are restarted with backoff (and given up after a limit,
// reported), and stopped when their assignment goes away. Logs are kept per instance under the data
// directory.
//
// With declared GPUs (no NVIDIA driver), GPUs are simulated with llama.cpp's CPU backend: the
// rpc-servers run on the CPU, and the main's own "GPUs" become local CPU rpc-servers so the
// device list, split and layer counts are the planned ones. Status and logs say "simulated".
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "worker/discovery.h"
#include "worker/model_cache.h"
#include "worker/process.h"

namespace httplib {
class Client;
}

namespace ggfleet::worker {

struct AgentConfig {
  // The server's URL, or several separated by commas (servers sharing one PostgreSQL database):
  // the worker registers with the first that answers and moves to the next when its server stops
  // answering heartbeats.
  std::string server = "http://127.0.0.1:8080";
  std::string join_token;
  // For an https:// server with a certificate no system CA signed (self-signed): the PEM file of
  // the certificate (or its CA) to trust. Without it an https server must have a trusted one.
  std::string ca_cert;
  // Model files llama-server may load lie inside these directories (links resolved); empty: any.
  std::vector<std::string> model_roots;
  std::string name;
  std::string address = "127.0.0.1";  // where the main and the server reach this worker
  std::vector<std::string> declared_gpus;
  // With declared GPUs: RAM and cores to report instead of this machine's (0: the real ones), so
  // one machine can stand in for a fleet of larger ones in planning.
  std::uint64_t declared_ram_bytes = 0;
  std::uint32_t declared_cores = 0;
  std::string llama_bin_dir;  // llama-server and ggml-rpc-server
  std::string data_dir = "ggfleet-worker";
  int heartbeat_ms = 2000;
  int max_restarts = 5;      // llama-server crashes before the instance is given up (re-planned)
  int healthy_reset_s = 60;  // running this long without a crash resets the restart count
  double cpu_bandwidth_bytes_per_s = 0;   // from `ggfleet probe`, 0 = catalog default
  std::vector<int> gpu_indices;           // NVML GPUs this worker manages (empty = all)
  std::uint64_t reserved_vram_bytes = 0;  // per GPU, kept free for others
  std::uint64_t vram_limit_bytes = 0;     // per GPU, offered at most (a slice); 0 = all
  std::uint64_t reserved_ram_bytes = 0;
  // Models from URLs and the Hugging Face Hub are downloaded here (default: <data_dir>/models).
  std::string cache_dir;
  std::uint64_t cache_max_bytes = 0;  // 0: as much as the disk holds
  int download_connections = 4;
};

class Agent {
 public:
  explicit Agent(AgentConfig config);
  ~Agent();
  // Registers and serves until `stop` becomes true; then stops every process it started.
  // Registration presents the credentials saved by an earlier run of this data directory, so a
  // restarted worker keeps its name; a name held by another live worker is refused (409). When
  // the server stops accepting its credentials (401: removed, or its database replaced), it says
  // so in its log and registers again with the join token.
  // Throws std::runtime_error if it cannot register.
  void run(const std::atomic<bool>& stop);
  bool simulated() const { return simulated_; }

 private:
  struct Instance;
  void reconcile(const nlohmann::json& assignments);
  // Registers (retrying while the server is unreachable) and sets key_. Throws
  // std::runtime_error when refused.
  void register_self(const std::atomic<bool>& stop, const std::vector<GpuInfo>& gpus);
  void supervise(Instance& i);
  // For an instance whose model is downloaded (the assignment's "model_files"): true with `path`
  // set when the cache holds every file; false while it downloads or after it failed (state,
  // reason and the time of the next attempt set).
  bool model_ready(Instance& i, std::string* path);
  // A client for `url` (http or https; https verified against config_.ca_cert when given).
  std::unique_ptr<httplib::Client> client(const std::string& url) const;
  // Every part a heartbeat may carry (resources, instances, memory); HeartbeatDelta picks what
  // is sent.
  nlohmann::json heartbeat_parts();
  // A process of an instance and what it holds: a GPU as the plan numbers it, or -1 for the
  // host's RAM (llama-server).
  struct Holder {
    std::string instance;
    int port = 0;  // the placement's server port: the server ignores reports of older ones
    int pid = 0;
    std::int64_t gpu = -1;
  };
  std::vector<Holder> memory_holders();  // REQUIRES: mu_ held
  // Heartbeat "memory": [{id, port, host_bytes, devices: [{gpu, bytes}]}], from /proc (the host,
  // and simulated GPUs served by CPU rpc-servers) and NVML per process (real GPUs). Also keeps
  // each real GPU's total held by them (own_gpu_bytes_), which resources() leaves out of "used".
  nlohmann::json measure_memory(const std::vector<Holder>& holders);
  nlohmann::json instance_reports();  // REQUIRES: mu_ held
  std::string binary(const std::string& name) const;
  std::vector<GpuInfo> gpus(std::string* why = nullptr) const;
  nlohmann::json resources(const std::vector<GpuInfo>& gpus) const;
  // A GPU as planned (index among this worker's GPUs) as its physical index (--gpus).
  std::uint32_t physical_gpu(std::uint32_t planned) const;

  AgentConfig config_;
  bool simulated_ = false;
  std::vector<GpuInfo> declared_;
  std::string worker_endpoint() {
    std::lock_guard<std::mutex> lock(key_mu_);
    return worker_server_;
  }
  std::string public_server() {
    std::lock_guard<std::mutex> lock(key_mu_);
    return public_server_;
  }
  std::mutex key_mu_;
  // Guarded by key_mu_: the server's worker-only listener when it answers, else the public URL
  // of the server it registered with (public_server_, one of servers_).
  std::string worker_server_;
  std::string public_server_;
  std::vector<std::string> servers_;  // config_.server split at commas
  std::size_t next_server_ =
      0;             // where the next registration starts (run, then the heartbeat thread)
  std::string key_;  // guarded by key_mu_; this worker's credentials (<data_dir>/credentials)
  // Guarded by key_mu_: registrations so far, and the resources the last one carried (the
  // heartbeats need not send them again).
  int registrations_ = 0;
  nlohmann::json registered_resources_;
  std::vector<std::string> stale_;  // processes of an earlier agent stopped at start
  std::string llama_build_;         // its llama-server's --version ("" if unknown)
  // Before instances_: their models are released (they hold them) before the cache goes.
  std::unique_ptr<ModelCache> cache_;
  std::atomic<double> download_bytes_per_s_{0};  // the last sizeable download's rate
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Instance>> instances_;
  bool retiring_ = false;  // guarded by mu_: stopping; assignments that arrive now are ignored
  // Set when the instances changed (started or stopped): their reports go with the next
  // heartbeat even if they read as before (the server may have set the rows meanwhile).
  std::atomic<bool> reports_stale_{false};
  std::mutex reports_mu_;
  nlohmann::json reports_ = nlohmann::json::array();  // the last states, for heartbeats
  nlohmann::json memory_ = nlohmann::json::array();   // the last memory measured, likewise
  mutable std::mutex own_mu_;
  // Guarded by own_mu_: GPU memory this worker's processes hold, by NVML index (last measured).
  std::map<std::uint32_t, std::uint64_t> own_gpu_bytes_;
};

}  // namespace ggfleet::worker
