#include "brute_force.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "plan/eval.h"
#include "plan/explain.h"
#include "plan/filter.h"
#include "plan/search.h"

namespace ggfleet::plan {

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
  return candidate_of(*best, "brute force", cl, m, r, c);
}

}  // namespace ggfleet::plan
