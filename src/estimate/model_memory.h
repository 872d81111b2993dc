// Per-tensor facts about a model that memory estimates need, computed once from the file:
// which layer each tensor belongs to, where it lies in which shard, and its size as each backend
// allocates it (CPU alignment 32; CUDA alignment 128 plus one padded row for quantized rows that
// are not a multiple of 512). Estimates then run without touching the file.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/reader.h"
#include "model/profile.h"

namespace ggfleet::estimate {

struct TensorMemory {
  std::string name;
  std::int32_t layer =
      -1;  // block index; the output layer is profile.blocks; -1 = input (token_embd)
  std::uint32_t shard = 0;
  std::uint64_t file_offset = 0;
  std::uint64_t bytes = 0;       // ggml_nbytes
  std::uint64_t cpu_bytes = 0;   // as a CPU (or CPU-backed RPC) buffer allocates it
  std::uint64_t cuda_bytes = 0;  // as a CUDA (or CUDA-backed RPC) buffer allocates it
  bool repackable = false;       // llama.cpp's CPU_REPACK takes it on AVX2 CPUs
  bool expert = false;           // a routed-expert stack (ffn_{up,gate,down,gate_up}_{,ch}exps)
};

struct LayerMemory {
  std::uint64_t cpu_bytes = 0;
  std::uint64_t cuda_bytes = 0;
  std::uint64_t largest_expert_bytes = 0;  // largest routed-expert tensor (ffn_*_exps)
  // CUDA bytes of the dense feed-forward weights (the larger of ffn_gate and ffn_up, and ffn_down)
  // and of the attention output projection (attn_output.weight): what a GPU receives, one product
  // at a time, when it runs a CPU block's products.
  std::uint64_t ffn_gate_up_bytes = 0;
  std::uint64_t ffn_down_bytes = 0;
  std::uint64_t attn_output_bytes = 0;
  // Of cpu_bytes and cuda_bytes: the routed-expert tensors (they may live elsewhere: see
  // Layout::experts).
  std::uint64_t expert_cpu_bytes = 0;
  std::uint64_t expert_cuda_bytes = 0;
};

// What one layer's tensors in one shard cost when the layer stays in host RAM, summed once so
// that an estimate reads a few dozen of these instead of every tensor. "plain" counts only the
// tensors CPU_REPACK does not take.
struct HostPiece {
  std::int32_t layer = -1;  // as TensorMemory::layer
  std::uint32_t shard = 0;
  bool experts = false;     // the layer's routed-expert tensors (the rest of the layer is another)
  std::uint64_t bytes = 0;  // ggml_nbytes of all its tensors
  std::uint64_t cpu_bytes = 0;         // CPU buffer bytes of all its tensors
  std::uint64_t plain_cpu_bytes = 0;   // ... of the tensors that are not repackable
  std::uint64_t repack_cpu_bytes = 0;  // ... of the repackable ones
  std::uint64_t span_lo = ~0ull;       // file span of all its tensors [lo, hi)
  std::uint64_t span_hi = 0;
  std::uint64_t plain_span_lo = ~0ull;  // file span of the non-repackable ones (hi 0: none)
  std::uint64_t plain_span_hi = 0;
};

struct ModelMemory {
  model::Profile profile;
  std::vector<TensorMemory> tensors;  // in file order (shard, offset)
  std::vector<LayerMemory> layers;    // blocks 0..n-1, then the output layer (output, output_norm)
  // When the output is tied to token_embd and offloaded, llama.cpp allocates a second copy there.
  std::uint64_t tied_output_cpu_bytes = 0;
  std::uint64_t tied_output_cuda_bytes = 0;
  std::uint32_t shard_count = 1;
  std::vector<HostPiece> host_pieces;  // one per (layer, shard) that has tensors, layer order

  // REQUIRES: `profile` was made from `model`.
  static ModelMemory from(const gguf::Model& model, model::Profile profile);
  std::uint32_t blocks() const { return profile.blocks; }
};

// True for llama.cpp's routed-expert weights, the tensors its --cpu-moe and --n-cpu-moe move:
// names with ".ffn_{up,down,gate,gate_up}_{,ch}exps" (LLM_FFN_EXPS_REGEX), biases included.
bool is_expert_tensor(std::string_view name);

// Bytes a CUDA buffer takes for one tensor (ggml-cuda's alloc size, aligned to 128).
std::uint64_t cuda_tensor_bytes(gguf::GgmlType type, std::uint64_t ne0, std::uint64_t bytes);

}  // namespace ggfleet::estimate
