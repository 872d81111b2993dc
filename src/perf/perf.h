// Predicted speed of one layout on one cluster: generation tokens/s (llama-bench tg), prompt
// tokens/s (pp) and time to first token, with the time each part takes.
//
// The model walks the layers in llama.cpp's execution order (CPU layers of the main worker
// first, then each device of the layout in order) and adds:
//   - per device: the bytes of weights it reads per token (attention, dense FFN, shared experts
//     and only the routed experts a token uses) plus its KV cache at the given depth, at the
//     device's memory bandwidth times a fitted efficiency, and a fitted cost per layer;
//   - layers on the main worker's CPU: the same bytes at the CPU's bandwidth for the thread count
//     (threads and the memory system combine like resistors in series);
//   - each run of layers on an RPC device: one round trip to that worker per evaluation
//     (llama.cpp relays remote-to-remote hops through the main), a fitted fixed cost per call and
//     per remote layer (graph serialisation), and the activations (and logits, when the output is
//     remote) over the link;
//   - for prompts: matrix products at the device's FP16 rate times an efficiency that grows with
//     the embedding width and with the rows of each product (the micro-batch's tokens; for routed
//     experts, grouped products at a lower efficiency, the tokens per expert); the CPU layers'
//     products either copied to the main's first local GPU (llama.cpp's op offload, when the main
//     has one) or computed by the CPU threads.
// Every constant that is not physics lives in src/perf/calibration.json with the measurements it
// was fitted to (bench/perf_calibrate refits it from bench/data/perf).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cluster/cluster.h"
#include "estimate/estimate.h"
#include "estimate/layout.h"
#include "estimate/model_memory.h"
#include "perf/constants.h"

namespace ggfleet::perf {

// Where one device of the layout lives: a worker and its GPU index.
struct DevicePlace {
  std::string worker;
  std::uint32_t gpu = 0;
};

struct Scenario {
  const cluster::Cluster* cluster = nullptr;
  std::string main_worker;
  std::vector<DevicePlace> places;  // one per layout device, same order
  std::uint32_t threads = 0;        // CPU threads of llama.cpp on the main; 0 = its cores
  std::uint32_t prompt_tokens = 512;
  std::uint32_t depth_tokens = 0;  // tokens already in the KV cache when generating
};

// One part of the time per token or per prompt.
struct PartTime {
  std::string what;    // "CUDA0 (worker1 GPU 0)", "CPU (worker1)", "RPC hop to worker2", ...
  std::string worker;  // the worker doing the work
  std::uint32_t layers = 0;
  double read_bytes = 0;             // generation: weights + KV read per token
  double bandwidth_bytes_per_s = 0;  // generation: effective bandwidth used
  double generation_s = 0;           // per generated token
  double prompt_s = 0;               // for the whole prompt
  // The share of this part that a learned correction scales (perf/corrections.h), at factor 1:
  // "gpu:NAME" (a GPU model's bandwidth-bound reads and prompt matmuls), "cpu:WORKER" (the main's
  // CPU layers), "link:A|B" (fixed cost of the RPC calls between two workers, names sorted);
  // "" for parts no factor scales (per-layer and per-token fixed costs, transfers).
  std::string factor;
  double scaled_generation_s = 0;  // generation_s = scaled_generation_s * generation_factor + rest
  double scaled_prompt_s = 0;      // prompt_s = scaled_prompt_s * prompt_factor + rest
  double generation_factor = 1;    // the factors this prediction applied
  double prompt_factor = 1;
};

struct Prediction {
  double generation_tokens_per_s = 0;
  double prompt_tokens_per_s = 0;
  double time_to_first_token_s = 0;  // prompt_tokens through the prompt path, then one token
  double generation_token_s = 0;     // seconds per generated token
  double prompt_s = 0;               // seconds for prompt_tokens
  double startup_s = 0;   // the model's download (when its main lacks it), then the weights sent
                          // to RPC servers at load (no cache)
  double download_s = 0;  // the download's part of startup_s
  std::uint64_t rpc_load_bytes = 0;
  std::vector<PartTime> parts;  // devices in layout order, then the CPU, then RPC hops, fixed
  std::string bottleneck;       // the part with the largest generation time
};

// Invalid placements: a place naming an unknown worker or GPU, a different number of places
// and devices, the same GPU twice.
class PlacementError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Predicts `layout` (with its estimate `e`) for `model` placed as `scenario` says.
// REQUIRES: `e` is estimate::estimate(model, layout); scenario.cluster is not null.
// Throws PlacementError for invalid places.
Prediction predict(const estimate::ModelMemory& model, const estimate::Layout& layout,
                   const estimate::Estimate& e, const Scenario& scenario,
                   const Constants& constants = calibrated_constants());

// The same, for a throughput-only answer with no strings: what the planner calls in its loops.
// Returns {generation tokens/s, prompt tokens/s}.
std::pair<double, double> predict_rates(const estimate::ModelMemory& model,
                                        const estimate::Layout& layout, const estimate::Estimate& e,
                                        const Scenario& scenario,
                                        const Constants& constants = calibrated_constants());

// Average time of one transformer block per generated token on each kind of device, and the
// fixed cost of an RPC call: what a planner ranks devices by before predicting whole layouts.
class LayerCosts {
 public:
  explicit LayerCosts(const model::Profile& profile,
                      const Constants& constants = calibrated_constants());
  double gpu_block_s(const cluster::Gpu& gpu, bool remote) const;
  double cpu_block_s(const cluster::Worker& main,
                     std::uint32_t threads) const;  // threads 0 = cores
  double rpc_call_s(const cluster::Link& link) const;
  // The output head (output norm, output matrix) per token on a GPU — over RPC with the logits'
  // way back to the main at the RPC transfer rate (the link is slower still) — or on the main's
  // CPU.
  double head_gpu_s(const cluster::Gpu& gpu, bool remote) const;
  double head_cpu_s(const cluster::Worker& main, std::uint32_t threads) const;
  // The parts of a block's cost, for bounds: seconds per byte read, fixed seconds per layer, and
  // the bytes each block reads per token (dequantization weighted; routed experts: the share a
  // token uses). gpu_block_s = average bytes * gpu_byte_s + gpu_layer_fixed_s.
  double gpu_byte_s(const cluster::Gpu& gpu) const;
  double gpu_layer_fixed_s(bool remote) const;
  double cpu_byte_s(const cluster::Worker& main, std::uint32_t threads) const;
  double cpu_layer_fixed_s() const;
  const std::vector<double>& block_read_bytes() const { return block_read_bytes_; }
  // Of block_read_bytes: the routed experts' (0 for a dense block).
  const std::vector<double>& block_expert_read_bytes() const { return block_expert_read_bytes_; }

 private:
  double block_bytes_ = 0;  // average weights read per block and token
  double head_bytes_ = 0;   // weights read per token by the output head
  double logits_bytes_ = 0;
  std::vector<double> block_read_bytes_;
  std::vector<double> block_expert_read_bytes_;
  Constants c_;
};

}  // namespace ggfleet::perf
