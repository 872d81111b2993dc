#include "worker/agent.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>

#include "cluster/states.h"
#include "cluster/units.h"
#include "gguf/reader.h"
#include "plan/launch.h"
#include "worker/heartbeat.h"

namespace ggfleet::worker {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Every part of a heartbeat goes at least this often, changed or not (HeartbeatDelta).
constexpr std::chrono::seconds kFullReportEvery{30};

// A TCP socket and `host:port` as IPv4; `then` (connect or bind) decides. False if the address
// is not IPv4 or `then` fails.
template <typename Then>
bool with_socket(const std::string& host, int port, Then then) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  const bool ok =
      inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &addr.sin_addr) == 1 &&
      then(fd, reinterpret_cast<sockaddr*>(&addr), static_cast<socklen_t>(sizeof addr));
  ::close(fd);
  return ok;
}

// Whether something accepts connections on `host:port`.
bool port_open(const std::string& host, int port) {
  return with_socket(
      host, port, [](int fd, const sockaddr* a, socklen_t n) { return ::connect(fd, a, n) == 0; });
}

// Whether nothing listens on `host:port` now: a bind with SO_REUSEADDR (as llama-server's own)
// succeeds. Another program's socket, or an orphan of ours, makes it fail.
bool port_free(const std::string& host, int port) {
  return with_socket(host, port, [](int fd, const sockaddr* a, socklen_t n) {
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    return ::bind(fd, a, n) == 0;
  });
}

// What `llama-server --version` says after "version: " (e.g. "0.5.0-dev (build 1, commit
// de3ff81)"); "" when it cannot be run.
std::string llama_build(const std::string& server) {
  const std::string command = "'" + server + "' --version 2>&1 < /dev/null";
  std::unique_ptr<FILE, int (*)(FILE*)> p(::popen(command.c_str(), "r"), ::pclose);
  if (!p) return "";
  char line[512];
  while (std::fgets(line, sizeof line, p.get())) {
    std::string text(line);
    if (text.rfind("version: ", 0) != 0) continue;
    text = text.substr(9);
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    return text;
  }
  return "";
}

void log(const std::string& name, const std::string& text) {
  std::cout << "[worker " << name << "] " << text << std::endl;
}

}  // namespace

// One assigned instance and its processes.
struct Agent::Instance {
  std::string id;
  Role role = Role::kRpc;
  json assignment;  // as the server sent it
  std::vector<std::unique_ptr<Process>>
      rpc;  // rpc-servers (lent GPUs, or the main's simulated ones)
  std::vector<plan::RpcServerLaunch> rpc_launches;  // one per rpc process, GPUs as physical indices
  std::vector<std::uint32_t> rpc_planned;     // per rpc process: the GPU as the plan numbers it
  std::vector<std::uint32_t> server_planned;  // llama-server's own GPUs as the plan numbers them
  std::unique_ptr<Process> server;            // llama-server (main)
  std::optional<plan::ServerLaunch> server_launch;  // as it will run here (RPC endpoints included)
  InstanceState state = InstanceState::kStarting;
  std::string reason;
  int restarts = 0;
  bool gave_up = false;           // restarts exhausted: reported so that the server re-plans it
  bool ever_ready = false;        // since the last start: /health answered 200 once
  Clock::time_point ready_since;  // running without a crash since then (restarts reset)
  int listen_port = 0;            // where llama-server really listens (the planned port if free)
  Clock::time_point next_start = Clock::now();
  bool exit_noticed = false;
  std::string log_path;
  std::string pid_prefix;                    // pid files: <prefix>-server.pid, <prefix>-rpcN.pid
  std::shared_ptr<ModelCache::Model> model;  // held while assigned (downloaded models)
  std::optional<DownloadStatus> download;    // the last status of its download
  int download_failures = 0;
  Clock::time_point download_started;
  bool download_rated = false;  // its rate went into download_bytes_per_s_
};

Agent::Agent(AgentConfig config) : config_(std::move(config)) {
  for (std::size_t at = 0; at <= config_.server.size();) {
    const std::size_t comma = std::min(config_.server.find(',', at), config_.server.size());
    std::string one = config_.server.substr(at, comma - at);
    one.erase(0, one.find_first_not_of(' '));
    one.erase(one.find_last_not_of(' ') + 1);
    if (!one.empty()) servers_.push_back(one);
    at = comma + 1;
  }
  if (servers_.empty()) throw std::runtime_error("no server URL given");
  public_server_ = servers_.front();
  for (const std::string& g : config_.declared_gpus) declared_.push_back(parse_declared_gpu(g));
  simulated_ = !declared_.empty();
  std::filesystem::create_directories(config_.data_dir + "/logs");
  std::filesystem::create_directories(config_.data_dir + "/pids");
  CacheConfig cache;
  cache.dir = config_.cache_dir.empty() ? config_.data_dir + "/models" : config_.cache_dir;
  cache.max_bytes = config_.cache_max_bytes;
  cache.connections = config_.download_connections;
  cache.on_evict = [name = config_.name](const std::string& text) { log(name, text); };
  cache_ = std::make_unique<ModelCache>(cache);
  // Downloads from the Hub carry this worker's HF_TOKEN (gated repositories).
  model::register_hub_token(model::Hub::from_environment());
  // Processes an earlier agent of this data directory left running (it was killed before its
  // children could notice): they hold ports and serve without us; stop them before anything else.
  llama_build_ = llama_build(binary("llama-server"));
  for (const std::string& p : stop_stale(config_.data_dir + "/pids")) {
    stale_.push_back(p);
    log(config_.name, "stopped " + p + " left running by an earlier agent of this data directory");
  }
}

Agent::~Agent() {
  std::lock_guard<std::mutex> lock(mu_);
  instances_.clear();  // stops every process
}

std::string Agent::binary(const std::string& name) const {
  return config_.llama_bin_dir.empty() ? name : config_.llama_bin_dir + "/" + name;
}

std::vector<GpuInfo> Agent::gpus(std::string* why) const {
  if (simulated_) return declared_;
  const std::vector<GpuInfo> all = nvml_gpus(why);
  if (config_.gpu_indices.empty()) return all;
  std::vector<GpuInfo> mine;
  for (int k : config_.gpu_indices) {
    if (k >= 0 && static_cast<std::size_t>(k) < all.size())
      mine.push_back(all[static_cast<std::size_t>(k)]);
  }
  return mine;
}

json Agent::resources(const std::vector<GpuInfo>& found) const {
  std::vector<GpuInfo> list = found;
  if (!simulated_) {
    std::lock_guard<std::mutex> lock(own_mu_);
    for (std::size_t k = 0; k < list.size(); ++k) {
      const auto own = own_gpu_bytes_.find(physical_gpu(static_cast<std::uint32_t>(k)));
      list[k] = offered_gpu(list[k], own != own_gpu_bytes_.end() ? own->second : 0,
                            config_.vram_limit_bytes);
    }
  }
  HostInfo host = host_info();
  if (simulated_ && config_.declared_ram_bytes > 0) {
    host.ram_used_bytes = std::min(host.ram_used_bytes, config_.declared_ram_bytes);
    host.ram_total_bytes = config_.declared_ram_bytes;
  }
  if (simulated_ && config_.declared_cores > 0) host.cores = config_.declared_cores;
  json r = resources_json(host, list, simulated_, config_.cpu_bandwidth_bytes_per_s);
  if (!llama_build_.empty()) r["llama"] = {{"build", llama_build_}};
  if (config_.reserved_vram_bytes > 0 || config_.reserved_ram_bytes > 0) {
    r["reserved"] = {{"vram", config_.reserved_vram_bytes}, {"ram", config_.reserved_ram_bytes}};
  }
  json files = json::array();
  for (const ModelCache::Entry& e : cache_->entries()) {
    files.push_back({{"key", e.key},
                     {"names", e.names},
                     {"sha256", e.sha256},
                     {"url", e.url},
                     {"size_bytes", e.size_bytes},
                     {"last_use_ms", e.last_use_ms},
                     {"in_use", e.in_use}});
  }
  r["models"] = {{"files", files}, {"download_bytes_per_s", download_bytes_per_s_.load()}};
  return r;
}

std::uint32_t Agent::physical_gpu(std::uint32_t planned) const {
  if (config_.gpu_indices.empty()) return planned;
  return planned < config_.gpu_indices.size()
             ? static_cast<std::uint32_t>(config_.gpu_indices[planned])
             : planned;
}

std::vector<Agent::Holder> Agent::memory_holders() {
  std::vector<Holder> out;
  for (const auto& [id, i] : instances_) {
    const int port = i->assignment.value("server_port", 0);
    for (std::size_t k = 0; k < i->rpc.size() && k < i->rpc_planned.size(); ++k) {
      if (i->rpc[k] && i->rpc[k]->running())
        out.push_back({id, port, static_cast<int>(i->rpc[k]->pid()),
                       static_cast<std::int64_t>(i->rpc_planned[k])});
    }
    if (i->server && i->server->running()) {
      const int pid = static_cast<int>(i->server->pid());
      out.push_back({id, port, pid, -1});
      for (std::uint32_t g : i->server_planned) out.push_back({id, port, pid, g});
    }
  }
  return out;
}

json Agent::instance_reports() {
  json list = json::array();
  for (const auto& [id, i] : instances_) {
    if (i->role != Role::kMain) continue;
    // The port names the placement: the server ignores reports about an older one.
    json r = {{"id", id},
              {"state", text(i->state)},
              {"restarts", i->restarts},
              {"port", i->assignment.value("server_port", 0)}};
    if (i->listen_port > 0) r["listen_port"] = i->listen_port;
    if (i->gave_up) r["gave_up"] = true;
    if (!i->reason.empty()) r["reason"] = i->reason;
    if (i->download) r["download"] = i->download->to_json();  // done: what it cost stays shown
    if (i->state == InstanceState::kError || i->state == InstanceState::kLoading)
      r["log_tail"] = tail_file(i->log_path, 40);
    list.push_back(r);
  }
  return list;
}

json Agent::heartbeat_parts() {
  json body = {{"resources", resources(gpus())}};
  std::lock_guard<std::mutex> lock(reports_mu_);
  body["instances"] = reports_;
  body["memory"] = memory_;
  return body;
}

json Agent::measure_memory(const std::vector<Holder>& holders) {
  const auto on_gpus = simulated_ ? decltype(nvml_process_bytes()){} : nvml_process_bytes();
  std::map<std::string, json> by_instance;
  std::map<std::uint32_t, std::uint64_t> own;
  for (const Holder& h : holders) {
    json& r = by_instance[h.instance];
    if (r.is_null()) r = {{"id", h.instance}, {"port", h.port}, {"devices", json::array()}};
    std::uint64_t bytes = 0;
    if (h.gpu < 0 || simulated_) {
      bytes = process_resident_bytes(h.pid);  // the host's RAM, or a CPU-backed simulated GPU
    } else {
      const std::uint32_t physical = physical_gpu(static_cast<std::uint32_t>(h.gpu));
      const auto it = on_gpus.find({physical, h.pid});
      if (it != on_gpus.end()) bytes = it->second;
      own[physical] += bytes;
    }
    if (bytes == 0) continue;  // not started, or gone
    if (h.gpu < 0) {
      r["host_bytes"] = bytes;
    } else {
      r["devices"].push_back({{"gpu", h.gpu}, {"bytes", bytes}});
    }
  }
  {
    std::lock_guard<std::mutex> lock(own_mu_);
    own_gpu_bytes_ = std::move(own);
  }
  json out = json::array();
  for (auto& [id, r] : by_instance) out.push_back(std::move(r));
  return out;
}

void Agent::reconcile(const json& assignments) {
  std::vector<std::unique_ptr<Instance>> retired;  // stopped after the lock is released
  std::lock_guard<std::mutex> lock(mu_);
  if (retiring_) return;
  std::map<std::string, json> wanted;
  for (const json& a : assignments) wanted[a.value("id", "")] = a;
  // What makes two assignments the same placement (states and reasons change all the time).
  auto placement = [](const json& a) {
    return a.value("rpc_servers", json::array()).dump() + a.value("server", json()).dump() +
           a.value("devices", json::array()).dump() + a.value("model", "");
  };
  // Gone, or placed anew: stop everything of it.
  for (auto it = instances_.begin(); it != instances_.end();) {
    const auto w = wanted.find(it->first);
    if (w == wanted.end() || placement(w->second) != placement(it->second->assignment)) {
      log(config_.name, "stopping " + it->first +
                            (w == wanted.end() ? " (no longer assigned)" : " (placed anew)"));
      retired.push_back(std::move(it->second));
      it = instances_.erase(it);
      reports_stale_ = true;
    } else {
      ++it;
    }
  }
  for (const auto& [id, a] : wanted) {
    if (instances_.count(id)) continue;
    auto inst = std::make_unique<Instance>();
    inst->id = id;
    inst->role = role(a.value("role", "")).value_or(Role::kRpc);
    inst->assignment = a;
    inst->log_path = config_.data_dir + "/logs/" + id + ".log";
    inst->pid_prefix = config_.data_dir + "/pids/" + id;
    try {
      for (const json& r : a.value("rpc_servers", json::array())) {
        plan::RpcServerLaunch launch = plan::rpc_server_launch_from_json(r);
        inst->rpc_planned.push_back(launch.gpu.value_or(0));
        if (simulated_) {
          launch.gpu.reset();  // CPU backend: no CUDA device to select
        } else if (launch.gpu) {
          launch.gpu = physical_gpu(*launch.gpu);
        }
        inst->rpc_launches.push_back(std::move(launch));
      }
      if (inst->role == Role::kMain) {
        if (!a.contains("server")) throw std::invalid_argument("no server in a main's assignment");
        plan::ServerLaunch s = plan::server_launch_from_json(a["server"]);
        if (simulated_) {
          // The main's own GPUs become local CPU rpc-servers after the remote ones: the layout
          // lists remote devices first, and llama.cpp orders RPC devices as --rpc lists them.
          std::uint16_t port = static_cast<std::uint16_t>(a.value("rpc_port_base", 21000) + 12);
          for (std::size_t d = 0; d < s.gpus.size(); ++d, ++port) {
            inst->rpc_launches.push_back({config_.name, "127.0.0.1", port, std::nullopt, true});
            inst->rpc_planned.push_back(s.gpus[d]);
            s.rpc.push_back({"127.0.0.1", port});
          }
          s.gpus.clear();  // and every real GPU hidden
        } else {
          inst->server_planned = s.gpus;
          for (std::uint32_t& g : s.gpus) g = physical_gpu(g);
        }
        inst->server_launch = std::move(s);
      }
    } catch (const std::exception& e) {
      log(config_.name, "assignment " + id + " is unreadable: " + e.what());
      inst->state = InstanceState::kError;
      inst->reason = std::string("unreadable assignment: ") + e.what();
      inst->gave_up = true;
    }
    log(config_.name, "assigned " + id + " as " + text(inst->role) +
                          (simulated_ ? " (simulated GPUs, CPU backend)" : ""));
    instances_[id] = std::move(inst);
    reports_stale_ = true;
  }
}

void Agent::supervise(Instance& i) {
  const auto now = Clock::now();
  // RPC servers: start, and restart when they exit.
  if (i.rpc.size() < i.rpc_launches.size()) i.rpc.resize(i.rpc_launches.size());
  for (std::size_t k = 0; k < i.rpc_launches.size(); ++k) {
    std::unique_ptr<Process>& p = i.rpc[k];
    if (p && p->running()) continue;
    if (p)
      log(config_.name,
          i.id + ": rpc-server exited (code " + std::to_string(p->exit_code()) + "), restarting");
    const plan::Command c = plan::command(i.rpc_launches[k], binary("ggml-rpc-server"));
    if (!p) p = std::make_unique<Process>();
    p->start(c.argv, c.env, i.log_path, 10u << 20,
             i.pid_prefix + "-rpc" + std::to_string(k) + ".pid");
  }
  if (i.role != Role::kMain || !i.server_launch) {
    if (!i.gave_up) i.state = InstanceState::kRunning;
    return;
  }
  // llama-server: after the model is there and every RPC server answers.
  if (i.server && !i.server->running() && !i.exit_noticed) {
    i.exit_noticed = true;
    i.state = InstanceState::kError;
    i.ever_ready = false;
    i.reason = "llama-server exited with code " + std::to_string(i.server->exit_code());
    ++i.restarts;
    i.next_start = now + std::chrono::seconds(std::min(30, 1 << std::min(i.restarts - 1, 5)));
    log(config_.name, i.id + ": " + i.reason + "; restart " + std::to_string(i.restarts) + " soon");
    return;
  }
  if (!i.server || !i.server->running()) {
    if (i.restarts > config_.max_restarts) {
      if (!i.gave_up) {
        i.gave_up = true;
        i.reason =
            "gave up after " + std::to_string(config_.max_restarts) + " restarts: " + i.reason;
        log(config_.name, i.id + ": " + i.reason);
      }
      return;
    }
    if (now < i.next_start) return;
    std::string downloaded;
    if (!model_ready(i, &downloaded)) return;
    const std::string model = i.assignment.value("model", "");
    if (!model.empty() && model.find("://") == std::string::npos &&
        !gguf::inside_roots(model, config_.model_roots)) {
      i.state = InstanceState::kError;
      i.reason = "model file " + model + " is outside the model roots of worker " + config_.name +
                 " (--model-root)";
      i.gave_up = true;  // it never will be inside: the server places it elsewhere
      return;
    }
    if (!model.empty() && model.find("://") == std::string::npos &&
        !std::filesystem::exists(model)) {
      i.state = InstanceState::kError;
      i.reason = "model file " + model + " not found on worker " + config_.name;
      i.next_start = now + std::chrono::seconds(5);
      return;
    }
    for (const plan::Endpoint& e : i.server_launch->rpc) {
      if (!port_open(e.host, e.port)) {
        if (i.state != InstanceState::kError) i.state = InstanceState::kStarting;
        if (i.state != InstanceState::kError) i.reason = "waiting for rpc-server " + e.text();
        return;
      }
    }
    // The planned port may be held by another program: skip to the next free one and say so.
    const int planned = i.assignment.value("server_port", 0);
    int port = planned;
    while (port > 0 && port < planned + 200 && port < 65536 && !port_free(config_.address, port))
      ++port;
    if (port >= planned + 200 || port >= 65536) {
      i.state = InstanceState::kError;
      i.reason = "ports " + std::to_string(planned) + " to " + std::to_string(planned + 199) +
                 " are all taken on " + config_.address;
      i.next_start = now + std::chrono::seconds(5);
      return;
    }
    plan::ServerLaunch launch = *i.server_launch;
    launch.port = static_cast<std::uint16_t>(port);
    if (!downloaded.empty()) launch.model = downloaded;  // the cache's copy, shards beside it
    plan::Command c = plan::command(launch, binary("llama-server"));
    // Its API key through the environment (not argv, which every local user can read).
    const std::string key = i.assignment.value("instance_key", "");
    if (!key.empty()) c.env["LLAMA_API_KEY"] = key;
    if (port != planned)
      log(config_.name,
          i.id + ": port " + std::to_string(planned) + " is taken; using " + std::to_string(port));
    i.listen_port = port;
    if (!i.server) i.server = std::make_unique<Process>();
    i.server->start(c.argv, c.env, i.log_path, 10u << 20, i.pid_prefix + "-server.pid");
    i.exit_noticed = false;
    i.ever_ready = false;
    i.state = InstanceState::kLoading;
    log(config_.name, i.id + ": started llama-server on port " + std::to_string(port) + " (" +
                          std::to_string(i.server_launch->rpc.size()) + " RPC device(s))");
    return;
  }
  // The process runs. Before it was first ready, /health decides loading -> running. After that,
  // a slow or refused probe means busy, not broken: liveness is the process itself (its exit is
  // caught above), so a loaded instance is never reported "loading" and refused by the proxy.
  if (i.ever_ready) {
    if (i.restarts > 0 && now - i.ready_since > std::chrono::seconds(config_.healthy_reset_s)) {
      log(config_.name, i.id + ": healthy for " + std::to_string(config_.healthy_reset_s) +
                            " s; restart count reset");
      i.restarts = 0;
    }
    return;
  }
  httplib::Client c(config_.address, i.listen_port);
  c.set_connection_timeout(1);
  c.set_read_timeout(2);
  const httplib::Result r = c.Get("/health");
  if (r && r->status == 200) {
    log(config_.name, i.id + ": ready");
    i.state = InstanceState::kRunning;
    i.reason.clear();
    i.ever_ready = true;
    i.ready_since = now;
  } else if (i.state != InstanceState::kError) {
    i.state = InstanceState::kLoading;
  }
}

bool Agent::model_ready(Instance& i, std::string* path) {
  const json files = i.assignment.value("model_files", json::array());
  if (!files.is_array() || files.empty()) return true;  // a path on this worker
  if (!i.model) {
    try {
      i.model = cache_->acquire(model::files_from_json(files));
    } catch (const std::exception& e) {
      i.state = InstanceState::kError;
      i.reason = std::string("the assignment's model files are unreadable: ") + e.what();
      i.gave_up = true;
      return false;
    }
    log(config_.name, i.id + ": downloading " + i.assignment.value("model", "") + " (" +
                          std::to_string(files.size()) + " file(s)) into the cache");
    i.download_started = Clock::now();
  }
  const DownloadStatus d = i.model->status();
  i.download = d;
  if (d.phase == DownloadStatus::Phase::kDone) {
    if (i.download_failures > 0 || i.state == InstanceState::kDownloading)
      log(config_.name, i.id + ": model ready in the cache (" + std::to_string(d.fetched_bytes) +
                            " bytes fetched, " + std::to_string(d.refetched_bytes) +
                            " of them again after " + std::to_string(d.interruptions) +
                            " interruption(s))");
    if (i.state == InstanceState::kDownloading || i.download_failures > 0) {
      i.state = InstanceState::kStarting;  // the download's progress (or error) is no reason now
      i.reason.clear();
    }
    i.download_failures = 0;
    const double took_s = std::chrono::duration<double>(Clock::now() - i.download_started).count();
    if (d.fetched_bytes > (64u << 20) && took_s > 0 && !i.download_rated) {
      download_bytes_per_s_ = static_cast<double>(d.fetched_bytes) / took_s;  // for the planner
      i.download_rated = true;
    }
    *path = i.model->path();
    return true;
  }
  if (d.phase == DownloadStatus::Phase::kFailed) {
    // Tried again later (a new download resumes what the last one saved), waiting longer each
    // time; the error stays visible meanwhile.
    ++i.download_failures;
    i.state = InstanceState::kError;
    i.reason = "download failed: " + d.error;
    i.model.reset();
    i.next_start = Clock::now() +
                   std::chrono::seconds(std::min(300, 10 << std::min(i.download_failures - 1, 5)));
    log(config_.name, i.id + ": " + i.reason);
    return false;
  }
  i.state = InstanceState::kDownloading;
  i.reason = "downloading " + cluster::format_bytes(d.done_bytes) + " of " +
             cluster::format_bytes(d.total_bytes);
  if (d.rate_bytes_per_s > 0)
    i.reason +=
        " at " + cluster::format_bytes(static_cast<std::uint64_t>(d.rate_bytes_per_s)) + "/s";
  if (d.phase == DownloadStatus::Phase::kVerifying)
    i.reason = "verifying the sha256 of the download";
  return false;
}

std::unique_ptr<httplib::Client> Agent::client(const std::string& url) const {
  auto c = std::make_unique<httplib::Client>(url);
  if (!config_.ca_cert.empty()) c->set_ca_cert_path(config_.ca_cert);
  return c;
}

void Agent::register_self(const std::atomic<bool>& stop, const std::vector<GpuInfo>& gpus) {
  const std::string credentials = config_.data_dir + "/credentials";
  std::string saved;
  {
    std::ifstream in(credentials);
    std::getline(in, saved);
  }
  json registration = {{"name", config_.name},
                       {"address", config_.address},
                       {"labels", {{"simulated", simulated_ ? "true" : "false"}}},
                       {"resources", resources(gpus)}};
  if (!saved.empty()) registration["worker_key"] = saved;
  if (!stale_.empty()) registration["stale_processes"] = stale_;
  // From next_server_ on, the next server after each one that does not answer (or answers 5xx).
  std::string server;
  auto attempt = [&](int k) {
    server = servers_[(next_server_ + static_cast<std::size_t>(k)) % servers_.size()];
    const std::unique_ptr<httplib::Client> api = client(server);
    api->set_connection_timeout(servers_.size() > 1 ? 2 : 5);
    api->set_read_timeout(60);
    api->set_tcp_nodelay(true);
    return api->Post("/v1/workers/register", {{"Authorization", "Bearer " + config_.join_token}},
                     registration.dump(), "application/json");
  };
  httplib::Result r = attempt(0);
  const auto untrusted = [&] { return !r && r.error() == httplib::Error::SSLServerVerification; };
  for (int k = 1; k < 50 && !stop && (!r || r->status >= 500) && !untrusted(); ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    r = attempt(k);
  }
  if (!r || r->status != 201) {
    std::string why = r ? std::to_string(r->status) + " " : httplib::to_string(r.error());
    if (untrusted())
      why = "its TLS certificate is not trusted (" + why +
            "); for a self-signed certificate give --ca-cert with its PEM file";
    if (r) {
      const json body = json::parse(r->body, nullptr, false);
      why += body.is_object() && body.contains("error") ? body["error"].dump() : r->body;
    }
    throw std::runtime_error("cannot register with " + config_.server + ": " + why);
  }
  next_server_ = static_cast<std::size_t>(std::find(servers_.begin(), servers_.end(), server) -
                                          servers_.begin());
  {
    std::lock_guard<std::mutex> lock(key_mu_);
    registered_resources_ = registration["resources"];
    ++registrations_;
  }
  const json reply = json::parse(r->body);
  const std::string key = reply["key"].get<std::string>();
  // Heartbeats and polls go to the server's worker-only listener (no client load there), when
  // this worker can reach it; else to the public address it registered on.
  std::string endpoint = server;
  const int worker_port = reply.value("worker_port", -1);
  const auto scheme = server.find("://");
  const auto host_start = scheme == std::string::npos ? 0 : scheme + 3;
  const auto host_end = server.find('/', host_start);
  const std::string authority = server.substr(host_start, host_end - host_start);
  const auto colon = authority.rfind(':');
  if (worker_port > 0 && authority.find(']') == std::string::npos) {
    const std::string candidate = server.substr(0, host_start) + authority.substr(0, colon) + ":" +
                                  std::to_string(worker_port);
    const std::unique_ptr<httplib::Client> probe = client(candidate);
    probe->set_connection_timeout(2);
    probe->set_read_timeout(5);
    const httplib::Result ok = probe->Get("/healthz");
    if (ok && ok->status == 200) endpoint = candidate;
  }
  {
    std::lock_guard<std::mutex> lock(key_mu_);
    worker_server_ = endpoint;
    public_server_ = server;
  }
  {
    std::lock_guard<std::mutex> lock(key_mu_);
    key_ = key;
  }
  stale_.clear();
  std::error_code ec;
  std::filesystem::remove(credentials + ".tmp", ec);
  {
    std::ofstream out(credentials + ".tmp", std::ios::trunc);
    out << key << "\n";
  }
  std::filesystem::permissions(
      credentials + ".tmp",
      std::filesystem::perms::owner_read | std::filesystem::perms::owner_write, ec);
  std::filesystem::rename(credentials + ".tmp", credentials, ec);
}

void Agent::run(const std::atomic<bool>& stop) {
  std::vector<GpuInfo> gpus = declared_;
  std::string why;
  if (!simulated_) gpus = nvml_gpus(&why);
  register_self(stop, gpus);
  log(config_.name,
      "joined " + public_server() + " (heartbeats to " + worker_endpoint() + ") with " +
          std::to_string(gpus.size()) + " GPU(s)" +
          (simulated_    ? " (SIMULATED: declared GPUs served by llama.cpp's CPU backend)"
           : why.empty() ? ""
                         : " (" + why + ")"));
  auto auth = [this] {  // key_ changes when the agent registers again
    std::lock_guard<std::mutex> lock(key_mu_);
    return httplib::Headers{{"Authorization", "Bearer " + key_}};
  };
  std::atomic<bool> poll_stop{false};
  // A client for the worker endpoint, made again when registration changes it.
  auto client_for = [this](std::unique_ptr<httplib::Client>& c, std::string& at, int read_s) {
    const std::string now = worker_endpoint();
    if (c && at == now) return;
    at = now;
    c = client(at);
    c->set_connection_timeout(2);
    c->set_read_timeout(read_s);
    c->set_tcp_nodelay(true);
  };
  // The poller's client, so that stopping can cut its long poll short (httplib's stop()).
  std::mutex poll_client_mu;
  httplib::Client* poll_client = nullptr;
  std::thread poller([&] {
    std::unique_ptr<httplib::Client> c;
    std::string at;
    std::int64_t since = -1;
    while (!stop && !poll_stop) try {
        {
          std::lock_guard<std::mutex> lock(poll_client_mu);
          client_for(c, at, 60);
          poll_client = c.get();
        }
        if (poll_stop) break;
        const std::string path = "/v1/workers/" + config_.name +
                                 "/assignments?since=" + std::to_string(since) + "&wait=5";
        const httplib::Result a = c->Get(path.c_str(), auth());
        if (!a || a->status != 200) {
          std::this_thread::sleep_for(std::chrono::milliseconds(500));
          continue;
        }
        const json j = json::parse(a->body, nullptr, false);
        if (j.is_discarded()) continue;
        since = j.value("version", since);
        reconcile(j.value("instances", json::array()));
        // The server had no long-poll slot free: ask again when it says.
        const auto again = Clock::now() + std::chrono::milliseconds(j.value("retry_after_ms", 0));
        while (!stop && !poll_stop && Clock::now() < again)
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
      } catch (const std::exception& e) {
        log(config_.name, std::string("assignment poll failed: ") + e.what());
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
      }
    std::lock_guard<std::mutex> lock(poll_client_mu);
    poll_client = nullptr;  // (c goes with this thread)
  });
  // Heartbeats from their own thread, so that stopping or checking processes never delays them.
  std::thread beater([&] {
    std::unique_ptr<httplib::Client> c;
    std::string at;
    int unanswered = 0;
    std::string refusal;  // the body of the last refused heartbeat
    HeartbeatDelta delta(kFullReportEvery,
                         static_cast<std::uint32_t>(std::hash<std::string>{}(config_.name)));
    int registered = -1;  // the registration delta knows of
    while (!stop && !poll_stop) {
      try {
        client_for(c, at, 10);
        {
          // Registered (again, maybe with another server): it carried the resources.
          std::lock_guard<std::mutex> lock(key_mu_);
          if (registered != registrations_) {
            registered = registrations_;
            delta.registered(registered_resources_, Clock::now());
          }
        }
        if (reports_stale_.exchange(false)) delta.forget("instances");
        const auto sent_at = Clock::now();
        const HeartbeatDelta::Beat beat = delta.next(heartbeat_parts(), sent_at);
        const httplib::Result h = c->Post(
            ("/v1/workers/" + config_.name + "/heartbeat").c_str(), auth(),
            beat.body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
        unanswered = h ? 0 : unanswered + 1;
        if (unanswered >= 3 && (at != public_server() || servers_.size() > 1)) {
          // The worker listener went away (a restarted server listens elsewhere): register
          // again through the public address, which says where it is now. With several
          // servers, the next one: this one may be down.
          if (servers_.size() > 1) next_server_ = (next_server_ + 1) % servers_.size();
          log(config_.name,
              "no answer from " + at + "; registering again with " + servers_[next_server_]);
          std::vector<GpuInfo> now_gpus = declared_;
          if (!simulated_) now_gpus = nvml_gpus();
          register_self(stop, now_gpus);
          unanswered = 0;
        }
        if (h && h->status >= 400 && h->status != 401 && h->body != refusal) {
          // Said once per reason: a refused heartbeat leaves the worker unreachable for the server.
          log(config_.name, "the server refused a heartbeat (HTTP " + std::to_string(h->status) +
                                "): " + h->body);
        }
        if (h) refusal = h->status >= 400 ? h->body : "";
        if (h && h->status == 200) {
          delta.acknowledged(beat, sent_at);
          // Files an admin removes from this worker's cache (`ggfleet models rm`).
          const json answer = json::parse(h->body, nullptr, false);
          // The server wants every part again (it had lost track of this worker).
          if (answer.is_object() && answer.value("send_all", false)) delta.forget();
          const json remove =
              answer.is_object() ? answer.value("remove_models", json::array()) : json::array();
          for (const json& key : remove) {
            if (!key.is_string()) continue;
            const bool removed = cache_->remove(key.get<std::string>());
            log(config_.name, (removed ? "removed " : "did not remove (held, or not there) ") +
                                  key.get<std::string>() + " from the model cache");
          }
        }
        if (h && h->status == 401) {
          log(config_.name, "the server refuses this worker's credentials (" + h->body +
                                "): it was removed or its database replaced; registering again");
          std::vector<GpuInfo> now_gpus = declared_;
          if (!simulated_) now_gpus = nvml_gpus();
          register_self(stop, now_gpus);
          log(config_.name, "registered again");
        }
      } catch (const std::exception& e) {
        log(config_.name, std::string("heartbeat failed: ") + e.what());
      }
      const auto until = Clock::now() + std::chrono::milliseconds(config_.heartbeat_ms);
      while (!stop && Clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
  Clock::time_point measured_at{};
  while (!stop) {
    json reports;
    std::vector<Holder> holders;
    const bool measure =
        Clock::now() - measured_at >= std::chrono::milliseconds(config_.heartbeat_ms);
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [id, i] : instances_) supervise(*i);
      reports = instance_reports();
      if (measure) holders = memory_holders();
    }
    // Read outside the lock: NVML and /proc take their time.
    json memory;
    if (measure) {
      measured_at = Clock::now();
      memory = measure_memory(holders);
    }
    {
      std::lock_guard<std::mutex> lock(reports_mu_);
      reports_ = reports;
      if (measure) memory_ = std::move(memory);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  beater.join();
  poll_stop = true;
  {
    std::lock_guard<std::mutex> lock(poll_client_mu);
    if (poll_client) poll_client->stop();
  }
  {
    // The children stop now, not once the long poll in flight returns (up to its wait later).
    std::lock_guard<std::mutex> lock(mu_);
    retiring_ = true;
    instances_.clear();
  }
  poller.join();
  log(config_.name, "stopped");
}

}  // namespace ggfleet::worker
