#include "plan/filter.h"

#include <algorithm>
#include <utility>

#include "cluster/units.h"

namespace ggfleet::plan {
namespace {

constexpr const char* kOneInstance = " (an rpc-server serves one instance)";

// A dropped GPU with its worker.
using Drop = std::pair<const cluster::Worker*, const DroppedGpu*>;

// "F free of T (U used, R reserved, C claimed)" over some GPUs (worker, index), the parts that
// are not zero.
std::string memory_figures(
    const std::vector<std::pair<const cluster::Worker*, std::uint32_t>>& gpus) {
  std::uint64_t free = 0, total = 0, used = 0, reserved = 0, claimed = 0, runtime = 0;
  for (const auto& [w, index] : gpus) {
    const cluster::Gpu& g = w->gpus[index];
    free += w->free_vram_bytes(index);
    total += g.vram_bytes;
    used += g.used_bytes;
    reserved += w->reserved_vram_bytes;
    claimed += g.claimed_bytes;
    runtime = std::max(runtime, g.runtime_bytes);
  }
  std::string parts;
  for (const auto& [bytes, what] : {std::pair{used, " used"}, std::pair{reserved, " reserved"},
                                    std::pair{claimed, " claimed"}}) {
    if (bytes == 0) continue;
    parts += (parts.empty() ? "" : ", ") + cluster::format_bytes(bytes) + what;
  }
  std::string out = cluster::format_bytes(free) + " free of " + cluster::format_bytes(total);
  if (!parts.empty()) out += " (" + parts + ")";
  if (free > 0) out += ", less than the CUDA runtime's " + cluster::format_bytes(runtime);
  return out;
}

// One phrase per rule for `drops` among `total` GPUs (one worker's, or the fleet's), joined
// with "; ": "its GPUs are lent to x (...)", "all 2 GPUs full: 0 B free of 48.00 GiB (...)",
// "1 of 3 GPUs full: ...".
std::string summarize(const std::vector<Drop>& drops, std::size_t total, bool fleet) {
  std::string out;
  auto add = [&](const std::string& phrase) { out += (out.empty() ? "" : "; ") + phrase; };
  const char* one = fleet ? "the only GPU is " : "its GPU is ";
  for (const GpuDrop rule :
       {GpuDrop::kSelector, GpuDrop::kNotRequested, GpuDrop::kLent, GpuDrop::kFull}) {
    std::vector<Drop> these;
    for (const Drop& d : drops) {
      if (d.second->rule == rule) these.push_back(d);
    }
    if (these.empty()) continue;
    const std::size_t n = these.size();
    const bool whole = n == total;
    const std::string count = std::to_string(n);
    const std::string part = count + " of " + std::to_string(total) + " GPUs ";
    switch (rule) {
      case GpuDrop::kSelector:
        add("excluded by the label selector");
        break;
      case GpuDrop::kNotRequested:
        add((whole ? (n == 1 ? std::string(one) : "its GPUs are ") : part) +
            "not among the requested GPUs");
        break;
      case GpuDrop::kLent: {
        std::vector<std::string> instances;
        for (const auto& [w, d] : these) {
          const std::string& to = w->gpus[d->gpu].lent_to;
          if (std::find(instances.begin(), instances.end(), to) == instances.end())
            instances.push_back(to);
        }
        std::string names;
        for (const std::string& i : instances) names += (names.empty() ? "" : ", ") + i;
        const std::string many = fleet ? "all " + count + " GPUs " : "its GPUs are ";
        add((whole ? (n == 1 ? std::string(one) : many) : part) + "lent to instance" +
            (instances.size() > 1 ? "s " : " ") + names + kOneInstance);
        break;
      }
      case GpuDrop::kFull: {
        std::vector<std::pair<const cluster::Worker*, std::uint32_t>> gpus;
        for (const auto& [w, d] : these) gpus.emplace_back(w, d->gpu);
        add((whole ? (n == 1 ? std::string(one) : "all " + count + " GPUs ") : part) +
            "full: " + memory_figures(gpus));
        break;
      }
    }
  }
  return out;
}

}  // namespace

bool selected(const cluster::Worker& w, const std::map<std::string, std::string>& selector) {
  for (const auto& [k, v] : selector) {
    const auto it = w.labels.find(k);
    if (it == w.labels.end() || it->second != v) return false;
  }
  return true;
}

std::string gpu_label(const GpuRef& r) {
  return r.worker + ":" + std::to_string(r.gpu);
}

void validate_request(const estimate::ModelMemory& m, const cluster::Cluster& cl,
                      const Request& r) {
  for (const GpuRef& g : r.gpus) {
    const cluster::Worker* w = cl.find(g.worker);
    if (w == nullptr) throw PlanError("GPU " + gpu_label(g) + ": no worker named " + g.worker);
    if (g.gpu >= w->gpus.size()) {
      throw PlanError("GPU " + gpu_label(g) + ": " + g.worker + " has " +
                      std::to_string(w->gpus.size()) + " GPU(s)");
    }
    if (std::count(r.gpus.begin(), r.gpus.end(), g) > 1)
      throw PlanError("GPU " + gpu_label(g) + " is listed twice");
  }
  if (!r.main_worker.empty()) {
    const cluster::Worker* w = cl.find(r.main_worker);
    if (w == nullptr) throw PlanError("main " + r.main_worker + ": no worker of that name");
    if (!selected(*w, r.selector))
      throw PlanError("main " + r.main_worker + " is a worker the selector excludes");
    if (!r.gpus.empty() && std::none_of(r.gpus.begin(), r.gpus.end(), [&](const GpuRef& g) {
          return g.worker == r.main_worker;
        })) {
      throw PlanError("main " + r.main_worker + " owns none of the requested GPUs");
    }
  }
  if (!r.tensor_split.empty() && r.gpus.empty())
    throw PlanError("a tensor split needs explicit GPUs (--gpus)");
  if (!r.tensor_split.empty() && r.tensor_split.size() != r.gpus.size()) {
    throw PlanError("the tensor split has " + std::to_string(r.tensor_split.size()) +
                    " entries for " + std::to_string(r.gpus.size()) + " GPUs");
  }
  const auto layers = static_cast<std::int32_t>(m.blocks() + 1);
  if (r.gpu_layers > layers) {
    throw PlanError("-ngl " + std::to_string(r.gpu_layers) + " is larger than the model's " +
                    std::to_string(layers) + " layers (" + std::to_string(m.blocks()) +
                    " blocks and the output)");
  }
  if (r.gpu_layers < kAutoGpuLayers) throw PlanError("-ngl must be -1 (all) or at least 0");
  if (!r.allow_cpu_offload && r.gpu_layers >= 0 && r.gpu_layers < layers) {
    throw PlanError("-ngl " + std::to_string(r.gpu_layers) +
                    " leaves layers on the CPU, but CPU offload is off");
  }
  if (r.replicas == 0) throw PlanError("replicas must be at least 1");
  if (!(r.tie_tolerance >= 0 && r.tie_tolerance < 1))
    throw PlanError("the tie tolerance must be in [0, 1)");
}

Filter::Filter(const cluster::Cluster& cl, const Request& r) : cluster_(cl), request_(r) {
  verdicts_.resize(cl.workers.size());
  for (std::size_t i = 0; i < cl.workers.size(); ++i) {
    const cluster::Worker& w = cl.workers[i];
    WorkerVerdict& v = verdicts_[i];
    const bool is_selected = selected(w, r.selector);
    const bool owns_requested =
        r.gpus.empty() || std::any_of(r.gpus.begin(), r.gpus.end(),
                                      [&](const GpuRef& g) { return g.worker == w.name; });
    if (!is_selected) {
      v.main_drop = MainDrop::kSelector;
    } else if (!owns_requested) {
      v.main_drop = MainDrop::kNotRequested;
    } else if (!r.main_worker.empty() && w.name != r.main_worker) {
      v.main_drop = MainDrop::kFixedMain;
    } else {
      mains_.push_back(&w);
    }
    v.first_dropped = static_cast<std::uint32_t>(dropped_.size());
    for (std::uint32_t g = 0; g < w.gpus.size(); ++g) {
      if (!is_selected) {
        dropped_.push_back({g, GpuDrop::kSelector});
      } else if (!r.gpus.empty() &&
                 std::find(r.gpus.begin(), r.gpus.end(), GpuRef{w.name, g}) == r.gpus.end()) {
        dropped_.push_back({g, GpuDrop::kNotRequested});
      } else if (!w.gpus[g].lent_to.empty()) {
        dropped_.push_back({g, GpuDrop::kLent});
      } else if (w.free_vram_bytes(g) <= w.gpus[g].runtime_bytes) {  // no room for buffers
        dropped_.push_back({g, GpuDrop::kFull});
      } else {
        gpus_.push_back({&w, g});
      }
    }
    v.dropped_count = static_cast<std::uint32_t>(dropped_.size()) - v.first_dropped;
    v.dropped_whole = v.main_drop != MainDrop::kNone && v.dropped_count == w.gpus.size();
  }
}

std::string Filter::main_drop(const cluster::Worker& w) const {
  switch (verdict(w).main_drop) {
    case MainDrop::kNone:
      return "";
    case MainDrop::kSelector:
      return "excluded by the label selector";
    case MainDrop::kNotRequested:
      return "not among the requested GPUs";
    case MainDrop::kFixedMain:
      return "the main is fixed to " + request_.main_worker;
  }
  return "";
}

std::string Filter::gpu_drop(const cluster::Worker& w, const DroppedGpu& d) const {
  switch (d.rule) {
    case GpuDrop::kSelector:
      return "on a worker the selector excludes";
    case GpuDrop::kNotRequested:
      return "not among the requested GPUs";
    case GpuDrop::kLent:
      return "lent to instance " + w.gpus[d.gpu].lent_to + kOneInstance;
    case GpuDrop::kFull:
      return "full: " + memory_figures({{&w, d.gpu}});
  }
  return "";
}

std::string Filter::drop(const cluster::Worker& w) const {
  const WorkerVerdict& v = verdict(w);
  if (!v.dropped_whole) return "";
  // The selector and the explicit GPUs drop its GPUs for the same reason as the worker; a fixed
  // main does not.
  std::string out = main_drop(w);
  if (v.main_drop == MainDrop::kFixedMain && !w.gpus.empty()) {
    std::vector<Drop> drops;
    for (const DroppedGpu& d : dropped(w)) drops.emplace_back(&w, &d);
    out += "; " + summarize(drops, w.gpus.size(), false);
  }
  return out;
}

std::string Filter::lend_drop(const cluster::Worker& main, const cluster::Worker& lender) const {
  if (!may_lend(main, lender)) {
    return "its llama.cpp build (" + lender.llama_build + ") differs from main " + main.name +
           "'s (" + main.llama_build +
           "): llama.cpp's RPC protocol holds between equal builds only";
  }
  if (!request_.allow_distributed) return "distribution across workers is off";
  return "";
}

std::optional<std::string> Filter::gpus_drop(const cluster::Worker& w,
                                             const cluster::Worker& main) const {
  if (w.gpus.empty()) return std::nullopt;
  std::string lend;
  if (verdict(w).dropped_count < w.gpus.size()) {
    lend = lend_drop(main, w);
    if (lend.empty()) return std::nullopt;
  }
  std::vector<Drop> drops;
  for (const DroppedGpu& d : dropped(w)) drops.emplace_back(&w, &d);
  std::string out = summarize(drops, w.gpus.size(), false);
  if (!lend.empty()) out += (out.empty() ? "" : "; ") + lend;
  return out;
}

std::string Filter::some_gpus_drop(const cluster::Worker& w) const {
  std::vector<Drop> drops;
  for (const DroppedGpu& d : dropped(w)) drops.emplace_back(&w, &d);
  return drops.empty() ? "" : summarize(drops, w.gpus.size(), false);
}

std::string Filter::all_gpus_drop() const {
  if (!gpus_.empty()) return "";
  std::vector<Drop> drops;
  for (const cluster::Worker& w : cluster_.workers) {
    for (const DroppedGpu& d : dropped(w)) {
      if (d.rule == GpuDrop::kLent || d.rule == GpuDrop::kFull) drops.emplace_back(&w, &d);
    }
  }
  return drops.empty() ? "" : summarize(drops, drops.size(), true);
}

std::string Filter::requested_gpus_drop() const {
  for (const GpuRef& g : request_.gpus) {
    const cluster::Worker* w = cluster_.find(g.worker);
    for (const DroppedGpu& d : dropped(*w)) {
      if (d.gpu != g.gpu) continue;
      if (d.rule == GpuDrop::kSelector)
        throw PlanError("GPU " + gpu_label(g) + " is on a worker the selector excludes");
      return "GPU " + gpu_label(g) + " is " + gpu_drop(*w, d);
    }
  }
  return "";
}

}  // namespace ggfleet::plan
