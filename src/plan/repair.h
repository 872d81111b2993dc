// Split repair: the layout of the model's blocks over one set of devices and the main's CPU
// (internal to src/plan and its tests).
//
// Promises: split(main, set) returns the fastest layout it builds on the devices of `set` (less
// those left without a block) and the main's CPU that fits — every device holds its layers,
// buffers and (the last) the output layer by estimate::estimate, and the main's free RAM holds
// the host part — or nullopt (nothing fits, or a device's worker may not lend to the main:
// Filter::may_lend). It builds one split per candidate output device (the three fastest that can
// hold the output, the roomiest, llama.cpp's default last): blocks go to the cheapest device per
// block first, up to what fits after its compute buffer, the rest to the main's CPU when allowed;
// then, with the real estimate, a block leaves an overflowing device for the cheapest device
// where it still fits (else the CPU), blocks on the CPU move to cheaper devices where they fit,
// single blocks move to and from the device with the last block while that makes the layout
// faster and it still fits, and devices left empty are dropped and the smaller set split again.
// For a MoE model whose best split leaves blocks on the CPU (and Request::expert_offload) it also
// builds the layout with every block on the devices and the experts of as few blocks as fit in
// host RAM (with_host_experts), and returns the faster of the two, the other's speed noted in
// the Eval. Deterministic; counts every estimate it makes (evaluated()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "cluster/cluster.h"
#include "estimate/model_memory.h"
#include "perf/perf.h"
#include "plan/eval.h"
#include "plan/plan.h"

namespace ggfleet::plan {

class SplitRepair {
 public:
  // `devs` is the search's device table; it must outlive this object (it may still be filled
  // after construction). Throws what estimate::estimate throws for impossible context options.
  SplitRepair(const estimate::ModelMemory& model, const cluster::Cluster& cluster,
              const Request& request, const perf::Constants& constants,
              const perf::LayerCosts& costs, const std::vector<Dev>& devs);
  SplitRepair(const SplitRepair&) = delete;
  SplitRepair& operator=(const SplitRepair&) = delete;

  bool remote(std::size_t d, const cluster::Worker& main) const { return devs_[d].worker != &main; }
  double block_s(std::size_t d, const cluster::Worker& main) const {
    return remote(d, main) ? devs_[d].remote_block_s : devs_[d].local_block_s;
  }
  double cpu_block_s(const cluster::Worker& main) const;

  // llama.cpp's order for a set of devices: remote ones first (in the given order), then the
  // main's own; `last` (if set) is moved to the end of its group.
  std::vector<std::size_t> ordered(const cluster::Worker& main, std::vector<std::size_t> set,
                                   std::optional<std::size_t> last = std::nullopt) const;
  // The devices of `order` as llama.cpp names them, with their places; no split yet.
  Eval with_devices(const cluster::Worker& main, const std::vector<std::size_t>& order) const;
  // The layout with `blocks_on[i]` blocks on device order[i] (the last also holds the output).
  Eval with_split(const cluster::Worker& main, const std::vector<std::size_t>& order,
                  const std::vector<std::uint32_t>& blocks_on) const;
  // Checks a layout (memory on every device and the main's RAM) and predicts it.
  std::optional<Eval> finish(Eval ev);
  // Builds, checks and predicts the layout with `blocks_on[i]` blocks on device order[i] and the
  // rest on the CPU. nullopt if it does not fit.
  std::optional<Eval> realize(const cluster::Worker& main, const std::vector<std::size_t>& order,
                              const std::vector<std::uint32_t>& blocks_on);
  // The best split of the blocks over `set` (and the main's CPU) by per-block cost, trimmed
  // until it fits, trying a few devices for the output layer (the one with the most room, the
  // fastest, and llama.cpp's default last). `gpu_layers` fixes -ngl when not kAutoGpuLayers;
  // `quick`: only llama.cpp's default output device (or the fastest), whole blocks only (the
  // search's quick look ranks mains by what it had always ranked them by).
  std::optional<Eval> split(const cluster::Worker& main, const std::vector<std::size_t>& set,
                            std::int32_t gpu_layers = kAutoGpuLayers, bool quick = false);

  std::uint32_t blocks() const { return blocks_; }
  // Memory of an average block on a GPU: weights and KV cache.
  double block_bytes() const { return block_mem_bytes_ + kv_block_bytes_; }
  // Host memory of the model all on the CPU: weights, KV cache and buffers.
  std::uint64_t host_need_bytes() const { return host_need_bytes_; }
  std::uint64_t evaluated() const { return evaluated_; }

 private:
  // `whole` (blocks on the main's CPU) with those blocks moved to its devices — the main's own
  // GPUs first, where a block costs no RPC call — and each device's first MoE blocks keeping
  // their experts in host RAM, as few as let every device fit. nullopt if no such layout fits.
  std::optional<Eval> with_host_experts(const Eval& whole);
  std::optional<Eval> split_with_last(const cluster::Worker& main,
                                      const std::vector<std::size_t>& order,
                                      std::int32_t gpu_layers);
  // Moves single blocks to and from the device that holds the last block (from and to the other
  // devices of `order`, and the main's CPU when `cpu_allowed`), keeping each move after which the
  // layout fits and is predicted faster; `on` must fit. The
  // per-block capacities of the first split treat blocks alike, the estimate does not: the device
  // with the last block passes only the output rows through its feed-forward part, so a small
  // device may hold that block where it could hold no other.
  void climb(const cluster::Worker& main, const std::vector<std::size_t>& order,
             std::vector<std::uint32_t>& on, bool cpu_allowed);
  // Highest utilisation (used / total memory) among the workers an evaluation uses, after it.
  double load_after(const Eval& ev) const;

  const estimate::ModelMemory& m_;
  const cluster::Cluster& cl_;
  const Request& r_;
  const perf::Constants& c_;
  const perf::LayerCosts& costs_;
  const std::vector<Dev>& devs_;
  std::uint32_t blocks_ = 0;
  double block_mem_bytes_ = 0, kv_block_bytes_ = 0, output_mem_bytes_ = 0;
  std::uint64_t host_need_bytes_ = 0;
  std::uint64_t evaluated_ = 0;
  bool moe_ = false;             // the model has routed experts
  double max_expert_bytes_ = 0;  // the largest block's experts on a GPU
};

}  // namespace ggfleet::plan
