#include "cli/predict_cmd.h"

#include <cstdio>
#include <iostream>
#include <set>
#include <sstream>

#include "cluster/units.h"
#include "estimate/fit.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/source.h"
#include "plan/report.h"

namespace ggfleet::cli {
namespace {

std::string gb(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", bytes / 1e9);
  return buf;
}

std::string fixed(double v, int digits) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

// Why a layout does not fit, one line per device over its memory.
std::string overflow(const estimate::Estimate& e) {
  std::string why;
  for (const estimate::DeviceUsage& d : e.devices) {
    if (!d.fits) {
      why += "\n  " + d.name + " needs " + cluster::format_bytes(d.total_bytes) + " but has " +
             cluster::format_bytes(d.free_bytes) + " free";
    }
  }
  return why;
}

}  // namespace

PlacedLayout place_devices(const cluster::Cluster& cluster, const std::string& main,
                           const std::vector<std::string>& devices,
                           const std::vector<double>& split) {
  if (cluster.find(main) == nullptr) {
    throw perf::PlacementError("main worker '" + main + "' is not in the cluster");
  }
  if (!split.empty() && split.size() != devices.size()) {
    throw estimate::LayoutError("--tensor-split has " + std::to_string(split.size()) +
                                " values for " + std::to_string(devices.size()) + " devices");
  }
  struct Entry {
    perf::DevicePlace place;
    double split = 0;
    bool remote = false;
  };
  std::vector<Entry> entries;
  std::set<std::pair<std::string, std::uint32_t>> seen;
  for (std::size_t i = 0; i < devices.size(); ++i) {
    const std::string& d = devices[i];
    const std::optional<cluster::GpuAddress> a = cluster::parse_gpu_address(d);
    if (!a) throw perf::PlacementError("device '" + d + "' is not WORKER:GPU (e.g. worker1:0)");
    Entry en;
    en.place.worker = a->worker;
    en.place.gpu = a->gpu;
    const cluster::Worker* w = cluster.find(en.place.worker);
    if (w == nullptr)
      throw perf::PlacementError("device '" + d + "': no worker named " + en.place.worker);
    if (en.place.gpu >= w->gpus.size()) {
      throw perf::PlacementError("device '" + d + "': " + en.place.worker + " has " +
                                 std::to_string(w->gpus.size()) + " GPU(s)");
    }
    if (!seen.insert({en.place.worker, en.place.gpu}).second) {
      throw perf::PlacementError("device '" + d + "' is listed twice");
    }
    en.remote = en.place.worker != main;
    en.split = split.empty() ? 0 : split[i];
    entries.push_back(en);
  }
  PlacedLayout out;
  std::uint32_t rpc = 0, local = 0;
  for (bool remote : {true, false}) {
    for (const Entry& en : entries) {
      if (en.remote != remote) continue;
      const cluster::Worker& w = *cluster.find(en.place.worker);
      out.layout.devices.push_back(
          {remote ? "RPC" + std::to_string(rpc++) : "CUDA" + std::to_string(local++),
           estimate::Backend::kCuda, remote, w.free_vram_bytes(en.place.gpu),
           w.gpus[en.place.gpu].runtime_bytes});
      out.places.push_back(en.place);
      if (!split.empty()) out.layout.tensor_split.push_back(en.split);
    }
  }
  return out;
}

std::string prediction_text(const PlacedLayout& placed, const cluster::Cluster& cluster,
                            const estimate::Estimate& e, const perf::Prediction& p,
                            std::uint32_t prompt_tokens) {
  std::ostringstream o;
  char line[320];
  o << "layout: " << e.offloaded_layers << "/" << e.total_layers << " layers on GPUs, "
    << (e.total_layers - e.offloaded_layers) << " on the main's CPU, n_ctx " << e.context_tokens
    << (e.pipeline_parallel ? ", pipeline parallel" : "")
    << (e.host_expert_blocks > 0
            ? ", experts of " + std::to_string(e.host_expert_blocks) + " blocks in host RAM"
            : "")
    << "\n";
  std::snprintf(line, sizeof line, "  %-6s %-28s %6s %-10s %10s %10s %10s %10s %10s %10s\n",
                "device", "where", "layers", "blocks", "weights", "kv", "compute", "runtime",
                "total", "free");
  o << line;
  for (std::size_t i = 0; i < e.devices.size(); ++i) {
    const estimate::DeviceUsage& d = e.devices[i];
    const perf::DevicePlace& place = placed.places[i];
    const std::string where = place.worker + " GPU " + std::to_string(place.gpu) + " (" +
                              cluster.find(place.worker)->gpus[place.gpu].name + ")";
    const std::string blocks =
        d.first_block < 0 ? "-"
                          : std::to_string(d.first_block) + ".." + std::to_string(d.last_block);
    std::snprintf(
        line, sizeof line, "  %-6s %-28s %6u %-10s %10s %10s %10s %10s %10s %10s\n", d.name.c_str(),
        where.c_str(), d.layers, (blocks + (d.has_output ? "+out" : "")).c_str(),
        cluster::format_bytes(d.weights_bytes).c_str(), cluster::format_bytes(d.kv_bytes).c_str(),
        cluster::format_bytes(d.compute_bytes).c_str(),
        cluster::format_bytes(d.runtime_bytes).c_str(),
        cluster::format_bytes(d.total_bytes).c_str(), cluster::format_bytes(d.free_bytes).c_str());
    o << line;
  }
  std::snprintf(line, sizeof line, "  %-6s %-28s %6u %-10s %10s %10s %10s %10s %10s\n", "host",
                "main's RAM", e.total_layers - e.offloaded_layers, "",
                cluster::format_bytes(e.host.weights_bytes).c_str(),
                cluster::format_bytes(e.host.kv_bytes).c_str(),
                cluster::format_bytes(e.host.compute_bytes).c_str(), "",
                cluster::format_bytes(e.host.total_bytes).c_str());
  o << line;
  o << "\npredicted: " << fixed(p.generation_tokens_per_s, 2) << " tokens/s generation, "
    << fixed(p.prompt_tokens_per_s, 1) << " tokens/s prompt; first token after a " << prompt_tokens
    << "-token prompt in " << fixed(p.time_to_first_token_s, 2) << " s\n";
  if (p.rpc_load_bytes > 0) {
    o << "start-up: " << gb(static_cast<double>(p.rpc_load_bytes))
      << " GB of weights sent to RPC servers, about " << fixed(p.startup_s, 0)
      << " s (less with rpc-server's cache)\n";
  }
  o << "\ntime per generated token " << fixed(p.generation_token_s * 1e3, 2) << " ms:\n";
  std::snprintf(line, sizeof line, "  %-58s %6s %9s %8s %9s %6s %10s\n", "part", "layers",
                "read GB", "GB/s", "ms/token", "share", "prompt s");
  o << line;
  for (const perf::PartTime& part : p.parts) {
    std::snprintf(
        line, sizeof line, "  %-58s %6u %9s %8s %9.3f %5.1f%% %10.3f\n", part.what.c_str(),
        part.layers, part.read_bytes > 0 ? gb(part.read_bytes).c_str() : "-",
        part.bandwidth_bytes_per_s > 0 ? fixed(part.bandwidth_bytes_per_s / 1e9, 1).c_str() : "-",
        part.generation_s * 1e3, 100.0 * part.generation_s / p.generation_token_s, part.prompt_s);
    o << line;
  }
  o << "bottleneck: " << p.bottleneck << "\n";
  return o.str();
}

int run_predict(const PredictRequest& r) {
  const cluster::Cluster cluster = cluster::load_cluster(r.cluster_file);
  PlacedLayout placed = place_devices(cluster, r.main_worker, r.devices, r.options.tensor_split);
  EstimateRequest opts = r.options;
  opts.gpus.clear();
  opts.rpc_gpus.clear();
  opts.tensor_split.clear();
  const estimate::Layout context_only = build_layout(opts);
  placed.layout.context = context_only.context;
  const gguf::Model model = model::open_model(r.options.model);
  const estimate::ModelMemory memory = estimate::ModelMemory::from(model, model::profile(model));
  estimate::place_experts(memory, r.options.experts, placed.layout);
  if (r.options.gpu_layers == kFitGpuLayers) {
    placed.layout.gpu_layers =
        placed.layout.devices.empty() ? 0 : estimate::max_gpu_layers(memory, placed.layout);
  } else {
    placed.layout.gpu_layers = r.options.gpu_layers;
  }
  const estimate::Estimate e = estimate::estimate(memory, placed.layout);
  if (!e.fits) {
    throw estimate::LayoutError("the layout does not fit (-ngl " +
                                std::to_string(placed.layout.gpu_layers) + "):" + overflow(e));
  }
  const cluster::Worker& main = *cluster.find(r.main_worker);
  if (main.ram_bytes > 0 && e.host.total_bytes > main.free_ram_bytes()) {
    throw estimate::LayoutError("the layout does not fit: the main worker " + main.name +
                                " needs " + cluster::format_bytes(e.host.total_bytes) +
                                " of RAM but has " + cluster::format_bytes(main.free_ram_bytes()) +
                                " free");
  }
  perf::Scenario s;
  s.cluster = &cluster;
  s.main_worker = r.main_worker;
  s.places = placed.places;
  s.threads = r.threads;
  s.prompt_tokens = r.prompt_tokens;
  s.depth_tokens = r.depth_tokens;
  const perf::Prediction p = perf::predict(memory, placed.layout, e, s);
  if (r.options.json) {
    nlohmann::json j = plan::prediction_json(placed.layout, placed.places, cluster, e, p);
    j["main_worker"] = r.main_worker;
    j["model"] = r.options.model;
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << "main worker: " << main.name << " (" << main.cpu.cores << " cores, "
              << fixed(main.cpu.memory_bandwidth_bytes_per_s / 1e9, 0) << " GB/s)\n"
              << prediction_text(placed, cluster, e, p, r.prompt_tokens);
  }
  return 0;
}

}  // namespace ggfleet::cli
