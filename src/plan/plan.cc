#include "plan/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <set>
#include <sstream>

#include "cluster/units.h"
#include "plan/eval.h"
#include "plan/filter.h"
#include "plan/search.h"

namespace ggfleet::plan {
namespace {

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

struct OneReplica {
  std::optional<Eval> chosen;
  std::vector<Eval> all;                      // every feasible evaluation kept for explanations
  std::map<std::string, double> bound_tg;     // pruned mains: the best they could reach
  std::map<std::string, std::string> copies;  // main -> the identical main evaluated instead
  std::string why_not;
  std::uint64_t layouts = 0, mains = 0;
};

OneReplica plan_one(Search& s, const Filter& filter, const Request& r) {
  OneReplica out;
  if (!r.gpus.empty()) {
    out.why_not = filter.requested_gpus_drop();
    if (!out.why_not.empty()) return out;
  }
  SearchResult found = search_layouts(s, r);
  out.all = std::move(found.all);
  out.bound_tg = std::move(found.bound_tg);
  out.copies = std::move(found.copies);
  out.layouts = found.layouts;
  out.mains = found.mains;
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
  std::map<std::string, std::uint16_t> next_port;
  for (std::size_t i = 0; i < c.layout.devices.size(); ++i) {
    const perf::DevicePlace& p = c.places[i];
    if (!c.layout.devices[i].remote) {
      s.gpus.push_back(p.gpu);
      continue;
    }
    const cluster::Worker& w = *cl.find(p.worker);
    auto [it, inserted] = next_port.try_emplace(p.worker, r.rpc_port_base);
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
  validate_request(m, cl, r);
  Plan plan;
  cluster::Cluster state = cl;
  for (std::uint32_t i = 0; i < r.replicas; ++i) {
    const Filter filter(state, r);
    Search s(m, state, r, c, filter);
    OneReplica one = plan_one(s, filter, r);
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
      std::set<std::string> owners;
      for (const perf::DevicePlace& p : best.places) owners.insert(p.worker);
      std::vector<Eval> swapped;
      swapped.reserve(owners.size());
      for (const std::string& o : owners) {
        if (o == best.main->name) continue;
        const cluster::Worker* w = state.find(o);
        if (!selected(*w, r.selector)) continue;
        if (std::optional<Eval> ev = s.repair().split(*w, best.devs))
          swapped.push_back(std::move(*ev));
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
  validate_request(m, cl, r);
  const Filter filter(cl, r);
  Search s(m, cl, r, c, filter);
  const std::size_t n = s.devs().size();
  if (n > 6) throw PlanError("brute force is for at most 6 GPUs");
  const std::uint32_t blocks = s.blocks();
  std::optional<Eval> best;
  auto consider = [&](std::optional<Eval> ev) {
    if (ev && (!best || ev->tg > best->tg)) best = std::move(ev);
  };
  for (const cluster::Worker* main : s.mains()) {
    if (r.allow_cpu_offload) consider(s.repair().realize(*main, {}, {}));
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
          const std::vector<std::size_t> order = s.repair().ordered(*main, set, last);
          std::vector<std::uint32_t> on;
          for (std::size_t d : order) on.push_back(counts[d]);
          consider(s.repair().realize(*main, order, on));
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
