// The bytes llama.cpp allocates for one layout: per device (weights, KV cache, compute buffer)
// and in the main machine's RAM (mapped or copied weights, KV kept on the host, the host compute
// buffer, the output buffer), the way the pinned llama.cpp allocates them.
//
// Weights, KV cache and output buffers follow llama.cpp's allocation rules exactly. Compute
// buffers are what ggml-alloc's simulation of the worst-case graph would reserve; llama.cpp has
// no formula for them, so ours is a model of each block's peak activations fitted to measured
// buffers (bench/estimate_accuracy checks it against the real llama.cpp).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "estimate/layout.h"
#include "estimate/model_memory.h"

namespace ggfleet::estimate {

// Impossible options: quantized V cache without flash attention, a split longer than the device
// list, MLA with different K and V types, ...
class LayoutError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

struct DeviceUsage {
  std::string name;
  std::uint32_t layers = 0;       // offloaded layers on this device (the output counts as one)
  std::int32_t first_block = -1;  // first and last block held; -1 when none
  std::int32_t last_block = -1;
  bool has_output = false;
  std::uint32_t expert_blocks = 0;  // blocks of other devices (or the CPU) whose experts it holds
  std::uint64_t weights_bytes = 0;
  std::uint64_t kv_bytes = 0;
  std::uint64_t compute_bytes = 0;
  std::uint64_t runtime_bytes = 0;  // the driving process's own use (Device::runtime_bytes)
  std::uint64_t total_bytes = 0;    // weights + kv + compute + runtime
  std::uint64_t free_bytes = 0;
  bool fits = true;
};

struct HostUsage {
  std::uint64_t weights_bytes = 0;  // weights read from host RAM (mapped pages or copies)
  std::uint64_t mapped_bytes = 0;   // llama.cpp's CPU_Mapped buffers (mmap spans, per shard)
  std::uint64_t copied_bytes = 0;   // CPU / CPU_REPACK buffers (weights copied out of the file)
  std::uint64_t repack_bytes = 0;   // of which CPU_REPACK
  std::uint64_t kv_bytes = 0;
  std::uint64_t compute_bytes = 0;
  std::uint64_t output_bytes = 0;  // logits buffer
  std::uint64_t total_bytes = 0;   // weights + kv + compute + output
};

struct Estimate {
  std::vector<DeviceUsage> devices;  // the layout's devices, in order
  HostUsage host;
  std::uint32_t offloaded_layers = 0;
  std::uint32_t total_layers = 0;    // blocks + 1 (the output)
  std::uint32_t context_tokens = 0;  // n_ctx after llama.cpp's rounding
  std::uint32_t kv_cells_per_stream = 0;
  std::uint32_t kv_streams = 1;
  bool flash_attention = true;  // as resolved
  bool pipeline_parallel = false;
  std::uint32_t host_expert_blocks = 0;  // offloaded blocks whose routed experts stay in host RAM
  bool fits = true;                      // every device fits its free memory
};

// Estimates `layout` for `model`. Throws LayoutError for impossible options.
Estimate estimate(const ModelMemory& model, const Layout& layout);

// Device index (into layout.devices) of each layer 0..blocks (blocks = the output layer), -1 for
// the CPU, by llama.cpp's rule: the CPU keeps the first blocks, offloaded layers are cut by the
// cumulative split. `splits` are the per-device weights (normalised here).
std::vector<std::int32_t> assign_layers(std::uint32_t blocks, std::int32_t gpu_layers,
                                        const std::vector<double>& splits);

}  // namespace ggfleet::estimate
