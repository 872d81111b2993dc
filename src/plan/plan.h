// The planner: the layout with the best predicted generation speed for a model on a fleet — which
// worker is the main (runs llama-server), which GPUs join it (its own, and other workers' over
// RPC), how the layers are split, how many stay on the main's CPU — with the alternatives it beat
// and why each unused worker was not chosen.
//
// Per replica, in parts, each its own file under src/plan/ (internal to the planner), run by
// make_plan (plan.cc):
//   1. filter.h: the workers that may be the main (matching the label selector, owning an
//      explicit GPU when GPUs are given, the fixed main when Request::main_worker is set) and the
//      GPUs that may be used (selected, explicit when given, not lent to another instance, with
//      free memory: total - used - reserved - claims), each dropped one with its reason.
//   2. search.h: for each main worker, candidate device sets: prefixes of its own GPUs (fastest
//      first), then its GPUs plus prefixes of the fastest remote GPUs (at most max_rpc_servers,
//      equal llama.cpp builds only), and prefixes of all of them merged by speed; CPU-only when
//      allowed. A set stops growing once it holds the whole model. Mains are visited best bound
//      first and workers with identical resources are evaluated once. The bound (a time per
//      token no layout with that main can beat) fills the blocks, as a fluid, into the devices
//      cheapest per block first — the main's GPUs, other workers' GPUs with their RPC costs (a
//      call shared over the most blocks the device could hold), the main's CPU — counting each
//      block as the one that reads least plus the extra bytes at the cheapest rate, capacities
//      as the smallest blocks, and adds the output head. A main that cannot tie with the best
//      is not expanded; once 16 mains are, neither is one that could at most tie (the plan
//      stays within the tie tolerance of anything left). Within a main, device sets whose own
//      bound cannot reach the best are skipped, and the hill climbing from the three best
//      mains' layouts skips moves that cannot improve. (SearchMode::kReference: the search
//      before these bounds, for comparisons.)
//   3. repair.h: for a set, layers go to the cheapest device per block first (a device's
//      per-block time includes RPC costs), up to what fits (each device's free memory minus its
//      compute buffer and, for the last device, the output layer); the rest to the main's CPU
//      when allowed. The split is checked with estimate::estimate and trimmed until every
//      device fits.
//   4. score.h: among layouts within `tie_tolerance` of the best predicted generation speed, a
//      total order (the winner does not depend on the evaluation order): the placement policy
//      (spread: least loaded workers; binpack: most loaded; loads within 0.02 count as equal),
//      then fewer GPUs, fewer RPC servers, prompt speed, generation speed, the load itself, and
//      the main's name and devices.
//   5. explain.h: the alternatives the plan beat and, for each unused worker, why: the filter's
//      reasons for a worker it dropped, what the search found with it as the main (and what
//      its GPUs would give) for one it let through; when nothing fits, the closest option.
// launch.h turns the chosen candidate into what the workers run.
// Pure: no I/O, deterministic for the same input.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "cluster/cluster.h"
#include "estimate/estimate.h"
#include "estimate/model_memory.h"
#include "perf/perf.h"
#include "plan/launch.h"

namespace ggfleet::plan {

enum class Policy { kSpread, kBinpack };

// kFast: today's search (see above). kReference: the search as it was before main workers were
// pruned by a per-main bound and grouped into classes (every main gets a quick look); kept to
// compare the two in tests and benchmarks.
enum class SearchMode { kFast, kReference };

struct GpuRef {
  std::string worker;
  std::uint32_t gpu = 0;
  bool operator==(const GpuRef&) const = default;
};

constexpr std::int32_t kAutoGpuLayers = -2;

struct Request {
  std::string model_path;  // for the command lines
  estimate::ContextOptions context;
  std::uint32_t replicas = 1;
  Policy policy = Policy::kSpread;
  bool allow_distributed = true;  // GPUs of other workers over RPC
  bool allow_cpu_offload = true;  // layers on the main's CPU
  // MoE models: a block may keep its attention on a GPU and only its routed experts in the main's
  // host RAM (llama.cpp's --n-cpu-moe / -ot), weighed against whole blocks on the CPU. Needs
  // allow_cpu_offload and the planned -ngl.
  bool expert_offload = true;
  std::uint32_t max_rpc_servers = 16;
  std::map<std::string, std::string> selector;  // worker labels that must match
  std::vector<GpuRef> gpus;                     // explicit GPUs (any order); empty = any
  std::string main_worker;                      // the worker that must be the main; empty = any
  std::int32_t gpu_layers = kAutoGpuLayers;     // explicit -ngl (-1 = all)
  std::vector<double> tensor_split;             // explicit, one per explicit GPU, same order
  std::vector<std::string> extra_args;          // passed to llama-server as they are
  std::uint32_t threads = 0;                    // llama.cpp threads on the main; 0 = its cores
  std::uint32_t prompt_tokens = 512;
  double tie_tolerance = 0.02;  // layouts this close to the best tg are ties for the policy
  SearchMode search = SearchMode::kFast;
  bool explain = true;  // fill Plan::alternatives and Plan::rejected (the scheduler needs neither)
  std::uint16_t server_port = 8080;
  std::uint16_t rpc_port_base = 50052;
  // A model downloaded by its main (a URL or hf:// source): its files as worker caches name them
  // (sha256, else URL) and their bytes. Empty for a local path. Among ties a main whose cache
  // holds every file wins (it starts without a download); a main that does not hold them has the
  // download in its predicted start-up time, at the main's measured download rate (or
  // kDefaultDownloadBytesPerS).
  std::vector<std::string> model_files;
  std::uint64_t model_bytes = 0;
};

// The download rate assumed for a worker that has not downloaded anything yet (1 Gbit/s).
constexpr double kDefaultDownloadBytesPerS = 125e6;

// Whether `w`'s download cache holds every file of `r.model_files` (true when there are none).
bool holds_model(const cluster::Worker& w, const Request& r);
// Seconds `w` needs to download the model first (0 when it holds it).
double download_s(const cluster::Worker& w, const Request& r);

// Contradictory or impossible requests: GPUs that do not exist, a split with the wrong number of
// entries, -ngl larger than the model, ...
class PlanError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

struct Candidate {
  std::string label;  // "plan", "main worker2, same GPUs", "best on one worker", ...
  std::string main_worker;
  estimate::Layout layout;                // devices in llama.cpp's order
  std::vector<perf::DevicePlace> places;  // one per device
  estimate::Estimate estimate;
  perf::Prediction prediction;
  std::uint32_t gpu_count() const { return static_cast<std::uint32_t>(layout.devices.size()); }
  std::uint32_t cpu_layers() const { return estimate.total_layers - estimate.offloaded_layers; }
};

struct Rejection {
  std::string worker;
  std::string reason;
};

struct Replica {
  Candidate chosen;
  Launch launch;                  // what the workers run, typed
  std::vector<Command> commands;  // the same as command lines (commands(launch))
};

struct Plan {
  bool feasible = false;
  std::string reason;             // when not feasible: "does not fit: ..." with the closest option
  std::vector<Replica> replicas;  // as many as were placed
  std::vector<Candidate> alternatives;  // best few others for the first replica
  std::vector<Rejection> rejected;      // workers the first replica does not use, and why
  // Said about the first replica's choice beyond speed: "main w2 holds the model's files; main
  // w1 would be 8 % faster after a 25 min download".
  std::vector<std::string> notes;
  std::uint64_t layouts_evaluated = 0;
  std::uint64_t mains_evaluated = 0;
};

// Plans `request.replicas` replicas of `model` on `cluster`. Each replica's memory and RPC GPUs
// are claimed before the next is planned. Throws PlanError for contradictory requests; a model
// that fits nowhere is a Plan with feasible = false and the reason.
Plan make_plan(const estimate::ModelMemory& model, const cluster::Cluster& cluster,
               const Request& request,
               const perf::Constants& constants = perf::calibrated_constants());

// The cluster after a replica's claims: its devices' memory (and RPC GPUs lent to `instance`),
// and the main's RAM.
cluster::Cluster with_claims(const cluster::Cluster& cluster, const Candidate& c,
                             const std::string& instance);

// What runs a candidate: one rpc-server per remote GPU (ports from request.rpc_port_base, per
// worker), then llama-server on the main (request.server_port) with the candidate's devices in
// llama.cpp's order and the request's context options.
Launch launch_for(const Candidate& c, const cluster::Cluster& cluster, const Request& request);

}  // namespace ggfleet::plan
