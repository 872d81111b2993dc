#include "server/scheduler.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <stdexcept>

#include "cluster/catalog.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "plan/report.h"

namespace ggfleet::server {
namespace {

using nlohmann::json;

std::uint64_t uint_field(const json& j, const char* key, std::uint64_t max = UINT64_MAX) {
  const json& v = j.at(key);
  if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::uint64_t>() > max) {
    throw std::invalid_argument(std::string(key) + " must be a non-negative integer" +
                                (max < UINT64_MAX ? " up to " + std::to_string(max) : ""));
  }
  return v.get<std::uint64_t>();
}

double number_field(const json& j, const char* key) {
  const json& v = j.at(key);
  if (!v.is_number()) throw std::invalid_argument(std::string(key) + " must be a number");
  return v.get<double>();
}

bool bool_field(const json& j, const char* key) {
  if (!j.at(key).is_boolean())
    throw std::invalid_argument(std::string(key) + " must be true or false");
  return j.at(key).get<bool>();
}

std::string string_field(const json& j, const char* key) {
  if (!j.at(key).is_string()) throw std::invalid_argument(std::string(key) + " must be a string");
  return j.at(key).get<std::string>();
}

gguf::GgmlType cache_type(const std::string& name, const char* key) {
  const auto t = gguf::type_from_name(name);
  if (!t) throw std::invalid_argument(std::string(key) + ": unknown type '" + name + "'");
  return *t;
}

}  // namespace

plan::Request request_from_options(const json& o, const std::string& model) {
  if (!o.is_object()) throw std::invalid_argument("options must be an object");
  static const std::set<std::string> known = {"context",
                                              "parallel",
                                              "cache_type_k",
                                              "cache_type_v",
                                              "flash_attn",
                                              "batch_size",
                                              "ubatch_size",
                                              "policy",
                                              "allow_distributed",
                                              "allow_cpu_offload",
                                              "max_rpc_servers",
                                              "selector",
                                              "gpus",
                                              "ngl",
                                              "tensor_split",
                                              "extra_args",
                                              "threads",
                                              "tie_tolerance"};
  for (const auto& [k, v] : o.items()) {
    if (!known.count(k)) throw std::invalid_argument("unknown option '" + k + "'");
  }
  plan::Request r;
  r.model_path = model;
  r.context.context_tokens = 4096;
  if (o.contains("context"))
    r.context.context_tokens = static_cast<std::uint32_t>(uint_field(o, "context", 1u << 24));
  if (o.contains("parallel"))
    r.context.parallel = static_cast<std::uint32_t>(uint_field(o, "parallel", 256));
  if (r.context.parallel == 0) throw std::invalid_argument("parallel must be at least 1");
  if (o.contains("batch_size"))
    r.context.batch_tokens = static_cast<std::uint32_t>(uint_field(o, "batch_size", 1u << 20));
  if (o.contains("ubatch_size"))
    r.context.ubatch_tokens = static_cast<std::uint32_t>(uint_field(o, "ubatch_size", 1u << 20));
  if (r.context.batch_tokens == 0 || r.context.ubatch_tokens == 0) {
    throw std::invalid_argument("batch_size and ubatch_size must be at least 1");
  }
  if (o.contains("cache_type_k"))
    r.context.cache_type_k = cache_type(string_field(o, "cache_type_k"), "cache_type_k");
  if (o.contains("cache_type_v"))
    r.context.cache_type_v = cache_type(string_field(o, "cache_type_v"), "cache_type_v");
  if (o.contains("flash_attn")) {
    const std::string fa = string_field(o, "flash_attn");
    if (fa == "on")
      r.context.flash_attention = estimate::FlashAttention::kOn;
    else if (fa == "off")
      r.context.flash_attention = estimate::FlashAttention::kOff;
    else if (fa == "auto")
      r.context.flash_attention = estimate::FlashAttention::kAuto;
    else
      throw std::invalid_argument("flash_attn must be on, off or auto");
  }
  if (o.contains("policy")) {
    const std::string p = string_field(o, "policy");
    if (p != "spread" && p != "binpack")
      throw std::invalid_argument("policy must be spread or binpack");
    r.policy = p == "spread" ? plan::Policy::kSpread : plan::Policy::kBinpack;
  }
  if (o.contains("allow_distributed")) r.allow_distributed = bool_field(o, "allow_distributed");
  if (o.contains("allow_cpu_offload")) r.allow_cpu_offload = bool_field(o, "allow_cpu_offload");
  if (o.contains("max_rpc_servers"))
    r.max_rpc_servers = static_cast<std::uint32_t>(uint_field(o, "max_rpc_servers", 256));
  if (o.contains("threads")) r.threads = static_cast<std::uint32_t>(uint_field(o, "threads", 1024));
  if (o.contains("tie_tolerance")) {
    r.tie_tolerance = number_field(o, "tie_tolerance");
    if (!(r.tie_tolerance >= 0 && r.tie_tolerance < 1))
      throw std::invalid_argument("tie_tolerance must be in [0, 1)");
  }
  if (o.contains("selector")) {
    if (!o["selector"].is_object())
      throw std::invalid_argument("selector must be an object of strings");
    for (const auto& [k, v] : o["selector"].items()) {
      if (!v.is_string()) throw std::invalid_argument("selector." + k + " must be a string");
      r.selector[k] = v.get<std::string>();
    }
  }
  if (o.contains("gpus")) {
    if (!o["gpus"].is_array())
      throw std::invalid_argument("gpus must be an array of \"worker:index\"");
    for (const json& g : o["gpus"]) {
      const std::optional<cluster::GpuAddress> a =
          cluster::parse_gpu_address(g.is_string() ? g.get<std::string>() : "");
      if (!a) throw std::invalid_argument("gpus: '" + g.dump() + "' is not \"worker:index\"");
      r.gpus.push_back({a->worker, a->gpu});
    }
  }
  if (o.contains("ngl")) {
    if (!o["ngl"].is_number_integer() || o["ngl"].get<std::int64_t>() < -1 ||
        o["ngl"].get<std::int64_t>() > 100000) {
      throw std::invalid_argument("ngl must be -1 (all) or a layer count");
    }
    r.gpu_layers = static_cast<std::int32_t>(o["ngl"].get<std::int64_t>());
  }
  if (o.contains("tensor_split")) {
    if (!o["tensor_split"].is_array())
      throw std::invalid_argument("tensor_split must be an array of numbers");
    for (const json& v : o["tensor_split"]) {
      if (!v.is_number() || v.get<double>() < 0)
        throw std::invalid_argument("tensor_split values must be >= 0");
      r.tensor_split.push_back(v.get<double>());
    }
  }
  if (o.contains("extra_args")) {
    if (!o["extra_args"].is_array())
      throw std::invalid_argument("extra_args must be an array of strings");
    for (const json& v : o["extra_args"]) {
      if (!v.is_string()) throw std::invalid_argument("extra_args must be an array of strings");
      r.extra_args.push_back(v.get<std::string>());
    }
  }
  return r;
}

cluster::Worker worker_from_resources(const std::string& name, const std::string& address,
                                      const json& labels, const json& res) {
  if (!res.is_object()) throw std::invalid_argument("resources must be an object");
  cluster::Worker w;
  w.name = name;
  w.address = address.empty() ? name : address;
  if (labels.is_object()) {
    for (const auto& [k, v] : labels.items()) {
      if (!v.is_string()) throw std::invalid_argument("labels." + k + " must be a string");
      w.labels[k] = v.get<std::string>();
    }
  }
  static const std::set<std::string> known = {"cpu", "ram", "reserved", "gpus", "simulated"};
  for (const auto& [k, v] : res.items()) {
    if (!known.count(k)) throw std::invalid_argument("unknown resource '" + k + "'");
  }
  if (res.contains("cpu")) {
    const json& c = res["cpu"];
    if (!c.is_object()) throw std::invalid_argument("cpu must be an object");
    if (c.contains("cores"))
      w.cpu.cores = static_cast<std::uint32_t>(uint_field(c, "cores", 1u << 16));
    if (c.contains("memory_bandwidth"))
      w.cpu.memory_bandwidth_bytes_per_s = number_field(c, "memory_bandwidth");
  }
  if (w.cpu.cores == 0) w.cpu.cores = 8;
  if (!(w.cpu.memory_bandwidth_bytes_per_s > 0)) {
    w.cpu.memory_bandwidth_bytes_per_s =
        std::min(200e9, w.cpu.cores * cluster::kDefaultCpuBandwidthPerCore);
  }
  if (res.contains("ram")) {
    const json& r = res["ram"];
    if (!r.is_object()) throw std::invalid_argument("ram must be an object");
    if (r.contains("total")) w.ram_bytes = uint_field(r, "total");
    if (r.contains("used")) w.ram_used_bytes = uint_field(r, "used");
  }
  if (res.contains("reserved")) {
    const json& r = res["reserved"];
    if (!r.is_object()) throw std::invalid_argument("reserved must be an object");
    if (r.contains("ram")) w.reserved_ram_bytes = uint_field(r, "ram");
    if (r.contains("vram")) w.reserved_vram_bytes = uint_field(r, "vram");
  }
  if (res.contains("gpus")) {
    if (!res["gpus"].is_array()) throw std::invalid_argument("gpus must be an array");
    for (const json& g : res["gpus"]) {
      if (!g.is_object() || !g.contains("name") || !g["name"].is_string()) {
        throw std::invalid_argument("every GPU needs a name");
      }
      cluster::Gpu gpu;
      gpu.name = g["name"].get<std::string>();
      if (const auto spec = cluster::find_gpu(gpu.name)) {
        gpu.vram_bytes = spec->vram_bytes;
        gpu.memory_bandwidth_bytes_per_s = spec->memory_bandwidth_bytes_per_s;
        gpu.fp16_flops = spec->fp16_flops;
        gpu.int8_ops = spec->int8_ops;
      } else if (!g.contains("vram") || !g.contains("memory_bandwidth") || !g.contains("fp16")) {
        throw std::invalid_argument(
            "GPU '" + gpu.name + "' is not in the catalog: give vram, memory_bandwidth and fp16");
      }
      if (g.contains("vram")) gpu.vram_bytes = uint_field(g, "vram");
      if (g.contains("used"))
        gpu.used_bytes = std::min<std::uint64_t>(uint_field(g, "used"), gpu.vram_bytes);
      if (g.contains("memory_bandwidth"))
        gpu.memory_bandwidth_bytes_per_s = number_field(g, "memory_bandwidth");
      if (g.contains("fp16")) gpu.fp16_flops = number_field(g, "fp16");
      if (!(gpu.memory_bandwidth_bytes_per_s > 0) || !(gpu.fp16_flops > 0)) {
        throw std::invalid_argument("GPU '" + gpu.name +
                                    "': memory_bandwidth and fp16 must be positive");
      }
      w.gpus.push_back(gpu);
    }
  }
  return w;
}

cluster::Cluster live_cluster(const std::vector<store::WorkerRow>& workers,
                              const std::vector<store::ClaimRow>& claims,
                              const std::string& except_instance) {
  cluster::Cluster c;
  for (const store::WorkerRow& row : workers) {
    if (row.status != "ready") continue;
    try {
      c.workers.push_back(worker_from_resources(row.name, row.address, json::parse(row.labels_json),
                                                json::parse(row.resources_json)));
    } catch (const std::exception&) {
      continue;  // validated at registration; a row that no longer parses is left out
    }
  }
  for (const store::ClaimRow& claim : claims) {
    if (claim.instance == except_instance) continue;
    for (cluster::Worker& w : c.workers) {
      if (w.name != claim.worker) continue;
      if (claim.gpu < 0) {
        w.claimed_ram_bytes += static_cast<std::uint64_t>(claim.bytes);
      } else if (static_cast<std::size_t>(claim.gpu) < w.gpus.size()) {
        cluster::Gpu& g = w.gpus[static_cast<std::size_t>(claim.gpu)];
        g.claimed_bytes += static_cast<std::uint64_t>(claim.bytes);
        if (claim.rpc) g.lent_to = claim.instance;
      }
    }
  }
  return c;
}

Scheduler::Scheduler(store::Store& store, SchedulerConfig config)
    : store_(store), config_(config), started_ms_(store::now_ms()) {}

void replan(store::Store& store, const store::InstanceRow& instance, const std::string& reason,
            const std::string& avoid_worker) {
  json avoid = json::parse(instance.assignment_json, nullptr, false);
  avoid = avoid.is_object() ? avoid.value("avoid", json::array()) : json::array();
  if (!avoid.is_array()) avoid = json::array();
  if (!avoid_worker.empty() && std::find(avoid.begin(), avoid.end(), avoid_worker) == avoid.end())
    avoid.push_back(avoid_worker);
  store.transaction([&] {
    store::InstanceRow p = instance;
    p.state = "pending";
    p.main_worker.clear();
    p.assignment_json = avoid.empty() ? "{}" : json{{"avoid", avoid}}.dump();
    p.reason = reason;
    p.updated_ms = store::now_ms();
    store.put_instance(p);
    store.set_claims(instance.id, {});
    store.bump_assignment_version();
    store.event("instance.replanned", instance.id, reason);
  });
}

std::shared_ptr<const estimate::ModelMemory> Scheduler::model(const std::string& path) {
  {
    std::lock_guard<std::mutex> lock(models_mu_);
    if (const auto it = models_.find(path); it != models_.end()) return it->second;
  }
  const gguf::Model file = gguf::Model::open(path);
  auto m = std::make_shared<const estimate::ModelMemory>(
      estimate::ModelMemory::from(file, model::profile(file)));
  std::lock_guard<std::mutex> lock(models_mu_);
  models_[path] = m;
  return m;
}

namespace {

// Lower is removed first when scaling down.
int keep_rank(const store::InstanceRow& i) {
  if (i.state == "pending") return 0;
  if (i.state == "error") return 1;
  if (i.state == "running") return 3;
  return 2;
}

bool on_worker(const store::InstanceRow& i, const std::vector<store::ClaimRow>& claims,
               const std::string& worker) {
  if (i.main_worker == worker) return true;
  return std::any_of(claims.begin(), claims.end(), [&](const store::ClaimRow& c) {
    return c.instance == i.id && c.worker == worker;
  });
}

}  // namespace

void Scheduler::place(const store::InstanceRow& instance, const store::DeploymentRow& d,
                      ReconcileStats& stats) {
  std::string reason;
  try {
    const plan::Request request = request_from_options(json::parse(d.options_json), d.model);
    const std::shared_ptr<const estimate::ModelMemory> m = model(d.model);
    const auto t0 = std::chrono::steady_clock::now();
    cluster::Cluster fleet = live_cluster(store_.workers(), store_.claims(), instance.id);
    plan::Request one = request;
    one.replicas = 1;
    one.server_port = static_cast<std::uint16_t>(config_.instance_port_base);
    one.rpc_port_base = static_cast<std::uint16_t>(config_.rpc_port_base);
    // Workers where this instance kept crashing are avoided while anything else fits.
    json avoid = json::parse(instance.assignment_json, nullptr, false);
    avoid = avoid.is_object() ? avoid.value("avoid", json::array()) : json::array();
    plan::Plan p;
    if (avoid.is_array() && !avoid.empty()) {
      cluster::Cluster others = fleet;
      std::erase_if(others.workers, [&](const cluster::Worker& w) {
        return std::find(avoid.begin(), avoid.end(), w.name) != avoid.end();
      });
      p = plan::make_plan(*m, others, one);
      if (p.feasible) fleet = std::move(others);
    }
    if (!p.feasible) p = plan::make_plan(*m, fleet, one);
    if (p.feasible) {
      // Fresh ports for every placement (a re-placed instance must not wait for the old sockets'
      // TIME_WAIT on a shared host); unique among the last 500 placements. The counter moves only
      // for placements that are made.
      const std::int64_t n = std::stoll(store_.next_id("placements"));
      one.server_port = static_cast<std::uint16_t>(config_.instance_port_base + n % 500);
      one.rpc_port_base = static_cast<std::uint16_t>(config_.rpc_port_base + (n % 500) * 16);
      p.replicas.front().commands = plan::commands_for(p.replicas.front().chosen, fleet, one);
    }
    stats.planning_s +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (p.feasible) {
      const plan::Replica& rep = p.replicas.front();
      store::InstanceRow placed = instance;
      placed.state = "assigned";
      placed.main_worker = rep.chosen.main_worker;
      placed.reason.clear();
      placed.predicted_tokens_per_s = rep.chosen.prediction.generation_tokens_per_s;
      placed.updated_ms = store::now_ms();
      json assignment;
      assignment["plan"] = plan::candidate_json(rep.chosen, fleet);
      assignment["commands"] = plan::commands_json(rep.commands);
      assignment["model"] = d.model;
      assignment["server_port"] = one.server_port;
      assignment["rpc_port_base"] = one.rpc_port_base;
      assignment["slots"] = one.context.parallel;  // the proxy forwards this many at once
      if (avoid.is_array() && !avoid.empty()) assignment["avoid"] = avoid;
      placed.assignment_json = assignment.dump();
      std::vector<store::ClaimRow> claims;
      for (std::size_t k = 0; k < rep.chosen.places.size(); ++k) {
        claims.push_back({instance.id, rep.chosen.places[k].worker,
                          static_cast<std::int64_t>(rep.chosen.places[k].gpu),
                          static_cast<std::int64_t>(rep.chosen.estimate.devices[k].total_bytes),
                          rep.chosen.layout.devices[k].remote});
      }
      claims.push_back({instance.id, rep.chosen.main_worker, -1,
                        static_cast<std::int64_t>(rep.chosen.estimate.host.total_bytes), false});
      // The assignment and its claims in one transaction, checked against the claims as they are
      // now (nothing else writes claims, but the deployment may have gone meanwhile).
      bool written = false;
      store_.transaction([&] {
        if (!store_.deployment(d.name) || !store_.instance(instance.id)) return;
        store_.put_instance(placed);
        store_.set_claims(instance.id, claims);
        store_.bump_assignment_version();
        char msg[256];
        std::snprintf(msg, sizeof msg,
                      "assigned: main %s, %zu GPU(s), %u CPU layer(s), predicted %.2f tokens/s",
                      rep.chosen.main_worker.c_str(), rep.chosen.places.size(),
                      rep.chosen.cpu_layers(), rep.chosen.prediction.generation_tokens_per_s);
        store_.event("instance.assigned", instance.id, msg);
        written = true;
      });
      if (written) ++stats.placed;
      return;
    }
    reason = p.reason;
  } catch (const std::exception& e) {
    reason = std::string("cannot plan: ") + e.what();
  }
  ++stats.pending;
  if (reason != instance.reason) {
    store::InstanceRow pending = instance;
    pending.reason = reason;
    pending.updated_ms = store::now_ms();
    store_.transaction([&] {
      if (!store_.instance(instance.id)) return;
      store_.put_instance(pending);
      store_.event("instance.pending", instance.id, reason);
    });
  }
}

ReconcileStats Scheduler::reconcile() {
  ReconcileStats stats;
  const std::int64_t now = store::now_ms();
  // 1. Workers that stopped heartbeating; their instances after the grace period.
  std::vector<store::WorkerRow> workers = store_.workers();
  std::set<std::string> gone;
  for (store::WorkerRow& w : workers) {
    // Silence counts from this scheduler's start at the earliest: while the server was down, no
    // worker could heartbeat.
    const std::int64_t silent = now - std::max(w.last_heartbeat_ms, started_ms_);
    if (w.status == "ready" && silent > config_.heartbeat_timeout_ms) {
      store_.transaction([&] {
        store_.set_worker_status(w.name, "unreachable");
        store_.event("worker.unreachable", w.name,
                     "no heartbeat for " + std::to_string(silent / 1000) + " s");
      });
      w.status = "unreachable";
    }
    if (w.status == "unreachable" &&
        silent > config_.heartbeat_timeout_ms + config_.replan_grace_ms)
      gone.insert(w.name);
  }
  std::set<std::string> known;
  for (const store::WorkerRow& w : workers) known.insert(w.name);
  const std::vector<store::ClaimRow> claims = store_.claims();
  for (const store::InstanceRow& i : store_.instances()) {
    if (i.state == "pending") continue;
    std::string lost;
    for (const std::string& w : gone) {
      if (on_worker(i, claims, w)) lost = w;
    }
    if (lost.empty() && !i.main_worker.empty() && !known.count(i.main_worker)) lost = i.main_worker;
    for (const store::ClaimRow& c : claims) {
      if (lost.empty() && c.instance == i.id && !known.count(c.worker)) lost = c.worker;
    }
    if (lost.empty()) continue;
    replan(store_, i, "worker " + lost + " is gone; re-planning");
    ++stats.replanned;
  }
  // 2. Replica counts, per generation: the current one gets `replicas` instances; older ones
  // (a PATCH changed model or options) are removed as current ones run — all at once when the
  // current ones run, one per pass when a current one does not fit while old ones hold memory.
  for (const store::DeploymentRow& d : store_.deployments()) {
    std::vector<store::InstanceRow> current, old;
    for (const store::InstanceRow& i : store_.instances(d.name))
      (i.generation == d.generation ? current : old).push_back(i);
    for (auto have = static_cast<std::int64_t>(current.size()); have < d.replicas; ++have) {
      store::InstanceRow i;
      i.id = d.name + "-" + store_.next_id("instances");
      i.deployment = d.name;
      i.generation = d.generation;
      i.created_ms = i.updated_ms = now;
      i.reason = "waiting for the scheduler";
      store_.transaction([&] {
        if (!store_.deployment(d.name)) return;
        store_.put_instance(i);
        store_.event("instance.created", i.id,
                     "replica of " + d.name +
                         (old.empty() ? "" : " (generation " + std::to_string(d.generation) + ")"));
      });
      ++stats.created;
    }
    auto remove = [&](std::vector<store::InstanceRow>& list, std::size_t keep,
                      const std::string& why) {
      if (list.size() <= keep) return;
      std::sort(list.begin(), list.end(),
                [](const store::InstanceRow& a, const store::InstanceRow& b) {
                  if (keep_rank(a) != keep_rank(b)) return keep_rank(a) < keep_rank(b);
                  if (a.predicted_tokens_per_s != b.predicted_tokens_per_s)
                    return a.predicted_tokens_per_s < b.predicted_tokens_per_s;
                  return a.created_ms > b.created_ms;
                });
      for (std::size_t k = 0; k < list.size() - keep; ++k) {
        store_.transaction([&] {
          store_.delete_instance(list[k].id);
          store_.bump_assignment_version();
          store_.event("instance.removed", list[k].id, why);
        });
        ++stats.removed;
      }
    };
    remove(current, static_cast<std::size_t>(std::max<std::int64_t>(d.replicas, 0)),
           "scaled down " + d.name + " to " + std::to_string(d.replicas));
    if (!old.empty()) {
      std::int64_t running = 0;
      bool blocked = false;  // a current instance that does not fit while old ones hold memory
      for (const store::InstanceRow& i : current) {
        running += i.state == "running";
        blocked = blocked || (i.state == "pending" && i.reason.rfind("does not fit", 0) == 0);
      }
      std::size_t keep = static_cast<std::size_t>(std::max<std::int64_t>(0, d.replicas - running));
      if (blocked) keep = std::min(keep, old.size() - 1);
      remove(old, keep, "replaced by generation " + std::to_string(d.generation) + " of " + d.name);
    }
  }
  // 3. Place pending instances, oldest first.
  std::map<std::string, store::DeploymentRow> deployments;
  for (const store::DeploymentRow& d : store_.deployments()) deployments[d.name] = d;
  for (const store::InstanceRow& i : store_.instances()) {
    if (i.state != "pending") continue;
    const auto it = deployments.find(i.deployment);
    if (it != deployments.end()) place(i, it->second, stats);
  }
  return stats;
}

}  // namespace ggfleet::server
