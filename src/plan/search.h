// The search: which layouts of one replica get evaluated (internal to src/plan and its tests).
//
// Promises: search_layouts() returns every feasible layout it evaluated, with the mains and GPUs
// the filter let through only, each layout built and checked by the split repair (repair.h), and
// for each main it did not expand, why: the best its bound allows, or the identical worker it
// evaluated instead. The fast search skips a main, a device set or a hill-climbing move only when
// its bound (a time per token nothing there can beat) shows it cannot come within the tie
// tolerance of the best found (a move: cannot improve on it), or, once 16 mains are expanded,
// could at most tie; what the pruning skips cannot beat the result by more than the tie
// tolerance. Deterministic for the same input; no I/O.
//
// Steps (plan.h has the overview):
//   - per main, candidate device sets (for_main): prefixes of its own GPUs then remote ones
//     (fastest first), prefixes of all by speed and by room, each local GPU alone, CPU-only;
//   - mains visited best bound first (main_bound_s; kReference: bound_s), identical workers once
//     (signature), a quick look at each (fastest-first sets, default output device), the full
//     search for the mains whose quick look came near the best;
//   - hill climbing (improve) from the best layouts of the three best mains.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cluster/cluster.h"
#include "estimate/model_memory.h"
#include "perf/perf.h"
#include "plan/eval.h"
#include "plan/filter.h"
#include "plan/plan.h"
#include "plan/repair.h"

namespace ggfleet::plan {

class Search {
 public:
  // The devices are the GPUs `filter` lets through, in its order; the mains are its mains.
  Search(const estimate::ModelMemory& model, const cluster::Cluster& cluster,
         const Request& request, const perf::Constants& constants, const Filter& filter);
  Search(const Search&) = delete;
  Search& operator=(const Search&) = delete;

  const std::vector<Dev>& devs() const { return devs_; }
  const std::vector<const cluster::Worker*>& mains() const { return mains_; }
  std::uint64_t evaluated() const { return repair_.evaluated(); }
  std::uint64_t host_need_bytes() const { return repair_.host_need_bytes(); }
  std::uint32_t blocks() const { return repair_.blocks(); }
  const estimate::ModelMemory& model() const { return m_; }
  // Builds and checks the layouts (splits) of device sets.
  SplitRepair& repair() { return repair_; }

  bool remote(std::size_t d, const cluster::Worker& main) const { return repair_.remote(d, main); }
  double block_s(std::size_t d, const cluster::Worker& main) const {
    return repair_.block_s(d, main);
  }

  // Evaluates the candidate sets for `main`; returns the feasible ones. `quick`: only the main's
  // own GPUs then remote ones, fastest first, with the default output device.
  // `floor_tg` > 0 (fast search): sets whose bound cannot reach it are not evaluated.
  std::vector<Eval> for_main(const cluster::Worker& main, bool quick = false, double floor_tg = 0);
  // The devices a main may use: its own, and the fastest max_rpc_servers of the others (by
  // per-block cost plus its share of the RPC call over the link from this main).
  std::vector<std::size_t> pool_for(const cluster::Worker& main) const;
  // Hill climbing from `start`: drop a device, add one, or swap one for another of the pool,
  // while the prediction improves. Returns the best found (`start` if nothing beats it).
  // `bounded` (fast search): moves whose set bound cannot beat the best are not evaluated.
  Eval improve(const Eval& start, bool bounded, int rounds = 8);
  // Lowest possible time per token with `main` (reference search): every block at the best
  // per-block cost it can reach, the blocks that cannot fit on GPUs at its CPU's cost. Infinity
  // when nothing can fit.
  double bound_s(const cluster::Worker& main) const;
  // A lower bound on the time per token of any layout with `main` (fast search): the blocks
  // filled, as a fluid, into the devices cheapest per block first — the main's own GPUs at their
  // local cost, other workers' at their RPC cost plus the cheapest RPC call shared over as many
  // blocks as the device could hold at most — and the rest on the main's CPU; every block counted
  // as the one that reads least (gpu_bound_s), the other blocks' extra bytes added once at the
  // cheapest rate per byte any device of the layout could have, and the output head on its
  // cheapest device. Capacities ignore compute buffers and count the smallest blocks first, so
  // no layout is faster. Infinity when the blocks cannot all be placed (no CPU offload, too
  // little memory).
  double main_bound_s(const cluster::Worker& main) const;
  // The same bound for the layouts on the devices of `set` only (and the main's CPU), with the
  // RPC call of each device's own link.
  double set_bound_s(const cluster::Worker& main, const std::vector<std::size_t>& set) const;
  // Identical resources give identical layouts: evaluate one worker per signature.
  std::string signature(const cluster::Worker& w) const;

 private:
  struct BoundItem {
    double cost_s = 0;           // per block and token, with its share of a call
    double capacity_blocks = 0;  // at most
    std::size_t dev = 0;
  };
  // Per block on device d (or the main's CPU) for the bounds: the bytes of the block that reads
  // the least, and the fixed cost of a layer. The bytes the other blocks read beyond it are
  // added once, at the cheapest rate per byte any device of the layout could have.
  double gpu_bound_s(std::size_t d, bool over_rpc) const;
  double cpu_bound_s(const cluster::Worker& main) const;
  // What a block left over once the devices are full costs at least: `cpu_s` (whole on the
  // CPU) or, with expert offload, the CPU's read of the fewest experts that free as much memory
  // (the GPU's share of that block is not counted: still a bound). Not an alternative to a
  // device with room: a block whose experts are in host RAM still needs its GPU.
  double overflow_bound_s(const cluster::Worker& main, double cpu_s) const;
  // Blocks device d could hold at most: as many as the smallest blocks fit in its free memory.
  double capacity_blocks(std::size_t d) const;

  const estimate::ModelMemory& m_;
  const cluster::Cluster& cl_;
  const Request& r_;
  perf::LayerCosts costs_;
  std::vector<Dev> devs_;
  SplitRepair repair_;
  std::vector<std::size_t> by_remote_cost_;
  std::vector<const cluster::Worker*> mains_;
  std::uint32_t blocks_ = 0;
  std::map<const cluster::Worker*, std::vector<std::size_t>> devs_of_;
  std::vector<BoundItem> remote_by_bound_;     // every device, cheapest bound cost first
  std::vector<double> smallest_blocks_bytes_;  // [k]: the k+1 smallest blocks' weights
  double min_rpc_call_s_ = 0;
  double min_remote_head_s_ = std::numeric_limits<double>::infinity();
  double min_gpu_byte_s_ = std::numeric_limits<double>::infinity();
  double min_read_bytes_ = 0, extra_read_bytes_ = 0;
  // MoE models with expert offload: a block's worth of memory the GPUs lack costs the CPU at least
  // this many bytes read per token (the fewest experts' bytes that free as much); 0 = off.
  double expert_overflow_read_bytes_ = 0;
};

// What the search found for one replica.
struct SearchResult {
  std::vector<Eval> all;                      // every feasible evaluation
  std::map<std::string, double> bound_tg;     // mains not expanded: the best they could reach
  std::map<std::string, std::string> copies;  // main -> the identical main evaluated instead
  std::uint64_t layouts = 0, mains = 0;       // layouts estimated, mains searched
};

// Searches the layouts of one replica: with explicit GPUs (request.gpus) the given GPUs for each
// possible main, split and -ngl as given when given; otherwise the fast or the reference search
// (request.search) and the hill climbing from the three best mains' best layouts.
SearchResult search_layouts(Search& search, const Request& request);

}  // namespace ggfleet::plan
