// The filter: before any layout is searched, which workers may be the main and which GPUs a
// replica may use (internal to src/plan and its tests).
//
// Promises: every worker it does not let be the main and every GPU it does not let through has
// its reason, recorded as it is dropped (the rule; the words, with the figures of the cluster,
// when asked), by the first rule that drops it:
//   a worker as the main: excluded by the label selector; owns none of the requested GPUs
//     (explicit GPUs); the main is fixed to another worker (Request::main_worker);
//   a GPU: its worker is excluded by the selector; not among the requested GPUs; lent to another
//     instance (an rpc-server serves one instance); full (no free memory: total - used -
//     reserved - claimed, with those figures).
// A worker that may not be the main and has no GPU left is dropped as a whole, with one reason
// for both. Whether a main may use another worker's GPUs over RPC (equal llama.cpp builds) is
// decided per main by may_lend() — the search asks it for each main — and lend_drop() words it.
// mains() and gpus() keep the cluster's order (workers, then GPU indices). Pure and
// deterministic. validate_request() rejects contradictory or impossible requests before.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "cluster/cluster.h"
#include "estimate/model_memory.h"
#include "plan/plan.h"

namespace ggfleet::plan {

// Throws PlanError for a request that contradicts itself or the fleet: explicit GPUs that do
// not exist or are listed twice, a main that does not exist, is excluded or owns none of the
// explicit GPUs, a tensor split without or with the wrong number of GPUs, -ngl out of range or
// leaving CPU layers with CPU offload off, no replicas, a tie tolerance outside [0, 1).
void validate_request(const estimate::ModelMemory& model, const cluster::Cluster& cluster,
                      const Request& request);

// Whether a worker's labels match every label of the selector.
bool selected(const cluster::Worker& worker, const std::map<std::string, std::string>& selector);

// "worker:index".
std::string gpu_label(const GpuRef& gpu);

// Why the filter dropped a GPU: the first rule that applies.
enum class GpuDrop { kSelector, kNotRequested, kLent, kFull };

// Why the filter does not let a worker be the main: the first rule that applies.
enum class MainDrop { kNone, kSelector, kNotRequested, kFixedMain };

struct DroppedGpu {
  std::uint32_t gpu = 0;  // index among its worker's GPUs
  GpuDrop rule = GpuDrop::kFull;
};

// What the filter decided about one worker: the rules, recorded as it applies them (the words
// are the Filter's: main_drop(), gpu_drop(), drop()).
struct WorkerVerdict {
  MainDrop main_drop = MainDrop::kNone;
  std::uint32_t first_dropped = 0;  // its dropped GPUs: [first_dropped, + dropped_count) of the
  std::uint32_t dropped_count = 0;  // filter's list, by index
  bool dropped_whole = false;       // may not be the main and has no GPU left
};

// A GPU the filter let through.
struct UsableGpu {
  const cluster::Worker* worker = nullptr;
  std::uint32_t gpu = 0;
};

class Filter {
 public:
  Filter(const cluster::Cluster& cluster, const Request& request);

  // The workers that may be the main, in the cluster's order.
  const std::vector<const cluster::Worker*>& mains() const { return mains_; }
  // The GPUs a replica may use, in the cluster's order.
  const std::vector<UsableGpu>& gpus() const { return gpus_; }
  // The verdict on a worker of the filtered cluster.
  const WorkerVerdict& verdict(const cluster::Worker& worker) const {
    return verdicts_[static_cast<std::size_t>(&worker - cluster_.workers.data())];
  }
  // The GPUs of `worker` the filter dropped, by index.
  std::span<const DroppedGpu> dropped(const cluster::Worker& worker) const {
    const WorkerVerdict& v = verdict(worker);
    return std::span<const DroppedGpu>(dropped_).subspan(v.first_dropped, v.dropped_count);
  }
  // Why `worker` may not be the main ("excluded by the label selector", "not among the
  // requested GPUs", "the main is fixed to w2"); "" when it may.
  std::string main_drop(const cluster::Worker& worker) const;
  // Why the filter dropped a GPU of `worker`, as it follows "GPU worker:index is ": "lent to
  // instance x (...)", "full: 0 B free of 24.00 GiB (20.00 GiB used, 4.00 GiB claimed)", ...
  std::string gpu_drop(const cluster::Worker& worker, const DroppedGpu& gpu) const;
  // Why `worker` is dropped as a whole: its main_drop() and, unless the selector or the
  // explicit GPUs drop both, its GPUs' reasons summed up ("the main is fixed to w2; all 2 GPUs
  // full: ..."); "" when it is not.
  std::string drop(const cluster::Worker& worker) const;

  // Whether `main` may use `lender`'s GPUs over RPC: llama.cpp's RPC protocol holds between
  // equal builds only (a worker that does not say its build is taken as equal).
  static bool may_lend(const cluster::Worker& main, const cluster::Worker& lender) {
    return cluster::rpc_compatible(main, lender);
  }
  // Why the GPUs of `lender` cannot join a layout whose main is `main` (another worker): its
  // build differs, or distribution across workers is off; "" when they may.
  std::string lend_drop(const cluster::Worker& main, const cluster::Worker& lender) const;
  // Why none of `worker`'s GPUs can join a layout whose main is `main`, when none can: the
  // filter's reasons for its GPUs and lend_drop(), summed up ("its GPUs are lent to x (...)",
  // "all 2 GPUs full: 0 B free of 48.00 GiB (...)"); nullopt when one can or it has none.
  std::optional<std::string> gpus_drop(const cluster::Worker& worker,
                                       const cluster::Worker& main) const;
  // The dropped GPUs of `worker` when some of its GPUs are usable: their reasons summed up
  // ("1 of 2 GPUs full: ..."); "" when none was dropped.
  std::string some_gpus_drop(const cluster::Worker& worker) const;
  // Why no GPU at all is usable, when there are GPUs the selector and the explicit GPUs allow
  // and every one was dropped (full, lent): "all 3 GPUs full: ..."; "" otherwise.
  std::string all_gpus_drop() const;
  // With explicit GPUs: why the first requested GPU that is lent or full cannot be used ("GPU
  // w2:0 is lent to instance big (...)"), "" when all can. Throws PlanError for a requested GPU
  // on a worker the selector excludes (in the request's order, before a later lent or full one).
  std::string requested_gpus_drop() const;

 private:
  const cluster::Cluster& cluster_;
  const Request& request_;
  std::vector<const cluster::Worker*> mains_;
  std::vector<UsableGpu> gpus_;
  std::vector<WorkerVerdict> verdicts_;  // one per worker, the cluster's order
  std::vector<DroppedGpu> dropped_;      // every dropped GPU, the cluster's order
};

}  // namespace ggfleet::plan
