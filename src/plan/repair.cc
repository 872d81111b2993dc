#include "plan/repair.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <map>
#include <numeric>
#include <string>
#include <tuple>
#include <utility>

#include "plan/filter.h"

namespace ggfleet::plan {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

}  // namespace

SplitRepair::SplitRepair(const estimate::ModelMemory& m, const cluster::Cluster& cl,
                         const Request& r, const perf::Constants& c, const perf::LayerCosts& costs,
                         const std::vector<Dev>& devs)
    : m_(m), cl_(cl), r_(r), c_(c), costs_(costs), devs_(devs), blocks_(m.profile.blocks) {
  // Memory of an average block on a GPU (weights + KV), and of the output layer.
  double block_bytes = 0;
  for (std::uint32_t i = 0; i < blocks_; ++i)
    block_bytes += static_cast<double>(m.layers[i].cuda_bytes);
  block_mem_bytes_ = blocks_ > 0 ? block_bytes / blocks_ : 0;
  output_mem_bytes_ = static_cast<double>(m.layers[blocks_].cuda_bytes + m.tied_output_cuda_bytes);
  estimate::Layout cpu_only;
  cpu_only.context = r.context;
  cpu_only.gpu_layers = 0;
  const estimate::Estimate e = estimate::estimate(m, cpu_only);  // validates the options
  kv_block_bytes_ = blocks_ > 0 ? static_cast<double>(e.host.kv_bytes) / blocks_ : 0;
  host_need_bytes_ = e.host.total_bytes;
  for (std::uint32_t i = 0; i < blocks_; ++i) {
    max_expert_bytes_ =
        std::max(max_expert_bytes_, static_cast<double>(m.layers[i].expert_cuda_bytes));
  }
  moe_ = max_expert_bytes_ > 0;
}

double SplitRepair::cpu_block_s(const cluster::Worker& main) const {
  return costs_.cpu_block_s(main, r_.threads);
}

std::vector<std::size_t> SplitRepair::ordered(const cluster::Worker& main,
                                              std::vector<std::size_t> set,
                                              std::optional<std::size_t> last) const {
  const auto locals = estimate::to_llama_order(set.begin(), set.end(),
                                               [&](std::size_t d) { return remote(d, main); });
  if (last) {
    const auto it = std::find(set.begin(), set.end(), *last);
    const auto group_end = remote(*last, main) ? locals : set.end();
    std::rotate(it, it + 1, group_end);
  }
  return set;
}

Eval SplitRepair::with_devices(const cluster::Worker& main,
                               const std::vector<std::size_t>& order) const {
  Eval ev;
  ev.main = &main;
  ev.devs = order;
  ev.layout.context = r_.context;
  std::uint32_t rpc = 0, local = 0;
  for (std::size_t d : order) {
    const bool is_remote = remote(d, main);
    ev.layout.devices.push_back(
        {is_remote ? "RPC" + std::to_string(rpc++) : "CUDA" + std::to_string(local++),
         estimate::Backend::kCuda, is_remote, devs_[d].free_bytes + devs_[d].runtime_bytes,
         devs_[d].runtime_bytes});
    ev.places.push_back({devs_[d].ref.worker, devs_[d].ref.gpu});
    ev.remote_devices += is_remote ? 1 : 0;
  }
  return ev;
}

Eval SplitRepair::with_split(const cluster::Worker& main, const std::vector<std::size_t>& order,
                             const std::vector<std::uint32_t>& blocks_on) const {
  Eval ev = with_devices(main, order);
  std::uint32_t gpu_layers = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    const std::uint32_t layers = blocks_on[i] + (i + 1 == order.size() ? 1 : 0);
    ev.layout.tensor_split.push_back(layers);
    gpu_layers += layers;
  }
  ev.layout.gpu_layers = static_cast<std::int32_t>(gpu_layers);
  return ev;
}

std::optional<Eval> SplitRepair::finish(Eval ev) {
  ++evaluated_;
  ev.estimate = estimate::estimate(m_, ev.layout);
  if (!ev.estimate.fits) return std::nullopt;
  const cluster::Worker& main = *ev.main;
  if (main.ram_bytes > 0 && ev.estimate.host.total_bytes > main.free_ram_bytes())
    return std::nullopt;
  std::tie(ev.tg, ev.pp) = perf::predict_rates(m_, ev.layout, ev.estimate,
                                               scenario_for(cl_, main.name, ev.places, r_), c_);
  ev.load = load_after(ev);
  return ev;
}

std::optional<Eval> SplitRepair::realize(const cluster::Worker& main,
                                         const std::vector<std::size_t>& order,
                                         const std::vector<std::uint32_t>& blocks_on) {
  return finish(with_split(main, order, blocks_on));
}

std::optional<Eval> SplitRepair::split(const cluster::Worker& main,
                                       const std::vector<std::size_t>& set, std::int32_t gpu_layers,
                                       bool quick) {
  if (set.empty()) {
    if (!r_.allow_cpu_offload || (gpu_layers > 0)) return std::nullopt;
    return realize(main, {}, {});
  }
  // llama.cpp's RPC protocol holds between equal builds only.
  for (std::size_t d : set) {
    if (!Filter::may_lend(main, *devs_[d].worker)) return std::nullopt;
  }
  const std::vector<std::size_t> order = ordered(main, set);
  const bool any_local =
      std::any_of(set.begin(), set.end(), [&](std::size_t d) { return !remote(d, main); });
  // Candidates for the output layer: the three fastest devices that can hold it, the
  // roomiest, and llama.cpp's default (the last of the set).
  std::vector<std::size_t> group;
  for (std::size_t d : set) {
    if (!(any_local && remote(d, main)) &&
        static_cast<double>(devs_[d].free_bytes) > output_mem_bytes_) {
      group.push_back(d);
    }
  }
  if (group.empty()) return std::nullopt;
  std::stable_sort(group.begin(), group.end(), [&](std::size_t a, std::size_t b) {
    return block_s(a, main) < block_s(b, main);
  });
  std::vector<std::size_t> lasts(
      group.begin(),
      group.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(3, group.size())));
  if (quick)
    lasts = {std::find(group.begin(), group.end(), order.back()) != group.end() ? order.back()
                                                                                : group.front()};
  const std::size_t roomiest = *std::max_element(
      group.begin(), group.end(),
      [&](std::size_t a, std::size_t b) { return devs_[a].free_bytes < devs_[b].free_bytes; });
  for (std::size_t d : {roomiest, order.back()}) {
    if (std::find(group.begin(), group.end(), d) != group.end() &&
        std::find(lasts.begin(), lasts.end(), d) == lasts.end()) {
      lasts.push_back(d);
    }
  }
  std::optional<Eval> best;
  for (std::size_t last : lasts) {
    std::optional<Eval> ev = split_with_last(main, ordered(main, set, last), gpu_layers);
    if (ev && (!best || ev->tg > best->tg)) best = std::move(ev);
  }
  const bool cpu_blocks = best && best->estimate.offloaded_layers < best->estimate.total_layers;
  if (cpu_blocks && moe_ && r_.expert_offload && gpu_layers == kAutoGpuLayers && !quick) {
    if (std::optional<Eval> thin = with_host_experts(*best)) {
      Eval& kept = thin->tg > best->tg ? *thin : *best;
      const Eval& other = thin->tg > best->tg ? *best : *thin;
      kept.other_cpu_blocks = other.estimate.total_layers - other.estimate.offloaded_layers;
      kept.other_host_expert_blocks = other.estimate.host_expert_blocks;
      kept.other_tg = other.tg;
      if (&kept == &*thin) best = std::move(thin);
    }
  }
  return best;
}

std::optional<Eval> SplitRepair::with_host_experts(const Eval& whole) {
  const cluster::Worker& main = *whole.main;
  const std::vector<std::size_t>& order = whole.devs;
  const std::size_t n = order.size();
  if (n == 0 || whole.layout.tensor_split.size() != n) return std::nullopt;
  std::vector<std::uint32_t> on(n);
  std::uint32_t placed = 0;
  for (std::size_t i = 0; i < n; ++i) {
    on[i] = static_cast<std::uint32_t>(whole.layout.tensor_split[i]) - (i + 1 == n ? 1 : 0);
    placed += on[i];
  }
  // The CPU's blocks go to the devices in proportion to their free memory: the main's own GPUs
  // when it has any in the set (a block whose experts run on the CPU then costs no RPC call).
  std::vector<std::size_t> takers;
  for (std::size_t i = 0; i < n; ++i)
    if (!remote(order[i], main)) takers.push_back(i);
  if (takers.empty()) {
    takers.resize(n);
    std::iota(takers.begin(), takers.end(), 0);
  }
  double room = 0;
  for (std::size_t i : takers) room += static_cast<double>(devs_[order[i]].free_bytes);
  const std::uint32_t extra = blocks_ - placed;
  std::uint32_t given = 0;
  for (std::size_t k = 0; k < takers.size(); ++k) {
    const std::size_t i = takers[k];
    const std::uint32_t share =
        k + 1 == takers.size()
            ? extra - given
            : static_cast<std::uint32_t>(std::floor(
                  extra * static_cast<double>(devs_[order[i]].free_bytes) / std::max(room, 1.0)));
    on[i] += share;
    given += share;
  }
  // Per device, how many of its first MoE blocks keep their experts in host RAM.
  std::vector<std::uint32_t> thin(n, 0);
  auto layout_of = [&](const std::vector<std::uint32_t>& counts) {
    Eval ev = with_split(main, order, on);
    ev.layout.experts.assign(blocks_, estimate::kExpertsWithBlock);
    std::uint32_t block = 0;
    for (std::size_t i = 0; i < n; ++i) {
      std::uint32_t left = counts[i];
      for (std::uint32_t b = block; b < block + on[i] && left > 0; ++b) {
        if (m_.layers[b].expert_cuda_bytes == 0) continue;
        ev.layout.experts[b] = estimate::kExpertsOnHost;
        --left;
      }
      block += on[i];
    }
    return ev;
  };
  auto moe_blocks_on = [&](std::size_t i) {
    const std::uint32_t first = std::accumulate(on.begin(), on.begin() + i, 0u);
    std::uint32_t count = 0;
    for (std::uint32_t b = first; b < first + on[i]; ++b)
      count += m_.layers[b].expert_cuda_bytes > 0;
    return count;
  };
  auto estimate_with = [&](const std::vector<std::uint32_t>& counts) {
    ++evaluated_;
    return estimate::estimate(m_, layout_of(counts).layout);
  };
  bool fitted = false;
  for (std::size_t attempt = 0; attempt < 4 * n + 8; ++attempt) {
    const estimate::Estimate e = estimate_with(thin);
    if (e.fits) {
      fitted = true;
      break;
    }
    bool grew = false;
    for (std::size_t i = 0; i < n; ++i) {
      if (e.devices[i].fits) continue;
      const double over =
          static_cast<double>(e.devices[i].total_bytes) -
          static_cast<double>(devs_[order[i]].free_bytes + devs_[order[i]].runtime_bytes);
      const auto more = static_cast<std::uint32_t>(
          std::max(1.0, std::ceil(over / std::max(max_expert_bytes_, 1.0))));
      const std::uint32_t next = std::min(moe_blocks_on(i), thin[i] + more);
      grew = grew || next > thin[i];
      thin[i] = next;
    }
    if (!grew) return std::nullopt;  // a device cannot fit even with all its experts moved
  }
  if (!fitted) return std::nullopt;
  // The first guesses count the largest experts: give back what is not needed.
  for (std::size_t i = 0; i < n; ++i) {
    while (thin[i] > 0) {
      --thin[i];
      if (estimate_with(thin).fits) continue;
      ++thin[i];
      break;
    }
  }
  return finish(layout_of(thin));
}

std::optional<Eval> SplitRepair::split_with_last(const cluster::Worker& main,
                                                 const std::vector<std::size_t>& order,
                                                 std::int32_t gpu_layers) {
  // Free memory per device after its compute buffer (from a first estimate of the set).
  Eval probe = with_devices(main, order);
  const estimate::Estimate pe = estimate::estimate(m_, probe.layout);
  std::vector<std::uint32_t> cap(order.size());
  const double per_block = block_mem_bytes_ + kv_block_bytes_;
  for (std::size_t i = 0; i < order.size(); ++i) {
    double room = static_cast<double>(devs_[order[i]].free_bytes) -
                  static_cast<double>(pe.devices[i].compute_bytes);
    if (i + 1 == order.size()) room -= output_mem_bytes_;
    // The probe's compute buffers are those of devices with blocks: one without (dropped below,
    // or the last holding the output alone) may still fit, as the repair's estimates will say.
    cap[i] =
        room <= 0
            ? 0
            : static_cast<std::uint32_t>(std::min<double>(blocks_, std::floor(room / per_block)));
  }
  const bool auto_layers = gpu_layers == kAutoGpuLayers;
  const bool cpu_allowed = r_.allow_cpu_offload && auto_layers;
  // Devices by per-block cost; the CPU takes what is cheaper there or does not fit.
  std::vector<std::size_t> by_cost(order.size());
  std::iota(by_cost.begin(), by_cost.end(), 0);
  std::stable_sort(by_cost.begin(), by_cost.end(), [&](std::size_t a, std::size_t b) {
    return block_s(order[a], main) < block_s(order[b], main);
  });
  const double cpu_cost = cpu_allowed ? cpu_block_s(main) : kInf;
  std::uint32_t left = blocks_;
  if (!auto_layers && gpu_layers >= 0) {
    if (gpu_layers == 0) return std::nullopt;  // no GPU layers: the CPU-only candidate
    left = std::min<std::uint32_t>(blocks_, static_cast<std::uint32_t>(gpu_layers) - 1);
  }
  std::vector<std::uint32_t> on(order.size(), 0);
  for (std::size_t i : by_cost) {
    if (cpu_allowed && cpu_cost <= block_s(order[i], main)) break;
    const std::uint32_t take = std::min(cap[i], left);
    on[i] = take;
    left -= take;
  }
  if (left > 0 && !cpu_allowed) return std::nullopt;  // the blocks (or -ngl) do not fit here
  // Repair with the real estimate: a block leaves an overflowing device for the cheapest
  // device where it still fits, else the CPU; then blocks on the CPU move to the cheapest
  // device where they fit.
  auto fits_with = [&](const std::vector<std::uint32_t>& counts) {
    ++evaluated_;
    return estimate::estimate(m_, with_split(main, order, counts).layout);
  };
  auto place_one = [&](std::vector<std::uint32_t>& counts, std::size_t except, double below_s) {
    for (std::size_t i : by_cost) {
      if (i == except || block_s(order[i], main) >= below_s) continue;
      ++counts[i];
      if (fits_with(counts).fits) return true;
      --counts[i];
    }
    return false;
  };
  std::uint32_t cpu_blocks = left;
  for (int attempt = 0; attempt < 8 * static_cast<int>(order.size()) + 8; ++attempt) {
    const estimate::Estimate e = fits_with(on);
    if (e.fits) break;
    std::optional<std::size_t> over;
    for (std::size_t i = 0; i < order.size(); ++i) {
      if (!e.devices[i].fits && on[i] > 0) over = i;
    }
    if (!over) return std::nullopt;  // a device cannot hold even its buffers and the output
    --on[*over];
    if (!place_one(on, *over, kInf)) {
      if (!cpu_allowed) return std::nullopt;
      ++cpu_blocks;
    }
  }
  if (!fits_with(on).fits) return std::nullopt;
  while (cpu_blocks > 0 && cpu_allowed && place_one(on, order.size(), cpu_cost)) --cpu_blocks;
  // A device the split left empty may still hold the last block, whose compute buffer is smaller.
  if (std::find(on.begin(), on.end() - 1, 0u) != on.end() - 1) climb(main, order, on, cpu_allowed);
  // Devices that got nothing are left out (the last one holds the output); without them the
  // others may have room for more, so the smaller set is split again.
  std::vector<std::size_t> kept;
  std::vector<std::uint32_t> kept_on;
  for (std::size_t i = 0; i < order.size(); ++i) {
    if (on[i] > 0 || i + 1 == order.size()) {
      kept.push_back(order[i]);
      kept_on.push_back(on[i]);
    }
  }
  if (kept.size() < order.size()) return split_with_last(main, kept, gpu_layers);
  return realize(main, kept, kept_on);
}

void SplitRepair::climb(const cluster::Worker& main, const std::vector<std::size_t>& order,
                        std::vector<std::uint32_t>& on, bool cpu_allowed) {
  std::optional<Eval> current = realize(main, order, on);
  if (!current) return;
  const std::size_t cpu = order.size();  // stands for the main's CPU
  auto blocks_at = [&](std::size_t i) {
    return i == cpu ? blocks_ - std::accumulate(on.begin(), on.end(), 0u) : on[i];
  };
  // Each round keeps the first move that helps; a move is one block, so rounds are few. Only
  // moves to or from the device with the last block: the first split already ranked the others
  // by their per-block cost, and the last block is what that ranking cannot see.
  for (std::size_t round = 0; round < 2 * order.size() + 2; ++round) {
    std::size_t tail = cpu;
    for (std::size_t i = 0; i < order.size(); ++i) {
      if (on[i] > 0) tail = i;
    }
    if (tail == cpu) return;
    bool moved = false;
    for (std::size_t other = 0; other <= cpu && !moved; ++other) {
      if (other == tail || (other == cpu && !cpu_allowed)) continue;
      for (const auto& [from, to] : {std::pair{tail, other}, std::pair{other, tail}}) {
        if (blocks_at(from) == 0) continue;
        std::vector<std::uint32_t> next = on;
        if (from != cpu) --next[from];
        if (to != cpu) ++next[to];
        std::optional<Eval> ev = realize(main, order, next);
        if (ev && ev->tg > current->tg * (1 + 1e-9)) {
          on = std::move(next);
          current = std::move(ev);
          moved = true;
          break;
        }
      }
    }
    if (!moved) break;
  }
}

double SplitRepair::load_after(const Eval& ev) const {
  std::map<const cluster::Worker*, std::pair<double, double>> use;  // worker -> (taken, total)
  auto base = [&](const cluster::Worker* w) {
    auto [it, inserted] = use.try_emplace(w, 0.0, 0.0);
    if (inserted) {
      for (std::size_t g = 0; g < w->gpus.size(); ++g) {
        it->second.first += static_cast<double>(w->gpus[g].vram_bytes - w->free_vram_bytes(g));
        it->second.second += static_cast<double>(w->gpus[g].vram_bytes);
      }
      if (w->gpus.empty() && w->ram_bytes > 0) {
        it->second.first = static_cast<double>(w->ram_bytes - w->free_ram_bytes());
        it->second.second = static_cast<double>(w->ram_bytes);
      }
    }
    return it;
  };
  base(ev.main);
  for (std::size_t i = 0; i < ev.devs.size(); ++i) {
    base(devs_[ev.devs[i]].worker)->second.first +=
        static_cast<double>(ev.estimate.devices[i].total_bytes);
  }
  double load = 0;
  for (const auto& [w, tt] : use) load = std::max(load, tt.second > 0 ? tt.first / tt.second : 0.0);
  return load;
}

}  // namespace ggfleet::plan
