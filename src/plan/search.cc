#include "plan/search.h"

#include <algorithm>
#include <numeric>
#include <set>
#include <sstream>
#include <utility>

namespace ggfleet::plan {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// Room for rounding in the bounds (they ignore the per-token fixed cost, splits, transfers and
// the KV cache read, which only add time).
constexpr double kBoundMargin = 0.001;

}  // namespace

Search::Search(const estimate::ModelMemory& m, const cluster::Cluster& cl, const Request& r,
               const perf::Constants& c, const Filter& filter)
    : m_(m),
      cl_(cl),
      r_(r),
      costs_(m.profile, c),
      repair_(m, cl, r, c, costs_, devs_),
      mains_(filter.mains()) {
  blocks_ = m.profile.blocks;
  devs_.reserve(filter.gpus().size());
  for (const UsableGpu& u : filter.gpus()) {
    const cluster::Gpu& gpu = u.worker->gpus[u.gpu];
    Dev d;
    d.ref = GpuRef{u.worker->name, u.gpu};
    d.worker = u.worker;
    d.gpu = &gpu;
    d.free_bytes = u.worker->free_vram_bytes(u.gpu) - gpu.runtime_bytes;  // > 0 (the filter)
    d.runtime_bytes = gpu.runtime_bytes;
    d.local_block_s = costs_.gpu_block_s(gpu, false);
    d.remote_block_s = costs_.gpu_block_s(gpu, true);
    devs_.push_back(d);
  }
  by_remote_cost_.resize(devs_.size());
  std::iota(by_remote_cost_.begin(), by_remote_cost_.end(), 0);
  std::stable_sort(by_remote_cost_.begin(), by_remote_cost_.end(),
                   [&](std::size_t a, std::size_t b) {
                     return devs_[a].remote_block_s < devs_[b].remote_block_s;
                   });
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
  const std::vector<double>& expert_reads = costs_.block_expert_read_bytes();
  if (r.expert_offload && r.allow_cpu_offload && m.profile.experts.count > 0) {
    double min_block = kInf, max_experts = 0, min_expert_read = kInf;
    for (std::uint32_t i = 0; i < blocks_ && i < expert_reads.size(); ++i) {
      if (m.layers[i].expert_cuda_bytes == 0 || expert_reads[i] <= 0) continue;
      min_block = std::min(min_block, static_cast<double>(m.layers[i].cuda_bytes));
      max_experts = std::max(max_experts, static_cast<double>(m.layers[i].expert_cuda_bytes));
      min_expert_read = std::min(min_expert_read, expert_reads[i]);
    }
    if (max_experts > 0) expert_overflow_read_bytes_ = min_block / max_experts * min_expert_read;
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

std::vector<Eval> Search::for_main(const cluster::Worker& main, bool quick, double floor_tg) {
  std::vector<Eval> out;
  std::set<std::vector<std::size_t>> seen;
  auto try_set = [&](std::vector<std::size_t> set) -> bool {  // true: the set holds everything
    std::sort(set.begin(), set.end());
    if (!seen.insert(set).second) return false;
    if (floor_tg > 0 && 1.0 / set_bound_s(main, set) < floor_tg) return false;
    std::optional<Eval> ev = repair_.split(main, set, r_.gpu_layers, quick);
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

std::vector<std::size_t> Search::pool_for(const cluster::Worker& main) const {
  std::vector<std::size_t> pool, remote_pool;
  for (std::size_t d = 0; d < devs_.size(); ++d) {
    if (devs_[d].worker == &main) pool.push_back(d);
  }
  if (r_.allow_distributed) {
    for (std::size_t d : by_remote_cost_) {
      if (remote_pool.size() >= r_.max_rpc_servers + 8) break;
      if (devs_[d].worker != &main && Filter::may_lend(main, *devs_[d].worker))
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

Eval Search::improve(const Eval& start, bool bounded, int rounds) {
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
      std::optional<Eval> ev = repair_.split(main, set, r_.gpu_layers);
      if (ev && ev->tg > best.tg * 1.0001) {
        best = std::move(*ev);
        better = true;
      }
    }
    if (!better) break;
  }
  return best;
}

double Search::bound_s(const cluster::Worker& main) const {
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
      if (devs_[d].worker == &main || !Filter::may_lend(main, *devs_[d].worker)) continue;
      if (remote_taken++ == 0) best = std::min(best, devs_[d].remote_block_s);
      capacity += static_cast<double>(devs_[d].free_bytes);
    }
  }
  const double per_block = repair_.block_bytes();
  const double gpu_blocks =
      per_block > 0 ? std::min<double>(blocks_, capacity / per_block) : blocks_;
  const double cpu_blocks = blocks_ - gpu_blocks;
  if (cpu_blocks > 0 && !r_.allow_cpu_offload) return kInf;
  const double gpu_part = gpu_blocks > 0 ? gpu_blocks * best : 0.0;
  return gpu_part + cpu_blocks * overflow_bound_s(main, repair_.cpu_block_s(main));
}

double Search::main_bound_s(const cluster::Worker& main) const {
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
            !Filter::may_lend(main, *devs_[remote_by_bound_[ri].dev].worker)))
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
  if (left > 0) total_s = cpu_s == kInf ? kInf : total_s + left * overflow_bound_s(main, cpu_s);
  // The output head: on one of the main's GPUs, another worker's (logits come back), or its CPU.
  double head_s = r_.allow_distributed ? min_remote_head_s_ : kInf;
  if (r_.allow_cpu_offload) head_s = std::min(head_s, costs_.head_cpu_s(main, r_.threads));
  for (const BoundItem& item : local)
    head_s = std::min(head_s, costs_.head_gpu_s(*devs_[item.dev].gpu, false));
  return (total_s + extra_read_bytes_ * byte_s + (head_s == kInf ? 0.0 : head_s)) *
         (1.0 - kBoundMargin);
}

double Search::set_bound_s(const cluster::Worker& main, const std::vector<std::size_t>& set) const {
  std::vector<BoundItem> items;
  double byte_s = r_.allow_cpu_offload ? costs_.cpu_byte_s(main, r_.threads) : kInf;
  for (std::size_t d : set) {
    byte_s = std::min(byte_s, costs_.gpu_byte_s(*devs_[d].gpu));
    const double cap = capacity_blocks(d);
    if (cap < 1) continue;
    const double cost = remote(d, main)
                            ? gpu_bound_s(d, true) +
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
  if (left > 0) total_s = cpu_s == kInf ? kInf : total_s + left * overflow_bound_s(main, cpu_s);
  double head_s = r_.allow_cpu_offload ? costs_.head_cpu_s(main, r_.threads) : kInf;
  for (std::size_t d : set)
    head_s = std::min(head_s, costs_.head_gpu_s(*devs_[d].gpu, remote(d, main)));
  return (total_s + extra_read_bytes_ * byte_s + (head_s == kInf ? 0.0 : head_s)) *
         (1.0 - kBoundMargin);
}

std::string Search::signature(const cluster::Worker& w) const {
  std::ostringstream o;
  o << w.cpu.cores << '/' << w.cpu.memory_bandwidth_bytes_per_s << '/' << w.free_ram_bytes() << '/'
    << w.ram_bytes << '/' << w.llama_build << '/' << w.cpu.generation_time_factor << '/'
    << w.cpu.prompt_time_factor << '/' << holds_model(w, r_) << '/'
    << w.download_bytes_per_s;  // a holder of the model's files wins ties; the download costs
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

double Search::gpu_bound_s(std::size_t d, bool over_rpc) const {
  return min_read_bytes_ * costs_.gpu_byte_s(*devs_[d].gpu) + costs_.gpu_layer_fixed_s(over_rpc);
}

double Search::cpu_bound_s(const cluster::Worker& main) const {
  return min_read_bytes_ * costs_.cpu_byte_s(main, r_.threads) + costs_.cpu_layer_fixed_s();
}

double Search::overflow_bound_s(const cluster::Worker& main, double cpu_s) const {
  if (expert_overflow_read_bytes_ <= 0) return cpu_s;
  return std::min(cpu_s, expert_overflow_read_bytes_ * costs_.cpu_byte_s(main, r_.threads));
}

double Search::capacity_blocks(std::size_t d) const {
  const auto fits = std::upper_bound(smallest_blocks_bytes_.begin(), smallest_blocks_bytes_.end(),
                                     static_cast<double>(devs_[d].free_bytes));
  return static_cast<double>(fits - smallest_blocks_bytes_.begin());
}

namespace {

// A main's quick look (its fastest-first sets, the default output device; sets below
// `floor_tg` skipped when it is > 0): its layouts go to out.all; returns its best speed.
double quick_look(Search& s, const cluster::Worker& w, double floor_tg, SearchResult& out) {
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
                       double best_tg, SearchResult& out) {
  std::stable_sort(quick.begin(), quick.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  for (std::size_t i = 0; i < quick.size(); ++i) {
    if (i >= 8 && quick[i].first < 0.9 * best_tg) break;
    if (i >= 32) break;
    for (Eval& ev : s.for_main(*quick[i].second)) out.all.push_back(std::move(ev));
  }
}

// Both searches over main workers: mains in order of their bound (`fast`: main_bound_s, else
// bound_s), identical workers once, a quick look at each main not pruned, then the full search
// for the mains whose quick look came near the best. Pruned: a main whose bound cannot even tie
// with the best found; in the fast search also, once kTieMains mains are expanded, one that could
// at most tie (the plan is then within the tolerance of any it would give, and the policy chooses
// among the ties found), and within a main the device sets whose own bound cannot reach the
// best's tie floor.
void search_mains(Search& s, const Request& r, bool fast, SearchResult& out) {
  constexpr std::uint64_t kTieMains = 16;
  std::vector<std::pair<double, const cluster::Worker*>> order;
  order.reserve(s.mains().size());
  for (const cluster::Worker* w : s.mains())
    order.emplace_back(fast ? s.main_bound_s(*w) : s.bound_s(*w), w);
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  const double tie = 1.0 + r.tie_tolerance;
  std::map<std::string, std::string> seen;
  std::vector<std::pair<double, const cluster::Worker*>> quick;
  double best_tg = 0;
  for (const auto& [bound, w] : order) {
    if (bound == kInf) continue;
    const double reach = 1.0 / bound;
    if (best_tg > 0 &&
        (reach * tie < best_tg || (fast && out.mains >= kTieMains && reach <= best_tg * tie))) {
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
    const double tg = quick_look(s, *w, fast ? best_tg / tie : 0, out);
    best_tg = std::max(best_tg, tg);
    quick.emplace_back(tg, w);
  }
  search_best_mains(s, std::move(quick), best_tg, out);
}

// An explicit layout: the given GPUs (in llama.cpp's order for each possible main), split and
// -ngl as given, checked, never changed.
std::vector<Eval> explicit_layouts(Search& s, const Request& r) {
  std::vector<Eval> out;
  SplitRepair& repair = s.repair();
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
      if (std::optional<Eval> ev = repair.split(*main, set)) out.push_back(std::move(*ev));
      continue;
    }
    // Keep the user's split, reordered with the devices into llama.cpp's order.
    std::vector<std::size_t> order = repair.ordered(*main, set);
    std::vector<double> ordered_split;
    for (std::size_t d : order) {
      const auto at = static_cast<std::size_t>(std::find(set.begin(), set.end(), d) - set.begin());
      if (!split.empty()) ordered_split.push_back(split[at]);
    }
    if (r.tensor_split.empty()) {
      if (std::optional<Eval> ev = repair.split(*main, set, r.gpu_layers))
        out.push_back(std::move(*ev));
      continue;
    }
    // The user's weights, as given.
    Eval ev = repair.with_devices(*main, order);
    ev.layout.tensor_split = ordered_split;
    ev.layout.gpu_layers = r.gpu_layers == kAutoGpuLayers ? -1 : r.gpu_layers;
    if (std::optional<Eval> done = repair.finish(std::move(ev))) out.push_back(std::move(*done));
  }
  return out;
}

// Local search from the best layouts of the three best mains.
void improve_best(Search& s, const Request& r, SearchResult& out) {
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

}  // namespace

SearchResult search_layouts(Search& s, const Request& r) {
  SearchResult out;
  if (!r.gpus.empty()) {
    out.all = explicit_layouts(s, r);
    out.mains = s.mains().size();
  } else {
    search_mains(s, r, r.search == SearchMode::kFast, out);
  }
  if (r.gpus.empty() && !out.all.empty()) improve_best(s, r, out);
  out.layouts = s.evaluated();
  return out;
}

}  // namespace ggfleet::plan
