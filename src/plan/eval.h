// What the planner's parts hand each other (internal to src/plan and its tests):
//   Dev   a GPU the filter let through, with what one block costs on it per token, locally and
//         over RPC;
//   Eval  one layout the split repair built, checked and predicted (generation and prompt speed,
//         the load it leaves), before the detailed prediction a Candidate carries.
// Device sets are indices into the search's device table (Search::devs()); an Eval's `devs` are
// in llama.cpp's order, parallel to layout.devices and places.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cluster/cluster.h"
#include "estimate/estimate.h"
#include "perf/perf.h"
#include "plan/plan.h"

namespace ggfleet::plan {

// A usable GPU and what it costs per block.
struct Dev {
  GpuRef ref;
  const cluster::Worker* worker = nullptr;
  const cluster::Gpu* gpu = nullptr;
  std::uint64_t free_bytes = 0;     // room for llama.cpp's buffers (free less runtime_bytes)
  std::uint64_t runtime_bytes = 0;  // the driving process's own use (cluster::Gpu)
  double local_block_s = 0;         // per block and token when on the main
  double remote_block_s = 0;        // per block and token over RPC
};

// One evaluated layout, before the detailed prediction.
struct Eval {
  const cluster::Worker* main = nullptr;
  std::vector<std::size_t> devs;  // indices into Search::devs(), llama.cpp's order
  estimate::Layout layout;
  std::vector<perf::DevicePlace> places;
  estimate::Estimate estimate;
  double tg = 0, pp = 0;
  double load = 0;  // highest memory utilisation among the workers it uses, after placement
  std::uint32_t remote_devices = 0;
  // MoE models: the other way of putting what the GPUs cannot hold in the main's RAM, on the same
  // devices (whole blocks on the CPU against experts in host RAM), when the split repair built
  // both and kept this one; generation tokens/s 0 = not built.
  std::uint32_t other_cpu_blocks = 0, other_host_expert_blocks = 0;
  double other_tg = 0;
};

// The speed model's scenario for a layout with main `main` on `places` of `cl`, with the request's
// threads and prompt length.
inline perf::Scenario scenario_for(const cluster::Cluster& cl, const std::string& main,
                                   const std::vector<perf::DevicePlace>& places, const Request& r) {
  return perf::Scenario{&cl, main, places, r.threads, r.prompt_tokens, 0};
}

}  // namespace ggfleet::plan
