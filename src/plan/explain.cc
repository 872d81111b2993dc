#include "plan/explain.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <utility>

#include "cluster/units.h"

namespace ggfleet::plan {
namespace {

std::string rate(double tps) {
  char buf[32];
  std::snprintf(buf, sizeof buf, tps >= 100 ? "%.0f" : tps >= 10 ? "%.1f" : "%.2f", tps);
  return buf;
}

// How a speed compares with the plan's: "12% slower". Faster or as fast only as a tie (within
// the tie tolerance), where the score decided (score.h).
std::string compared(double tg, double best, const Request& r) {
  const double percent = 100.0 * (tg / best - 1.0);
  const bool tie = tg * (1.0 + r.tie_tolerance) >= best;
  char buf[128];
  if (tie && percent > -0.5) {
    std::snprintf(
        buf, sizeof buf, "%s, a tie: the %s policy, fewer GPUs and prompt speed decided",
        percent >= 0.5 ? (std::to_string(std::lround(percent)) + "% faster").c_str() : "as fast",
        r.policy == Policy::kSpread ? "spread" : "binpack");
  } else {
    std::snprintf(buf, sizeof buf, -percent >= 1 ? "%.0f%% slower" : "%.1f%% slower", -percent);
  }
  return buf;
}

bool same_set(const Eval& a, const Eval& b) {
  std::vector<std::size_t> x = a.devs, y = b.devs;
  std::sort(x.begin(), x.end());
  std::sort(y.begin(), y.end());
  return x == y;
}

// The workers whose GPUs a layout uses.
std::set<std::string> owners_of(const Eval& e) {
  std::set<std::string> owners;
  for (const perf::DevicePlace& p : e.places) owners.insert(p.worker);
  return owners;
}

}  // namespace

Candidate candidate_of(const Eval& ev, const std::string& label, const cluster::Cluster& cl,
                       const estimate::ModelMemory& m, const Request& r, const perf::Constants& c) {
  Candidate out;
  out.label = label;
  out.main_worker = ev.main->name;
  out.layout = ev.layout;
  out.places = ev.places;
  out.estimate = ev.estimate;
  out.prediction =
      perf::predict(m, ev.layout, ev.estimate, scenario_for(cl, ev.main->name, ev.places, r), c);
  out.prediction.download_s = download_s(*ev.main, r);
  out.prediction.startup_s += out.prediction.download_s;
  return out;
}

std::vector<Candidate> alternatives(const Eval& best, const SearchResult& found, Search& s,
                                    const cluster::Cluster& cl, const estimate::ModelMemory& m,
                                    const Request& r, const perf::Constants& c) {
  // The same GPUs with another main, the best of each other main, the best on one worker.
  std::vector<std::pair<const Eval*, std::string>> alts;
  std::map<std::string, const Eval*> best_of_main;
  const Eval* best_single = nullptr;
  for (const Eval& e : found.all) {
    if (e.main == best.main && same_set(e, best)) continue;
    const bool single = std::none_of(e.layout.devices.begin(), e.layout.devices.end(),
                                     [](const estimate::Device& d) { return d.remote; });
    if (single && (best_single == nullptr || e.tg > best_single->tg)) best_single = &e;
    auto& slot = best_of_main[e.main->name];
    if (slot == nullptr || e.tg > slot->tg) slot = &e;
  }
  const std::set<std::string> owners = owners_of(best);
  std::vector<Eval> swapped;
  swapped.reserve(owners.size());
  for (const std::string& o : owners) {
    if (o == best.main->name) continue;
    const cluster::Worker* w = cl.find(o);
    if (!selected(*w, r.selector)) continue;
    if (std::optional<Eval> ev = s.repair().split(*w, best.devs)) swapped.push_back(std::move(*ev));
  }
  for (const Eval& e : swapped) alts.emplace_back(&e, "main " + e.main->name + ", same GPUs");
  if (best_single != nullptr && !best.layout.devices.empty() &&
      std::any_of(best.layout.devices.begin(), best.layout.devices.end(),
                  [](const auto& d) { return d.remote; })) {
    alts.emplace_back(best_single, "best on one worker (" + best_single->main->name + ", no RPC)");
  }
  std::vector<const Eval*> others;
  for (const auto& [name, e] : best_of_main) {
    if (name != best.main->name) others.push_back(e);
  }
  std::sort(others.begin(), others.end(),
            [](const Eval* a, const Eval* b) { return a->tg > b->tg; });
  for (std::size_t k = 0; k < others.size() && k < 3; ++k)
    alts.emplace_back(others[k], "best with main " + others[k]->main->name);
  std::vector<Candidate> out;
  std::set<std::pair<std::string, std::vector<std::size_t>>> shown;
  for (const auto& [e, label] : alts) {
    std::vector<std::size_t> key = e->devs;
    std::sort(key.begin(), key.end());
    if (!shown.insert({e->main->name, key}).second) continue;
    out.push_back(candidate_of(*e, label, cl, m, r, c));
    if (out.size() >= 5) break;
  }
  return out;
}

namespace {

std::string duration_text(double s) {
  char buf[32];
  if (s < 90) {
    std::snprintf(buf, sizeof buf, "%.0f s", s);
  } else if (s < 5400) {
    std::snprintf(buf, sizeof buf, "%.0f min", s / 60);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f h", s / 3600);
  }
  return buf;
}

}  // namespace

std::optional<std::string> offload_note(const Eval& chosen) {
  if (chosen.other_tg <= 0) return std::nullopt;
  const std::string& main = chosen.main->name;
  auto way = [&](std::uint32_t cpu_blocks, std::uint32_t expert_blocks) {
    return expert_blocks > 0
               ? "experts of " + std::to_string(expert_blocks) + " blocks on " + main + "'s CPU"
               : std::to_string(cpu_blocks) + " whole blocks on the CPU";
  };
  const std::uint32_t cpu_blocks = chosen.estimate.total_layers - chosen.estimate.offloaded_layers;
  const bool experts = chosen.estimate.host_expert_blocks > 0;
  char pct[32];
  std::snprintf(pct, sizeof pct, "%.0f %%", 100 * (chosen.tg / chosen.other_tg - 1));
  return way(cpu_blocks, chosen.estimate.host_expert_blocks) + ": " + rate(chosen.tg) +
         " tokens/s; " + way(chosen.other_cpu_blocks, chosen.other_host_expert_blocks) +
         " would give " + rate(chosen.other_tg) + " (" + pct + " faster with " +
         (experts ? "experts" : "whole blocks") + ")";
}

std::optional<std::string> pinned_note(const Candidate& chosen, const cluster::Cluster& cl,
                                       const estimate::ModelMemory& m, const Request& r,
                                       const perf::Constants& c) {
  if (!chosen.layout.context.mmap) return std::nullopt;
  const cluster::Worker* main = cl.find(chosen.main_worker);
  const bool local_cuda = std::any_of(
      chosen.layout.devices.begin(), chosen.layout.devices.end(),
      [](const estimate::Device& d) { return !d.remote && d.backend == estimate::Backend::kCuda; });
  const bool host_weights = chosen.estimate.offloaded_layers < chosen.estimate.total_layers ||
                            chosen.estimate.host_expert_blocks > 0;
  if (main == nullptr || !local_cuda || !host_weights) return std::nullopt;
  estimate::Layout copied = chosen.layout;
  copied.context.mmap = false;
  const estimate::Estimate e = estimate::estimate(m, copied);
  if (main->ram_bytes > 0 && e.host.total_bytes > main->free_ram_bytes()) return std::nullopt;
  const perf::Prediction p =
      perf::predict(m, copied, e, scenario_for(cl, chosen.main_worker, chosen.places, r), c);
  if (p.prompt_tokens_per_s < 1.5 * chosen.prediction.prompt_tokens_per_s) return std::nullopt;
  return "prompts " + rate(chosen.prediction.prompt_tokens_per_s) + " tokens/s from the mapped " +
         "file; with mmap: false (--load-mode none) the weights in " + main->name + "'s RAM sit in " +
         "pinned buffers the GPU copies from faster: " + rate(p.prompt_tokens_per_s) +
         " tokens/s (" + cluster::format_bytes(e.host.copied_bytes) +
         " of RAM, generation the same)";
}

std::vector<std::string> download_notes(const Eval& chosen, const SearchResult& found,
                                        const cluster::Cluster& cl, const Request& r) {
  std::vector<std::string> out;
  if (r.model_files.empty()) return out;
  const Eval* fastest = &chosen;
  for (const Eval& e : found.all)
    if (e.tg > fastest->tg) fastest = &e;
  const std::string& main = chosen.main->name;
  if (holds_model(*chosen.main, r)) {
    std::string note = "main " + main + " holds the model's files";
    if (!holds_model(*fastest->main, r)) {
      char pct[32];
      std::snprintf(pct, sizeof pct, "%.0f %%", 100 * (fastest->tg / chosen.tg - 1));
      note += "; main " + fastest->main->name + " would be " + pct + " faster after a " +
              duration_text(download_s(*fastest->main, r)) + " download";
    }
    out.push_back(note);
  } else {
    std::string note = "main " + main + " downloads " + cluster::format_bytes(r.model_bytes) +
                       " first (about " + duration_text(download_s(*chosen.main, r)) + ")";
    const Eval* holder = nullptr;  // the fastest layout whose main holds the files
    for (const Eval& e : found.all)
      if (holds_model(*e.main, r) && (holder == nullptr || e.tg > holder->tg)) holder = &e;
    if (holder != nullptr) {
      char pct[32];
      std::snprintf(pct, sizeof pct, "%.0f %%", 100 * (1 - holder->tg / chosen.tg));
      note += "; main " + holder->main->name + " holds them but would be " + pct + " slower";
    } else {
      // A holder the search did not expand: it could not tie with the layouts it found.
      for (const cluster::Worker& w : cl.workers) {
        if (!holds_model(w, r)) continue;
        note += "; " + w.name + " holds them but is predicted slower, outside the tie tolerance";
        break;
      }
    }
    out.push_back(note);
  }
  return out;
}

std::vector<Rejection> rejections(const Eval& best, const SearchResult& found, const Filter& filter,
                                  const cluster::Cluster& cl, const Request& r) {
  std::vector<Rejection> out;
  std::set<std::string> used = owners_of(best);
  used.insert(best.main->name);
  std::map<std::string, double> best_as_main;
  for (const Eval& e : found.all)
    best_as_main[e.main->name] = std::max(best_as_main[e.main->name], e.tg);
  // What the search found with `w` as the main.
  auto as_main = [&](const cluster::Worker& w) -> std::string {
    if (const auto it = best_as_main.find(w.name); it != best_as_main.end())
      return "as main at best " + rate(it->second) + " tokens/s (" +
             compared(it->second, best.tg, r) + ")";
    if (const auto cp = found.copies.find(w.name); cp != found.copies.end()) {
      const auto bm = best_as_main.find(cp->second);
      return "same resources as " + cp->second +
             (bm != best_as_main.end() ? ": as main at best " + rate(bm->second) + " tokens/s (" +
                                             compared(bm->second, best.tg, r) + ")"
                                       : ": nothing fits with it as main");
    }
    if (const auto bt = found.bound_tg.find(w.name); bt != found.bound_tg.end()) {
      return bt->second < best.tg
                 ? "as main at most " + rate(bt->second) +
                       " tokens/s even with its fastest reachable GPUs (" +
                       compared(bt->second, best.tg, r) + ")"
                 : "as main at most " + rate(bt->second) +
                       " tokens/s with its fastest reachable GPUs, within the tie tolerance of "
                       "the plan: not searched further";
    }
    return "nothing fits with it as main";
  };
  for (const cluster::Worker& w : cl.workers) {
    if (used.count(w.name)) continue;
    const WorkerVerdict& v = filter.verdict(w);
    if (v.dropped_whole) {  // dropped by the filter as a whole: its reasons
      out.push_back({w.name, filter.drop(w)});
      continue;
    }
    // Let through as the main, as a lender of GPUs, or both: what the search found, and what
    // the filter says of its GPUs for the plan's main.
    std::string why = v.main_drop == MainDrop::kNone ? as_main(w) : filter.main_drop(w);
    if (const std::optional<std::string> gpus = filter.gpus_drop(w, *best.main)) {
      why += "; " + *gpus;
    } else if (!w.gpus.empty()) {
      const std::string some = filter.some_gpus_drop(w);
      const std::size_t usable = w.gpus.size() - v.dropped_count;
      why += some.empty() ? "; its GPUs would not speed up the plan over RPC"
                          : "; " + some + (usable == 1 ? "; its other GPU" : "; its other GPUs") +
                                " would not speed up the plan over RPC";
    }
    out.push_back({w.name, why});
  }
  return out;
}

std::string why_nothing_fits(const Search& s, const Filter& filter, const Request& r) {
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
                  (r.allow_cpu_offload ? " and its RAM" : "") + ": " + cluster::format_bytes(have) +
                  " free for about " + cluster::format_bytes(need) +
                  " of weights, KV cache and buffers";
    }
  }
  if (s.mains().empty())
    return "does not fit: no worker matches the request (selector or explicit GPUs)";
  // No GPU left at all (full, lent): that first.
  const std::string no_gpu = filter.all_gpus_drop();
  const std::string head = "does not fit: " + (no_gpu.empty() ? "" : no_gpu + "; ");
  if (best_gap > 0) {
    return head + "the closest option is " + best_text + " (lacks " +
           cluster::format_bytes(best_gap) + ")";
  }
  return head + "the closest option is " + best_text +
         ", but no split fits each device's memory (per-device buffers and the output layer)" +
         (r.allow_cpu_offload ? "" : "; allowing CPU offload may help");
}

}  // namespace ggfleet::plan
