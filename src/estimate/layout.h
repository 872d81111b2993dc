// A layout: the devices llama.cpp will use (in its order), how layers are split across them, and
// the context options that size the KV cache and compute buffers. Plain data.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "gguf/types.h"

namespace ggfleet::estimate {

// llama.cpp's CUDA backend runs a product of CPU-held weights (experts included) on the GPU from
// this many tokens in the product's batch (op offload; GGML_OP_OFFLOAD_MIN_BATCH's default).
constexpr std::uint32_t kOpOffloadMinBatch = 32;

// The compute backend behind a device: it decides weight padding and compute-buffer shapes.
enum class Backend { kCpu, kCuda };

struct Device {
  std::string name;  // as llama.cpp names it: "RPC0", "RPC1", "CUDA0", ...
  Backend backend = Backend::kCuda;
  bool remote = false;           // reached through an RPC server
  std::uint64_t free_bytes = 0;  // memory free on it before the process that drives it starts
  // What that process takes of it outside llama.cpp's buffers: its CUDA context, kernels and
  // library workspaces (cluster::kCudaRuntimeBytes on a real GPU; 0 where it is not counted).
  std::uint64_t runtime_bytes = 0;
};

enum class FlashAttention { kAuto, kOn, kOff };

struct ContextOptions {
  std::uint32_t context_tokens =
      4096;                    // -c, shared by all sequences (0 = the model's training context)
  std::uint32_t parallel = 1;  // -np: sequences
  bool kv_unified = false;     // -kvu (llama-server's explicit -np keeps it off)
  std::uint32_t batch_tokens = 2048;  // -b
  std::uint32_t ubatch_tokens = 512;  // -ub
  gguf::GgmlType cache_type_k = gguf::GgmlType::F16;
  gguf::GgmlType cache_type_v = gguf::GgmlType::F16;
  FlashAttention flash_attention = FlashAttention::kAuto;
  bool kv_offload = true;   // false = --no-kv-offload: every KV buffer in host RAM
  bool swa_full = false;    // --swa-full
  bool mmap = true;         // false = --load-mode none (weights copied into host buffers)
  bool cpu_repack = false;  // true when llama.cpp repacks CPU weights (CPU-only builds, AVX2)
};

// llama.cpp's device order, known here only: every RPC device first, in the order of --rpc, then
// the local GPUs in their CUDA order. Reorders [first, last) stably by `is_remote` and returns
// where the local devices begin.
template <class It, class IsRemote>
It to_llama_order(It first, It last, IsRemote is_remote) {
  return std::stable_partition(first, last, is_remote);
}

// Where a block's routed-expert tensors live (Layout::experts): with the rest of their block,
// in host RAM (--cpu-moe, --n-cpu-moe, -ot ...=CPU), or on a device (an index into devices).
constexpr std::int32_t kExpertsWithBlock = -2;
constexpr std::int32_t kExpertsOnHost = -1;

struct Layout {
  std::vector<Device> devices;       // llama.cpp's order: RPC devices first, then local GPUs
  std::vector<double> tensor_split;  // one weight per device; empty = proportional to free_bytes
  std::int32_t gpu_layers = -1;      // -ngl: layers offloaded (output counts as one); -1 = all
  ContextOptions context;
  // Empty: llama.cpp gets no tensor overrides. Else one entry per block (kExpertsWithBlock,
  // kExpertsOnHost or a device index): llama.cpp gets overrides, which also turns its pipeline
  // parallelism off, even where every entry is kExpertsWithBlock.
  std::vector<std::int32_t> experts;
};

}  // namespace ggfleet::estimate
