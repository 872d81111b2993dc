#include "plan/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <set>
#include <sstream>

#include "cluster/units.h"

namespace ggfleet::plan {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A usable GPU and what it costs per block.
struct Dev {
  GpuRef ref;
  const cluster::Worker* worker = nullptr;
  const cluster::Gpu* gpu = nullptr;
  std::uint64_t free_bytes = 0;     // room for llama.cpp's buffers (free less runtime_bytes)
  std::uint64_t runtime_bytes = 0;  // the driving process's own use (cluster::Gpu)
  double local_block_s = 0;         // per block and token when on the main
  double remote_block_s = 0;  // per block and token over RPC
};

// One evaluated layout, before the detailed prediction.
struct Eval {
  const cluster::Worker* main = nullptr;
  std::vector<std::size_t> devs;  // indices into Search::devs, llama.cpp's order
  estimate::Layout layout;
  std::vector<perf::DevicePlace> places;
  estimate::Estimate estimate;
  double tg = 0, pp = 0;
  double load = 0;  // highest memory utilisation among the workers it uses, after placement
  std::uint32_t remote_devices = 0;
};

std::string gpu_label(const GpuRef& r) {
  return r.worker + ":" + std::to_string(r.gpu);
}

std::string rate(double tps) {
  char buf[32];
  std::snprintf(buf, sizeof buf, tps >= 100 ? "%.0f" : tps >= 10 ? "%.1f" : "%.2f", tps);
  return buf;
}

std::string percent_slower(double tg, double best) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.0f%% slower", 100.0 * (1.0 - tg / best));
  return buf;
}

bool selected(const cluster::Worker& w, const std::map<std::string, std::string>& selector) {
  for (const auto& [k, v] : selector) {
    const auto it = w.labels.find(k);
    if (it == w.labels.end() || it->second != v) return false;
  }
  return true;
}

class Search {
 public:
  Search(const estimate::ModelMemory& m, const cluster::Cluster& cl, const Request& r,
         const perf::Constants& c)
      : m_(m), cl_(cl), r_(r), c_(c), costs_(m.profile, c) {
    blocks_ = m.profile.blocks;
    for (const cluster::Worker& w : cl.workers) {
      if (!selected(w, r.selector)) continue;
      mains_.push_back(&w);
      for (std::uint32_t g = 0; g < w.gpus.size(); ++g) {
        const GpuRef ref{w.name, g};
        if (!r.gpus.empty() && std::find(r.gpus.begin(), r.gpus.end(), ref) == r.gpus.end())
          continue;
        const cluster::Gpu& gpu = w.gpus[g];
        // Room for llama.cpp's buffers: what is free less the process's own use of the GPU.
        const std::uint64_t room =
            w.free_vram_bytes(g) > gpu.runtime_bytes ? w.free_vram_bytes(g) - gpu.runtime_bytes : 0;
        if (!gpu.lent_to.empty() || room == 0) continue;
        Dev d;
        d.ref = ref;
        d.worker = &w;
        d.gpu = &gpu;
        d.free_bytes = room;
        d.runtime_bytes = gpu.runtime_bytes;
        d.local_block_s = costs_.gpu_block_s(gpu, false);
        d.remote_block_s = costs_.gpu_block_s(gpu, true);
        devs_.push_back(d);
      }
    }
    if (!r.main_worker.empty())
      std::erase_if(mains_, [&](const cluster::Worker* w) { return w->name != r.main_worker; });
    if (!r.gpus.empty()) {
      // Only workers owning an explicit GPU can be the main.
      std::erase_if(mains_, [&](const cluster::Worker* w) {
        return std::none_of(r.gpus.begin(), r.gpus.end(),
                            [&](const GpuRef& g) { return g.worker == w->name; });
      });
    }
    by_remote_cost_.resize(devs_.size());
    std::iota(by_remote_cost_.begin(), by_remote_cost_.end(), 0);
    std::stable_sort(by_remote_cost_.begin(), by_remote_cost_.end(),
                     [&](std::size_t a, std::size_t b) {
                       return devs_[a].remote_block_s < devs_[b].remote_block_s;
                     });
    // Memory of an average block on a GPU (weights + KV), and of the output layer.
    double block_bytes = 0;
    for (std::uint32_t i = 0; i < blocks_; ++i)
      block_bytes += static_cast<double>(m.layers[i].cuda_bytes);
    block_mem_bytes_ = blocks_ > 0 ? block_bytes / blocks_ : 0;
    output_mem_bytes_ =
        static_cast<double>(m.layers[blocks_].cuda_bytes + m.tied_output_cuda_bytes);
    estimate::Layout cpu_only;
    cpu_only.context = r.context;
    cpu_only.gpu_layers = 0;
    const estimate::Estimate e = estimate::estimate(m, cpu_only);  // validates the options
    kv_block_bytes_ = blocks_ > 0 ? static_cast<double>(e.host.kv_bytes) / blocks_ : 0;
    host_need_bytes_ = e.host.total_bytes;
    for (std::size_t d = 0; d < devs_.size(); ++d) devs_of_[devs_[d].worker].push_back(d);
    // Bounds (fast search): the smallest blocks' weights, so that a device's capacity in blocks
    // is never underestimated; the cheapest RPC call of any link.
    std::vector<double> sizes;
    for (std::uint32_t i = 0; i < blocks_; ++i)
      sizes.push_back(static_cast<double>(m.layers[i].cuda_bytes));
    std::sort(sizes.begin(), sizes.end());
    double sum = 0;
    for (double b : sizes) smallest_blocks_bytes_.push_back(sum += b);
    min_rpc_call_s_ = costs_.rpc_call_s(cl.default_link);
    for (const auto& [pair, link] : cl.links)
      min_rpc_call_s_ = std::min(min_rpc_call_s_, costs_.rpc_call_s(link));
    const std::vector<double>& reads = costs_.block_read_bytes();
    if (!reads.empty()) {
      min_read_bytes_ = *std::min_element(reads.begin(), reads.end());
      for (double b : reads) extra_read_bytes_ += b - min_read_bytes_;
    }
    for (std::size_t d = 0; d < devs_.size(); ++d) {
      min_gpu_byte_s_ = std::min(min_gpu_byte_s_, costs_.gpu_byte_s(*devs_[d].gpu));
      const double cap = capacity_blocks(d);
      if (cap < 1) continue;
      remote_by_bound_.push_back({gpu_bound_s(d, true) + min_rpc_call_s_ / cap, cap, d});
    }
    std::sort(remote_by_bound_.begin(), remote_by_bound_.end(),
              [](const BoundItem& a, const BoundItem& b) { return a.cost_s < b.cost_s; });
    for (const Dev& d : devs_)
      min_remote_head_s_ = std::min(min_remote_head_s_, costs_.head_gpu_s(*d.gpu, true));
  }

  const std::vector<Dev>& devs() const { return devs_; }
  const std::vector<const cluster::Worker*>& mains() const { return mains_; }
  std::uint64_t evaluated() const { return evaluated_; }
  std::uint64_t host_need_bytes() const { return host_need_bytes_; }

  bool remote(std::size_t d, const cluster::Worker& main) const { return devs_[d].worker != &main; }
  double block_s(std::size_t d, const cluster::Worker& main) const {
    return remote(d, main) ? devs_[d].remote_block_s : devs_[d].local_block_s;
  }
  double cpu_block_s(const cluster::Worker& main) const {
    return costs_.cpu_block_s(main, r_.threads);
  }

  // llama.cpp's order for a set of devices: remote ones first (in the given order), then the
  // main's own; `last` (if set) is moved to the end of its group.
  std::vector<std::size_t> ordered(const cluster::Worker& main, std::vector<std::size_t> set,
                                   std::optional<std::size_t> last = std::nullopt) const {
    const auto locals = estimate::to_llama_order(set.begin(), set.end(),
                                                 [&](std::size_t d) { return remote(d, main); });
    if (last) {
      const auto it = std::find(set.begin(), set.end(), *last);
      const auto group_end = remote(*last, main) ? locals : set.end();
      std::rotate(it, it + 1, group_end);
    }
    return set;
  }

  // Builds and checks the layout with `blocks_on[i]` blocks on device order[i] (the last device
  // also holds the output layer) and the rest on the CPU. nullopt if it does not fit.
  // The devices of `order` as llama.cpp names them, with their places.
  Eval with_devices(const cluster::Worker& main, const std::vector<std::size_t>& order) const {
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

  // The layout with `blocks_on[i]` blocks on device order[i] (the last also holds the output).
  Eval with_split(const cluster::Worker& main, const std::vector<std::size_t>& order,
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

  // Checks a layout (memory on every device and the main's RAM) and predicts it.
  std::optional<Eval> finish(Eval ev) {
    ++evaluated_;
    ev.estimate = estimate::estimate(m_, ev.layout);
    if (!ev.estimate.fits) return std::nullopt;
    const cluster::Worker& main = *ev.main;
    if (main.ram_bytes > 0 && ev.estimate.host.total_bytes > main.free_ram_bytes())
      return std::nullopt;
    perf::Scenario s;
    s.cluster = &cl_;
    s.main_worker = main.name;
    s.places = ev.places;
    s.threads = r_.threads;
    s.prompt_tokens = r_.prompt_tokens;
    std::tie(ev.tg, ev.pp) = perf::predict_rates(m_, ev.layout, ev.estimate, s, c_);
    ev.load = load_after(ev);
    return ev;
  }

  // Builds, checks and predicts the layout with `blocks_on[i]` blocks on device order[i] and the
  // rest on the CPU. nullopt if it does not fit.
  std::optional<Eval> realize(const cluster::Worker& main, const std::vector<std::size_t>& order,
                              const std::vector<std::uint32_t>& blocks_on) {
    return finish(with_split(main, order, blocks_on));
  }

  // The best split of the blocks over `set` (and the main's CPU) by per-block cost, trimmed
  // until it fits, trying a few devices for the output layer (the one with the most room, the
  // fastest, and llama.cpp's default last). `gpu_layers` fixes -ngl when not kAutoGpuLayers.
  std::optional<Eval> split(const cluster::Worker& main, const std::vector<std::size_t>& set,
                            std::int32_t gpu_layers = kAutoGpuLayers,
                            bool default_output_only = false) {
    if (set.empty()) {
      if (!r_.allow_cpu_offload || (gpu_layers > 0)) return std::nullopt;
      return realize(main, {}, {});
    }
    // llama.cpp's RPC protocol holds between equal builds only.
    for (std::size_t d : set) {
      if (!cluster::rpc_compatible(main, *devs_[d].worker)) return std::nullopt;
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
    if (default_output_only)
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
    return best;
  }

  std::optional<Eval> split_with_last(const cluster::Worker& main,
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
      if (room < 0) return std::nullopt;  // cannot even hold its buffers (or the output)
      cap[i] = static_cast<std::uint32_t>(std::min<double>(blocks_, std::floor(room / per_block)));
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

  // Evaluates every candidate set for `main`; returns the feasible ones.
  // Evaluates the candidate sets for `main`; returns the feasible ones. `quick`: only the main's
  // own GPUs then remote ones, fastest first, with the default output device.
  // `floor_tg` > 0 (fast search): sets whose bound cannot reach it are not evaluated.
  std::vector<Eval> for_main(const cluster::Worker& main, bool quick = false, double floor_tg = 0) {
    std::vector<Eval> out;
    std::set<std::vector<std::size_t>> seen;
    auto try_set = [&](std::vector<std::size_t> set) -> bool {  // true: the set holds everything
      std::sort(set.begin(), set.end());
      if (!seen.insert(set).second) return false;
      if (floor_tg > 0 && 1.0 / set_bound_s(main, set) < floor_tg) return false;
      std::optional<Eval> ev = split(main, set, r_.gpu_layers, quick);
      if (!ev) return false;
      const bool complete = ev->estimate.offloaded_layers == ev->estimate.total_layers;
      out.push_back(std::move(*ev));
      return complete;
    };
    auto prefixes = [&](const std::vector<std::size_t>& seq) {
      std::vector<std::size_t> set;
      for (std::size_t d : seq) {
        set.push_back(d);
        if (try_set(set)) break;
      }
    };
    const std::vector<std::size_t> pool = pool_for(main);
    std::vector<std::size_t> local;
    for (std::size_t d : pool) {
      if (!remote(d, main)) local.push_back(d);
    }
    if (r_.gpu_layers == 0 || (r_.allow_cpu_offload && local.empty())) try_set({});
    if (r_.gpu_layers == 0) return out;
    auto by = [&](auto key) {
      std::vector<std::size_t> seq(pool);
      std::stable_sort(seq.begin(), seq.end(),
                       [&](std::size_t a, std::size_t b) { return key(a) < key(b); });
      return seq;
    };
    auto cost = [&](std::size_t d) { return block_s(d, main); };
    auto room = [&](std::size_t d) { return -static_cast<double>(devs_[d].free_bytes); };
    // The main's own GPUs first (fastest first), then remote ones; all merged by speed; all by
    // room (fewest devices); every local GPU alone.
    std::vector<std::size_t> local_first =
        by([&](std::size_t d) { return std::make_pair(remote(d, main), cost(d)); });
    prefixes(local_first);
    if (quick) return out;
    prefixes(by(cost));
    prefixes(by(room));
    for (std::size_t d : local) try_set({d});
    if (r_.allow_cpu_offload && out.empty()) try_set({});
    return out;
  }

  // The devices a main may use: its own, and the fastest max_rpc_servers of the others (by
  // per-block cost plus its share of the RPC call over the link from this main).
  std::vector<std::size_t> pool_for(const cluster::Worker& main) const {
    std::vector<std::size_t> pool, remote_pool;
    for (std::size_t d = 0; d < devs_.size(); ++d) {
      if (devs_[d].worker == &main) pool.push_back(d);
    }
    if (r_.allow_distributed) {
      for (std::size_t d : by_remote_cost_) {
        if (remote_pool.size() >= r_.max_rpc_servers + 8) break;
        if (devs_[d].worker != &main && cluster::rpc_compatible(main, *devs_[d].worker))
          remote_pool.push_back(d);
      }
      auto adjusted = [&](std::size_t d) {
        return devs_[d].remote_block_s +
               costs_.rpc_call_s(cl_.link(main.name, devs_[d].ref.worker)) / std::max(1u, blocks_);
      };
      std::stable_sort(remote_pool.begin(), remote_pool.end(),
                       [&](std::size_t a, std::size_t b) { return adjusted(a) < adjusted(b); });
      if (remote_pool.size() > r_.max_rpc_servers) remote_pool.resize(r_.max_rpc_servers);
    }
    pool.insert(pool.end(), remote_pool.begin(), remote_pool.end());
    return pool;
  }

  // Hill climbing from `start`: drop a device, add one, or swap one for another of the pool,
  // while the prediction improves. Returns the best found (`start` if nothing beats it).
  // `bounded` (fast search): moves whose set bound cannot beat the best are not evaluated.
  Eval improve(const Eval& start, bool bounded, int rounds = 8) {
    Eval best = start;
    const cluster::Worker& main = *start.main;
    const std::vector<std::size_t> pool = pool_for(main);
    std::set<std::vector<std::size_t>> seen;
    for (int round = 0; round < rounds; ++round) {
      std::vector<std::size_t> cur = best.devs;
      std::sort(cur.begin(), cur.end());
      std::vector<std::vector<std::size_t>> moves;
      for (std::size_t i = 0; i < cur.size(); ++i) {
        std::vector<std::size_t> dropped(cur);
        dropped.erase(dropped.begin() + static_cast<std::ptrdiff_t>(i));
        if (!dropped.empty()) moves.push_back(dropped);
        for (std::size_t d : pool) {
          if (std::find(cur.begin(), cur.end(), d) != cur.end()) continue;
          std::vector<std::size_t> swapped(cur);
          swapped[i] = d;
          moves.push_back(swapped);
        }
      }
      for (std::size_t d : pool) {
        if (std::find(cur.begin(), cur.end(), d) != cur.end()) continue;
        std::vector<std::size_t> added(cur);
        added.push_back(d);
        if (added.size() <= r_.max_rpc_servers + 8) moves.push_back(added);
      }
      bool better = false;
      for (std::vector<std::size_t>& set : moves) {
        std::sort(set.begin(), set.end());
        if (!seen.insert(set).second) continue;
        if (bounded && 1.0 / set_bound_s(main, set) <= best.tg * 1.0001) continue;
        std::optional<Eval> ev = split(main, set, r_.gpu_layers);
        if (ev && ev->tg > best.tg * 1.0001) {
          best = std::move(*ev);
          better = true;
        }
      }
      if (!better) break;
    }
    return best;
  }

  // Lowest possible time per token with `main`: every block at the best per-block cost it can
  // reach, the blocks that cannot fit on GPUs at its CPU's cost. kInf when nothing can fit.
  double bound_s(const cluster::Worker& main) const {
    double best = kInf, capacity = 0;
    std::size_t remote_taken = 0;
    for (std::size_t d = 0; d < devs_.size(); ++d) {
      if (devs_[d].worker == &main) {
        best = std::min(best, devs_[d].local_block_s);
        capacity += static_cast<double>(devs_[d].free_bytes);
      }
    }
    if (r_.allow_distributed) {
      for (std::size_t d : by_remote_cost_) {
        if (remote_taken >= r_.max_rpc_servers) break;
        if (devs_[d].worker == &main || !cluster::rpc_compatible(main, *devs_[d].worker)) continue;
        if (remote_taken++ == 0) best = std::min(best, devs_[d].remote_block_s);
        capacity += static_cast<double>(devs_[d].free_bytes);
      }
    }
    const double per_block = block_mem_bytes_ + kv_block_bytes_;
    const double gpu_blocks =
        per_block > 0 ? std::min<double>(blocks_, capacity / per_block) : blocks_;
    const double cpu_blocks = blocks_ - gpu_blocks;
    if (cpu_blocks > 0 && !r_.allow_cpu_offload) return kInf;
    const double gpu_part = gpu_blocks > 0 ? gpu_blocks * best : 0.0;
    return gpu_part + cpu_blocks * cpu_block_s(main);
  }

  // A lower bound on the time per token of any layout with `main` (fast search): the blocks
  // filled, as a fluid, into the devices cheapest per block first — the main's own GPUs at their
  // local cost, other workers' at their RPC cost plus the cheapest RPC call shared over as many
  // blocks as the device could hold at most — and the rest on the main's CPU; every block counted
  // as the one that reads least (gpu_bound_s), the other blocks' extra bytes added once at the
  // cheapest rate per byte any device of the layout could have, and the output head on its
  // cheapest device. Capacities ignore compute buffers and count the smallest blocks first, so
  // no layout is faster. kInf when the blocks cannot all be placed (no CPU offload, too little
  // memory).
  double main_bound_s(const cluster::Worker& main) const {
    const auto mine = devs_of_.find(&main);
    std::vector<BoundItem> local;
    double byte_s = r_.allow_distributed ? min_gpu_byte_s_ : kInf;
    if (r_.allow_cpu_offload) byte_s = std::min(byte_s, costs_.cpu_byte_s(main, r_.threads));
    if (mine != devs_of_.end()) {
      for (std::size_t d : mine->second) {
        byte_s = std::min(byte_s, costs_.gpu_byte_s(*devs_[d].gpu));
        const double cap = capacity_blocks(d);
        if (cap >= 1) local.push_back({gpu_bound_s(d, false), cap, d});
      }
    }
    std::sort(local.begin(), local.end(),
              [](const BoundItem& a, const BoundItem& b) { return a.cost_s < b.cost_s; });
    const double cpu_s = r_.allow_cpu_offload ? cpu_bound_s(main) : kInf;
    double left = blocks_, total_s = 0;
    std::size_t li = 0, ri = 0;
    while (left > 0) {
      while (r_.allow_distributed && ri < remote_by_bound_.size() &&
             (devs_[remote_by_bound_[ri].dev].worker == &main ||
              !cluster::rpc_compatible(main, *devs_[remote_by_bound_[ri].dev].worker)))
        ++ri;
      const bool has_remote = r_.allow_distributed && ri < remote_by_bound_.size();
      const bool has_local = li < local.size();
      if (!has_local && !has_remote) break;
      const bool take_local =
          has_local && (!has_remote || local[li].cost_s <= remote_by_bound_[ri].cost_s);
      const BoundItem& item = take_local ? local[li++] : remote_by_bound_[ri++];
      if (item.cost_s >= cpu_s) break;
      const double n = std::min(left, item.capacity_blocks);
      total_s += n * item.cost_s;
      left -= n;
    }
    if (left > 0) total_s = cpu_s == kInf ? kInf : total_s + left * cpu_s;
    // The output head: on one of the main's GPUs, another worker's (logits come back), or its CPU.
    double head_s = r_.allow_distributed ? min_remote_head_s_ : kInf;
    if (r_.allow_cpu_offload) head_s = std::min(head_s, costs_.head_cpu_s(main, r_.threads));
    for (const BoundItem& item : local)
      head_s = std::min(head_s, costs_.head_gpu_s(*devs_[item.dev].gpu, false));
    return (total_s + extra_read_bytes_ * byte_s + (head_s == kInf ? 0.0 : head_s)) *
           (1.0 - kBoundMargin);
  }

  // The same bound for the layouts on the devices of `set` only (and the main's CPU), with the
  // RPC call of each device's own link.
  double set_bound_s(const cluster::Worker& main, const std::vector<std::size_t>& set) const {
    std::vector<BoundItem> items;
    double byte_s = r_.allow_cpu_offload ? costs_.cpu_byte_s(main, r_.threads) : kInf;
    for (std::size_t d : set) {
      byte_s = std::min(byte_s, costs_.gpu_byte_s(*devs_[d].gpu));
      const double cap = capacity_blocks(d);
      if (cap < 1) continue;
      const double cost =
          remote(d, main) ? gpu_bound_s(d, true) +
                                costs_.rpc_call_s(cl_.link(main.name, devs_[d].ref.worker)) / cap
                          : gpu_bound_s(d, false);
      items.push_back({cost, cap, d});
    }
    std::sort(items.begin(), items.end(),
              [](const BoundItem& a, const BoundItem& b) { return a.cost_s < b.cost_s; });
    const double cpu_s = r_.allow_cpu_offload ? cpu_bound_s(main) : kInf;
    double left = blocks_, total_s = 0;
    for (const BoundItem& item : items) {
      if (left <= 0 || item.cost_s >= cpu_s) break;
      const double n = std::min(left, item.capacity_blocks);
      total_s += n * item.cost_s;
      left -= n;
    }
    if (left > 0) total_s = cpu_s == kInf ? kInf : total_s + left * cpu_s;
    double head_s = r_.allow_cpu_offload ? costs_.head_cpu_s(main, r_.threads) : kInf;
    for (std::size_t d : set)
      head_s = std::min(head_s, costs_.head_gpu_s(*devs_[d].gpu, remote(d, main)));
    return (total_s + extra_read_bytes_ * byte_s + (head_s == kInf ? 0.0 : head_s)) *
           (1.0 - kBoundMargin);
  }

  // Identical resources give identical layouts: evaluate one worker per signature.
  std::string signature(const cluster::Worker& w) const {
    std::ostringstream o;
    o << w.cpu.cores << '/' << w.cpu.memory_bandwidth_bytes_per_s << '/' << w.free_ram_bytes()
      << '/' << w.ram_bytes << '/' << w.llama_build << '/' << w.cpu.generation_time_factor << '/'
      << w.cpu.prompt_time_factor;
    if (const auto mine = devs_of_.find(&w); mine != devs_of_.end()) {
      for (std::size_t i : mine->second) {
        const Dev& d = devs_[i];
        o << '|' << d.gpu->name << '/' << d.free_bytes << '/' << d.gpu->memory_bandwidth_bytes_per_s
          << '/' << d.gpu->fp16_flops << '/' << d.gpu->generation_time_factor << '/'
          << d.gpu->prompt_time_factor;
      }
    }
    for (const auto& [pair, link] : cl_.links) {
      if (pair.first == w.name || pair.second == w.name) {
        o << "|L" << (pair.first == w.name ? pair.second : pair.first) << '/'
          << link.bandwidth_bytes_per_s << '/' << link.latency_s << '/' << link.call_time_factor;
      }
    }
    return o.str();
  }

  // Highest utilisation (used / total memory) among the workers an evaluation uses, after it.
  double load_after(const Eval& ev) const {
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
    for (const auto& [w, tt] : use)
      load = std::max(load, tt.second > 0 ? tt.first / tt.second : 0.0);
    return load;
  }

  const estimate::ModelMemory& model() const { return m_; }
  std::uint32_t blocks() const { return blocks_; }

 private:
  const estimate::ModelMemory& m_;
  const cluster::Cluster& cl_;
  const Request& r_;
  const perf::Constants& c_;
  perf::LayerCosts costs_;
  std::vector<Dev> devs_;
  std::vector<std::size_t> by_remote_cost_;
  std::vector<const cluster::Worker*> mains_;
  std::uint32_t blocks_ = 0;
  double block_mem_bytes_ = 0, kv_block_bytes_ = 0, output_mem_bytes_ = 0;
  std::uint64_t host_need_bytes_ = 0;
  std::uint64_t evaluated_ = 0;
  // Room for rounding in the bounds (they ignore the per-token fixed cost, splits, transfers and
  // the KV cache read, which only add time).
  static constexpr double kBoundMargin = 0.001;
  struct BoundItem {
    double cost_s = 0;           // per block and token, with its share of a call
    double capacity_blocks = 0;  // at most
    std::size_t dev = 0;
  };
  // Per block on device d (or the main's CPU) for the bounds: the bytes of the block that reads
  // the least, and the fixed cost of a layer. The bytes the other blocks read beyond it are
  // added once, at the cheapest rate per byte any device of the layout could have.
  double gpu_bound_s(std::size_t d, bool over_rpc) const {
    return min_read_bytes_ * costs_.gpu_byte_s(*devs_[d].gpu) + costs_.gpu_layer_fixed_s(over_rpc);
  }
  double cpu_bound_s(const cluster::Worker& main) const {
    return min_read_bytes_ * costs_.cpu_byte_s(main, r_.threads) + costs_.cpu_layer_fixed_s();
  }
  // Blocks device d could hold at most: as many as the smallest blocks fit in its free memory.
  double capacity_blocks(std::size_t d) const {
    const auto fits = std::upper_bound(smallest_blocks_bytes_.begin(), smallest_blocks_bytes_.end(),
                                       static_cast<double>(devs_[d].free_bytes));
    return static_cast<double>(fits - smallest_blocks_bytes_.begin());
  }
  std::map<const cluster::Worker*, std::vector<std::size_t>> devs_of_;
  std::vector<BoundItem> remote_by_bound_;     // every device, cheapest bound cost first
  std::vector<double> smallest_blocks_bytes_;  // [k]: the k+1 smallest blocks' weights
  double min_rpc_call_s_ = 0, min_remote_head_s_ = kInf, min_gpu_byte_s_ = kInf;
  double min_read_bytes_ = 0, extra_read_bytes_ = 0;
};

// Picks the winner: the best generation speed, then within the tie tolerance the policy
// (spread: lowest load; binpack: highest), fewer GPUs, faster prompts, the main's name.
const Eval* pick(const std::vector<const Eval*>& evals, const Request& r) {
  if (evals.empty()) return nullptr;
  double best_tg = 0;
  for (const Eval* e : evals) best_tg = std::max(best_tg, e->tg);
  const Eval* winner = nullptr;
  for (const Eval* e : evals) {
    if (e->tg * (1.0 + r.tie_tolerance) < best_tg) continue;
    if (winner == nullptr) {
      winner = e;
      continue;
    }
    const double dl = e->load - winner->load;
    if (std::abs(dl) > 0.02) {  // a clearly different load: the policy decides
      if ((r.policy == Policy::kSpread) == (dl < 0)) winner = e;
      continue;
    }
    if (e->devs.size() != winner->devs.size()) {
      if (e->devs.size() < winner->devs.size()) winner = e;
      continue;
    }
    if (e->remote_devices != winner->remote_devices) {  // fewer rpc-servers, quicker start
      if (e->remote_devices < winner->remote_devices) winner = e;
      continue;
    }
    if (std::abs(e->tg - winner->tg) > 1e-9 * winner->tg) {
      if (e->tg > winner->tg) winner = e;
      continue;
    }
    if (std::abs(e->pp - winner->pp) > 1e-9 * winner->pp) {
      if (e->pp > winner->pp) winner = e;
      continue;
    }
    if (e->main->name < winner->main->name) winner = e;
  }
  return winner;
}

Candidate detail(const Eval& ev, const std::string& label, const cluster::Cluster& cl,
                 const estimate::ModelMemory& m, const Request& r, const perf::Constants& c) {
  Candidate out;
  out.label = label;
  out.main_worker = ev.main->name;
  out.layout = ev.layout;
  out.places = ev.places;
  out.estimate = ev.estimate;
  perf::Scenario s;
  s.cluster = &cl;
  s.main_worker = ev.main->name;
  s.places = ev.places;
  s.threads = r.threads;
  s.prompt_tokens = r.prompt_tokens;
  out.prediction = perf::predict(m, ev.layout, ev.estimate, s, c);
  return out;
}

void validate(const estimate::ModelMemory& m, const cluster::Cluster& cl, const Request& r) {
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

// An explicit layout: the given GPUs (in llama.cpp's order for each possible main), split and
// -ngl as given, checked, never changed.
std::vector<Eval> explicit_layouts(Search& s, const Request& r) {
  std::vector<Eval> out;
  for (const cluster::Worker* main : s.mains()) {
    std::vector<std::size_t> set;
    std::vector<double> split;
    for (std::size_t i = 0; i < r.gpus.size(); ++i) {
      for (std::size_t d = 0; d < s.devs().size(); ++d) {
        if (s.devs()[d].ref == r.gpus[i]) {
          set.push_back(d);
          if (!r.tensor_split.empty()) split.push_back(r.tensor_split[i]);
        }
      }
    }
    if (set.size() != r.gpus.size()) continue;  // a GPU is lent or full: checked by the caller
    if (r.tensor_split.empty() && r.gpu_layers == kAutoGpuLayers) {
      if (std::optional<Eval> ev = s.split(*main, set)) out.push_back(std::move(*ev));
      continue;
    }
    // Keep the user's split, reordered with the devices into llama.cpp's order.
    std::vector<std::size_t> order = s.ordered(*main, set);
    std::vector<double> ordered_split;
    for (std::size_t d : order) {
      const auto at = static_cast<std::size_t>(std::find(set.begin(), set.end(), d) - set.begin());
      if (!split.empty()) ordered_split.push_back(split[at]);
    }
    if (r.tensor_split.empty()) {
      if (std::optional<Eval> ev = s.split(*main, set, r.gpu_layers)) out.push_back(std::move(*ev));
      continue;
    }
    // The user's weights, as given.
    Eval ev = s.with_devices(*main, order);
    ev.layout.tensor_split = ordered_split;
    ev.layout.gpu_layers = r.gpu_layers == kAutoGpuLayers ? -1 : r.gpu_layers;
    if (std::optional<Eval> done = s.finish(std::move(ev))) out.push_back(std::move(*done));
  }
  return out;
}

struct OneReplica {
  std::optional<Eval> chosen;
  std::vector<Eval> all;                      // every feasible evaluation kept for explanations
  std::map<std::string, double> bound_tg;     // pruned mains: the best they could reach
  std::map<std::string, std::string> copies;  // main -> the identical main evaluated instead
  std::string why_not;
  std::uint64_t layouts = 0, mains = 0;
};

// A main's quick look (its fastest-first sets, the default output device; sets below
// `floor_tg` skipped when it is > 0): its layouts go to out.all; returns its best speed.
double quick_look(Search& s, const cluster::Worker& w, double floor_tg, OneReplica& out) {
  double tg = 0;
  for (Eval& ev : s.for_main(w, /*quick=*/true, floor_tg)) {
    tg = std::max(tg, ev.tg);
    out.all.push_back(std::move(ev));
  }
  return tg;
}

// The full search for the mains whose quick look came near the best (at least 8, at most 32).
// No floor: the hill climbing after it starts from these mains' best layouts.
void search_best_mains(Search& s, std::vector<std::pair<double, const cluster::Worker*>> quick,
                       double best_tg, OneReplica& out) {
  std::stable_sort(quick.begin(), quick.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  for (std::size_t i = 0; i < quick.size(); ++i) {
    if (i >= 8 && quick[i].first < 0.9 * best_tg) break;
    if (i >= 32) break;
    for (Eval& ev : s.for_main(*quick[i].second)) out.all.push_back(std::move(ev));
  }
}

// The fast search over main workers: mains in order of their bound (main_bound_s), none expanded
// once its bound cannot come within the tie tolerance of the best found; identical workers once;
// within a main, device sets whose own bound cannot reach that far are skipped. Then, as in the
// reference search, the full search for the mains whose quick look came near the best.
void search_fast(Search& s, const Request& r, OneReplica& out) {
  constexpr std::uint64_t kTieMains = 16;
  std::vector<std::pair<double, const cluster::Worker*>> order;
  order.reserve(s.mains().size());
  for (const cluster::Worker* w : s.mains()) order.emplace_back(s.main_bound_s(*w), w);
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  const auto floor_of = [&](double best_tg) { return best_tg / (1.0 + r.tie_tolerance); };
  std::map<std::string, std::string> seen;
  std::vector<std::pair<double, const cluster::Worker*>> quick;
  double best_tg = 0;
  for (const auto& [bound, w] : order) {
    if (bound == kInf) continue;
    // Sorted by bound: a main that cannot even tie with the best is not expanded. Once
    // kTieMains mains are expanded, neither is one that could at most tie: the plan is then
    // within the tolerance of any it would give, and the policy chooses among the ties found.
    const double reach = 1.0 / bound;
    if (best_tg > 0 && (reach * (1.0 + r.tie_tolerance) < best_tg ||
                        (out.mains >= kTieMains && reach <= best_tg * (1.0 + r.tie_tolerance)))) {
      out.bound_tg[w->name] = reach;
      continue;
    }
    const std::string sig = s.signature(*w);
    if (const auto it = seen.find(sig); it != seen.end()) {
      out.copies[w->name] = it->second;
      continue;
    }
    seen[sig] = w->name;
    ++out.mains;
    const double tg = quick_look(s, *w, floor_of(best_tg), out);
    best_tg = std::max(best_tg, tg);
    quick.emplace_back(tg, w);
  }
  search_best_mains(s, std::move(quick), best_tg, out);
}

OneReplica plan_one(const estimate::ModelMemory& m, const cluster::Cluster& cl, const Request& r,
                    const perf::Constants& c) {
  OneReplica out;
  Search s(m, cl, r, c);
  if (!r.gpus.empty()) {
    for (const GpuRef& g : r.gpus) {
      const cluster::Worker* w = cl.find(g.worker);
      if (!selected(*w, r.selector))
        throw PlanError("GPU " + gpu_label(g) + " is on a worker the selector excludes");
      if (!w->gpus[g.gpu].lent_to.empty()) {
        out.why_not = "GPU " + gpu_label(g) + " is lent to instance " + w->gpus[g.gpu].lent_to;
        return out;
      }
      if (w->free_vram_bytes(g.gpu) == 0) {
        out.why_not = "GPU " + gpu_label(g) + " has no free memory";
        return out;
      }
    }
    out.all = explicit_layouts(s, r);
    out.mains = s.mains().size();
  } else if (r.search == SearchMode::kFast) {
    search_fast(s, r, out);
  } else {
    // Best bound first; identical workers once.
    std::vector<std::pair<double, const cluster::Worker*>> order;
    for (const cluster::Worker* w : s.mains()) order.emplace_back(s.bound_s(*w), w);
    std::stable_sort(order.begin(), order.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    // Phase 1: a quick look at every main (its fastest-first sets, the default output
    // device). Phase 2: the full search for the mains whose quick result is near the best.
    std::map<std::string, std::string> seen;
    std::vector<std::pair<double, const cluster::Worker*>> quick;
    double best_tg = 0;
    for (const auto& [bound, w] : order) {
      if (bound == kInf) continue;
      if (best_tg > 0 && 1.0 / bound * (1.0 + r.tie_tolerance) < best_tg) {
        out.bound_tg[w->name] = 1.0 / bound;
        continue;
      }
      const std::string sig = s.signature(*w);
      if (const auto it = seen.find(sig); it != seen.end()) {
        out.copies[w->name] = it->second;
        continue;
      }
      seen[sig] = w->name;
      ++out.mains;
      const double tg = quick_look(s, *w, 0, out);
      best_tg = std::max(best_tg, tg);
      quick.emplace_back(tg, w);
    }
    search_best_mains(s, std::move(quick), best_tg, out);
  }
  // Local search from the best layouts of the three best mains.
  if (r.gpus.empty() && !out.all.empty()) {
    std::map<const cluster::Worker*, const Eval*> best_of;
    for (const Eval& e : out.all) {
      auto& slot = best_of[e.main];
      if (slot == nullptr || e.tg > slot->tg) slot = &e;
    }
    std::vector<const Eval*> tops;
    for (const auto& [w, e] : best_of) tops.push_back(e);
    std::sort(tops.begin(), tops.end(), [](const Eval* a, const Eval* b) { return a->tg > b->tg; });
    std::vector<Eval> better;
    for (std::size_t i = 0; i < tops.size() && i < 3; ++i) {
      Eval e = s.improve(*tops[i], r.search == SearchMode::kFast);
      if (e.tg > tops[i]->tg) better.push_back(std::move(e));
    }
    for (Eval& e : better) out.all.push_back(std::move(e));
  }
  out.layouts = s.evaluated();
  std::vector<const Eval*> ptrs;
  for (const Eval& e : out.all) ptrs.push_back(&e);
  if (const Eval* w = pick(ptrs, r)) {
    out.chosen = *w;
    return out;
  }
  // Nothing fits: the closest option and what it lacks.
  if (out.why_not.empty()) {
    std::uint64_t best_gap = std::numeric_limits<std::uint64_t>::max();
    std::string best_text;
    for (const cluster::Worker* w : s.mains()) {
      std::uint64_t have = 0;
      std::uint32_t gpus = 0;
      std::vector<std::uint64_t> remote_free;
      for (const Dev& d : s.devs()) {
        if (d.worker == w) {
          have += d.free_bytes;
          ++gpus;
        } else if (r.allow_distributed) {
          remote_free.push_back(d.free_bytes);
        }
      }
      std::sort(remote_free.rbegin(), remote_free.rend());
      for (std::size_t i = 0; i < remote_free.size() && i < r.max_rpc_servers; ++i, ++gpus)
        have += remote_free[i];
      const std::uint64_t ram = w->ram_bytes > 0 ? w->free_ram_bytes() : 0;
      if (r.allow_cpu_offload) have += ram;
      const std::uint64_t need = s.host_need_bytes();
      const std::uint64_t gap = need > have ? need - have : 0;
      if (gap < best_gap) {
        best_gap = gap;
        best_text = "main " + w->name + " with " + std::to_string(gpus) + " GPU(s)" +
                    (r.allow_cpu_offload ? " and its RAM" : "") + ": " +
                    cluster::format_bytes(have) + " free for about " + cluster::format_bytes(need) +
                    " of weights, KV cache and buffers";
      }
    }
    if (s.mains().empty()) {
      out.why_not = "does not fit: no worker matches the request (selector or explicit GPUs)";
    } else if (best_gap > 0) {
      out.why_not = "does not fit: the closest option is " + best_text + " (lacks " +
                    cluster::format_bytes(best_gap) + ")";
    } else {
      out.why_not =
          "does not fit: the closest option is " + best_text +
          ", but no split fits each device's memory (per-device buffers and the output layer)" +
          (r.allow_cpu_offload ? "" : "; allowing CPU offload may help");
    }
  }
  return out;
}

}  // namespace

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

cluster::Cluster with_claims(const cluster::Cluster& cl, const Candidate& c,
                             const std::string& instance) {
  cluster::Cluster out = cl;
  for (std::size_t i = 0; i < c.places.size(); ++i) {
    for (cluster::Worker& w : out.workers) {
      if (w.name != c.places[i].worker) continue;
      cluster::Gpu& g = w.gpus.at(c.places[i].gpu);
      g.claimed_bytes += c.estimate.devices[i].total_bytes;
      if (c.layout.devices[i].remote) g.lent_to = instance;
    }
  }
  for (cluster::Worker& w : out.workers) {
    if (w.name == c.main_worker) w.claimed_ram_bytes += c.estimate.host.total_bytes;
  }
  return out;
}

Plan make_plan(const estimate::ModelMemory& m, const cluster::Cluster& cl, const Request& r,
               const perf::Constants& c) {
  validate(m, cl, r);
  Plan plan;
  cluster::Cluster state = cl;
  for (std::uint32_t i = 0; i < r.replicas; ++i) {
    OneReplica one = plan_one(m, state, r, c);
    plan.layouts_evaluated += one.layouts;
    plan.mains_evaluated += one.mains;
    if (!one.chosen) {
      plan.reason = i == 0 ? one.why_not
                           : "placed " + std::to_string(i) + " of " + std::to_string(r.replicas) +
                                 " replicas; then " + one.why_not;
      break;
    }
    Replica rep;
    rep.chosen = detail(*one.chosen, "plan", state, m, r, c);
    rep.launch = launch_for(rep.chosen, state, r);
    rep.commands = commands(rep.launch);
    if (i == 0 && r.explain) {
      const Eval& best = *one.chosen;
      // Alternatives: the same GPUs with another main, the best of each other main, the best on
      // one worker.
      std::vector<std::pair<const Eval*, std::string>> alts;
      auto same_set = [](const Eval& a, const Eval& b) {
        std::vector<std::size_t> x = a.devs, y = b.devs;
        std::sort(x.begin(), x.end());
        std::sort(y.begin(), y.end());
        return x == y;
      };
      std::map<std::string, const Eval*> best_of_main;
      const Eval* best_single = nullptr;
      for (const Eval& e : one.all) {
        if (&e == &*one.chosen || (e.main == best.main && same_set(e, best))) continue;
        const bool single = std::none_of(e.layout.devices.begin(), e.layout.devices.end(),
                                         [](const estimate::Device& d) { return d.remote; });
        if (single && (best_single == nullptr || e.tg > best_single->tg)) best_single = &e;
        auto& slot = best_of_main[e.main->name];
        if (slot == nullptr || e.tg > slot->tg) slot = &e;
      }
      Search s(m, state, r, c);
      std::set<std::string> owners;
      for (const perf::DevicePlace& p : best.places) owners.insert(p.worker);
      std::vector<Eval> swapped;
      swapped.reserve(owners.size());
      for (const std::string& o : owners) {
        if (o == best.main->name) continue;
        const cluster::Worker* w = state.find(o);
        if (!selected(*w, r.selector)) continue;
        if (std::optional<Eval> ev = s.split(*w, best.devs)) swapped.push_back(std::move(*ev));
      }
      for (const Eval& e : swapped) alts.emplace_back(&e, "main " + e.main->name + ", same GPUs");
      if (best_single != nullptr && !best.layout.devices.empty() &&
          std::any_of(best.layout.devices.begin(), best.layout.devices.end(),
                      [](const auto& d) { return d.remote; })) {
        alts.emplace_back(best_single,
                          "best on one worker (" + best_single->main->name + ", no RPC)");
      }
      std::vector<const Eval*> others;
      for (const auto& [name, e] : best_of_main) {
        if (name != best.main->name) others.push_back(e);
      }
      std::sort(others.begin(), others.end(),
                [](const Eval* a, const Eval* b) { return a->tg > b->tg; });
      for (std::size_t k = 0; k < others.size() && k < 3; ++k)
        alts.emplace_back(others[k], "best with main " + others[k]->main->name);
      std::set<std::pair<std::string, std::vector<std::size_t>>> shown;
      for (const auto& [e, label] : alts) {
        std::vector<std::size_t> key = e->devs;
        std::sort(key.begin(), key.end());
        if (!shown.insert({e->main->name, key}).second) continue;
        plan.alternatives.push_back(detail(*e, label, state, m, r, c));
        if (plan.alternatives.size() >= 5) break;
      }
      // Why each unused worker is unused.
      std::set<std::string> used = owners;
      used.insert(best.main->name);
      std::map<std::string, double> best_as_main;
      for (const Eval& e : one.all)
        best_as_main[e.main->name] = std::max(best_as_main[e.main->name], e.tg);
      for (const cluster::Worker& w : state.workers) {
        if (used.count(w.name)) continue;
        std::string why;
        if (!selected(w, r.selector)) {
          why = "excluded by the label selector";
        } else if (!r.gpus.empty()) {
          why = "not among the requested GPUs";
        } else if (!r.main_worker.empty() && best_as_main.count(w.name) == 0) {
          why = "the main is fixed to " + r.main_worker;
        } else if (!cluster::rpc_compatible(w, *best.main)) {
          why = "its llama.cpp build (" + w.llama_build + ") differs from main " + best.main->name +
                "'s (" + best.main->llama_build +
                "): llama.cpp's RPC protocol holds between equal builds only";
        } else if (!w.gpus.empty() &&
                   std::all_of(w.gpus.begin(), w.gpus.end(),
                               [](const cluster::Gpu& g) { return !g.lent_to.empty(); })) {
          why = "its GPUs are lent to " + w.gpus.front().lent_to +
                " (an rpc-server serves one instance)";
        } else if (const auto it = best_as_main.find(w.name); it != best_as_main.end()) {
          why = "as main at best " + rate(it->second) + " tokens/s (" +
                percent_slower(it->second, best.tg) + ")";
        } else if (const auto cp = one.copies.find(w.name); cp != one.copies.end()) {
          const auto bm = best_as_main.find(cp->second);
          why =
              "same resources as " + cp->second +
              (bm != best_as_main.end() ? ": as main at best " + rate(bm->second) + " tokens/s (" +
                                              percent_slower(bm->second, best.tg) + ")"
                                        : ": nothing fits with it as main");
        } else if (const auto bt = one.bound_tg.find(w.name); bt != one.bound_tg.end()) {
          why = bt->second < best.tg
                    ? "as main at most " + rate(bt->second) +
                          " tokens/s even with its fastest reachable GPUs (" +
                          percent_slower(bt->second, best.tg) + ")"
                    : "as main at most " + rate(bt->second) +
                          " tokens/s with its fastest reachable GPUs, within the tie tolerance of "
                          "the plan: not searched further";
        } else {
          why = "nothing fits with it as main";
        }
        bool has_free_gpu = false;
        for (std::size_t g = 0; g < w.gpus.size(); ++g)
          has_free_gpu |= w.gpus[g].lent_to.empty() && w.free_vram_bytes(g) > 0;
        if (has_free_gpu && selected(w, r.selector) && r.gpus.empty()) {
          why += r.allow_distributed ? "; its GPUs would not speed up the plan over RPC"
                                     : "; distribution across workers is off";
        }
        plan.rejected.push_back({w.name, why});
      }
    }
    plan.replicas.push_back(std::move(rep));
    state = with_claims(state, plan.replicas.back().chosen, "replica-" + std::to_string(i));
  }
  plan.feasible = plan.replicas.size() == r.replicas;
  return plan;
}

std::optional<Candidate> brute_force(const estimate::ModelMemory& m, const cluster::Cluster& cl,
                                     const Request& r, const perf::Constants& c) {
  validate(m, cl, r);
  Search s(m, cl, r, c);
  const std::size_t n = s.devs().size();
  if (n > 6) throw PlanError("brute force is for at most 6 GPUs");
  const std::uint32_t blocks = s.blocks();
  std::optional<Eval> best;
  auto consider = [&](std::optional<Eval> ev) {
    if (ev && (!best || ev->tg > best->tg)) best = std::move(ev);
  };
  for (const cluster::Worker* main : s.mains()) {
    if (r.allow_cpu_offload) consider(s.realize(*main, {}, {}));
    // counts[d] blocks on device d, the rest on the CPU; every device may hold the output.
    std::vector<std::uint32_t> counts(n, 0);
    for (;;) {
      const std::uint32_t on_gpus = std::accumulate(counts.begin(), counts.end(), 0u);
      if (on_gpus <= blocks && (r.allow_cpu_offload || on_gpus == blocks)) {
        for (std::size_t last = 0; last < n; ++last) {
          std::vector<std::size_t> set;
          for (std::size_t d = 0; d < n; ++d) {
            if (counts[d] > 0 || d == last) set.push_back(d);
          }
          if (!r.allow_distributed && std::any_of(set.begin(), set.end(), [&](std::size_t d) {
                return s.remote(d, *main);
              })) {
            continue;
          }
          const bool any_local = std::any_of(set.begin(), set.end(),
                                             [&](std::size_t d) { return !s.remote(d, *main); });
          if (any_local && s.remote(last, *main))
            continue;  // llama.cpp's last device is local then
          const std::vector<std::size_t> order = s.ordered(*main, set, last);
          std::vector<std::uint32_t> on;
          for (std::size_t d : order) on.push_back(counts[d]);
          consider(s.realize(*main, order, on));
        }
      }
      // Next composition.
      std::size_t i = 0;
      while (i < n && ++counts[i] > blocks) counts[i++] = 0;
      if (i == n) break;
    }
  }
  if (!best) return std::nullopt;
  return detail(*best, "brute force", cl, m, r, c);
}

}  // namespace ggfleet::plan
