#include "cli/estimate_cmd.h"

#include <iostream>
#include <sstream>

#include "cluster/units.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/source.h"

namespace ggfleet::cli {
namespace {

std::string mib(std::uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

gguf::GgmlType cache_type(const std::string& name) {
  const auto t = gguf::type_from_name(name);
  if (!t) throw estimate::LayoutError("unknown cache type '" + name + "'");
  return *t;
}

}  // namespace

estimate::Layout build_layout(const EstimateRequest& r) {
  estimate::Layout layout;
  if (r.backend != "cuda" && r.backend != "cpu") {
    throw estimate::LayoutError("--backend must be cuda or cpu, not '" + r.backend + "'");
  }
  const estimate::Backend backend =
      r.backend == "cuda" ? estimate::Backend::kCuda : estimate::Backend::kCpu;
  std::uint32_t i = 0;
  for (const std::string& g : r.gpus) {
    layout.devices.push_back(
        {(backend == estimate::Backend::kCuda ? "CUDA" : "GPU") + std::to_string(i++), backend,
         false, cluster::parse_bytes(g), 0});
  }
  i = 0;
  for (const std::string& g : r.rpc_gpus)
    layout.devices.push_back(
        {"RPC" + std::to_string(i++), backend, true, cluster::parse_bytes(g), 0});
  estimate::to_llama_order(layout.devices.begin(), layout.devices.end(),
                           [](const estimate::Device& d) { return d.remote; });
  layout.tensor_split = r.tensor_split;
  layout.gpu_layers = r.gpu_layers;
  layout.context = r.context;
  layout.context.cache_type_k = cache_type(r.cache_type_k);
  layout.context.cache_type_v = cache_type(r.cache_type_v);
  if (r.flash_attn == "on") {
    layout.context.flash_attention = estimate::FlashAttention::kOn;
  } else if (r.flash_attn == "off") {
    layout.context.flash_attention = estimate::FlashAttention::kOff;
  } else if (r.flash_attn == "auto") {
    layout.context.flash_attention = estimate::FlashAttention::kAuto;
  } else {
    throw estimate::LayoutError("--flash-attn must be on, off or auto, not '" + r.flash_attn + "'");
  }
  return layout;
}

nlohmann::json estimate_json(const estimate::Estimate& e) {
  nlohmann::json j;
  j["offloaded_layers"] = e.offloaded_layers;
  j["total_layers"] = e.total_layers;
  j["context_tokens"] = e.context_tokens;
  j["kv_cells_per_stream"] = e.kv_cells_per_stream;
  j["kv_streams"] = e.kv_streams;
  j["flash_attention"] = e.flash_attention;
  j["pipeline_parallel"] = e.pipeline_parallel;
  j["fits"] = e.fits;
  j["host_expert_blocks"] = e.host_expert_blocks;
  nlohmann::json devices = nlohmann::json::array();
  for (const estimate::DeviceUsage& d : e.devices) {
    devices.push_back({{"name", d.name},
                       {"layers", d.layers},
                       {"first_block", d.first_block},
                       {"last_block", d.last_block},
                       {"has_output", d.has_output},
                       {"expert_blocks", d.expert_blocks},
                       {"weights_bytes", d.weights_bytes},
                       {"kv_bytes", d.kv_bytes},
                       {"compute_bytes", d.compute_bytes},
                       {"total_bytes", d.total_bytes},
                       {"free_bytes", d.free_bytes},
                       {"fits", d.fits}});
  }
  j["devices"] = devices;
  const estimate::HostUsage& h = e.host;
  j["host"] = {{"weights_bytes", h.weights_bytes}, {"mapped_bytes", h.mapped_bytes},
               {"copied_bytes", h.copied_bytes},   {"repack_bytes", h.repack_bytes},
               {"kv_bytes", h.kv_bytes},           {"compute_bytes", h.compute_bytes},
               {"output_bytes", h.output_bytes},   {"total_bytes", h.total_bytes}};
  return j;
}

std::string estimate_table(const std::vector<std::pair<std::int32_t, estimate::Estimate>>& rows) {
  std::ostringstream o;
  o << "all sizes in MiB; device = weights + KV + compute\n";
  for (const auto& [ngl, e] : rows) {
    o << "\n-ngl " << (ngl < 0 ? std::string("all") : std::to_string(ngl)) << ": "
      << e.offloaded_layers << "/" << e.total_layers << " layers offloaded, n_ctx "
      << e.context_tokens << ", flash attention " << (e.flash_attention ? "on" : "off")
      << (e.pipeline_parallel ? ", pipeline parallel" : "")
      << (e.host_expert_blocks > 0
              ? ", experts of " + std::to_string(e.host_expert_blocks) + " blocks in host RAM"
              : "")
      << (e.fits ? "" : "  ** DOES NOT FIT **") << "\n";
    char line[256];
    std::snprintf(line, sizeof line, "  %-8s %7s %-9s %10s %10s %10s %10s %10s  %s\n", "device",
                  "layers", "blocks", "weights", "kv", "compute", "total", "free", "fits");
    o << line;
    for (const estimate::DeviceUsage& d : e.devices) {
      const std::string blocks =
          d.first_block < 0 ? "-"
                            : std::to_string(d.first_block) + ".." + std::to_string(d.last_block);
      std::snprintf(line, sizeof line, "  %-8s %7u %-9s %10s %10s %10s %10s %10s  %s\n",
                    d.name.c_str(), d.layers, (blocks + (d.has_output ? "+out" : "")).c_str(),
                    mib(d.weights_bytes).c_str(), mib(d.kv_bytes).c_str(),
                    mib(d.compute_bytes).c_str(), mib(d.total_bytes).c_str(),
                    mib(d.free_bytes).c_str(), d.fits ? "yes" : "NO");
      o << line;
    }
    const estimate::HostUsage& h = e.host;
    std::snprintf(
        line, sizeof line, "  %-8s %7s %-9s %10s %10s %10s %10s  (mapped %s, output %s)\n", "host",
        "", "", mib(h.weights_bytes).c_str(), mib(h.kv_bytes).c_str(), mib(h.compute_bytes).c_str(),
        mib(h.total_bytes).c_str(), mib(h.mapped_bytes).c_str(), mib(h.output_bytes).c_str());
    o << line;
  }
  return o.str();
}

int run_estimate(const EstimateRequest& r) {
  if (r.gpu_layers_step < 0) throw estimate::LayoutError("--ngl-step must be positive");
  estimate::Layout base = build_layout(r);
  const gguf::Model model = model::open_model(r.model);
  const estimate::ModelMemory memory = estimate::ModelMemory::from(model, model::profile(model));
  estimate::place_experts(memory, r.experts, base);
  std::vector<std::pair<std::int32_t, estimate::Estimate>> rows;
  if (r.gpu_layers_step > 0) {
    const auto total = static_cast<std::int32_t>(memory.blocks() + 1);
    for (std::int32_t ngl = 0;; ngl = std::min(ngl + r.gpu_layers_step, total)) {
      estimate::Layout l = base;
      l.gpu_layers = ngl;
      rows.emplace_back(ngl, estimate::estimate(memory, l));
      if (ngl == total) break;
    }
  } else {
    rows.emplace_back(base.gpu_layers, estimate::estimate(memory, base));
  }
  if (r.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& [ngl, e] : rows) {
      nlohmann::json j = estimate_json(e);
      j["gpu_layers"] = ngl;
      out.push_back(j);
    }
    std::cout << (rows.size() == 1 ? out[0] : out).dump(2) << "\n";
  } else {
    std::cout << estimate_table(rows);
  }
  return 0;
}

}  // namespace ggfleet::cli
