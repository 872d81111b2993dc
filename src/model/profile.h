// What a GGUF file means for llama.cpp: architecture, block count, attention and KV geometry
// (MLA, sliding windows), experts, recurrent state, vocabulary, and the bytes of every tensor
// grouped by block. Pure: no I/O beyond the gguf::Model it is given.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "gguf/reader.h"

namespace ggfleet::model {

struct Attention {
  std::uint32_t head_count = 0;                        // query heads (largest over blocks)
  std::uint32_t head_count_kv = 0;                     // KV heads (largest over blocks)
  std::vector<std::uint32_t> head_count_kv_per_block;  // one per block (0 = no attention)
  std::uint32_t key_length = 0;                        // per head, as stored in the KV cache
  std::uint32_t value_length = 0;                      // per head, as stored in the KV cache
  // DeepSeek MLA: the cache keeps the latent (kv_lora_rank + rope dims) and no V.
  std::uint32_t kv_lora_rank = 0;
  std::uint32_t q_lora_rank = 0;
  std::uint32_t key_length_mla = 0;    // per-head key size of the decompressed attention
  std::uint32_t value_length_mla = 0;  // per-head value size of the decompressed attention
  std::uint32_t rope_dimensions = 0;
  std::uint32_t sliding_window = 0;         // tokens; 0 = none
  std::vector<bool> sliding_window_blocks;  // per block: true = windowed attention

  bool is_mla() const { return kv_lora_rank > 0; }
};

struct Experts {
  std::uint32_t count = 0;                 // routed experts per MoE block
  std::uint32_t used = 0;                  // experts used per token
  std::uint32_t shared = 0;                // shared experts
  std::uint32_t leading_dense_blocks = 0;  // first blocks with a dense FFN instead of experts
  std::uint64_t feed_forward_length = 0;   // per expert
};

// Mamba / RWKV style state (zero when the model has none).
struct Recurrent {
  std::uint32_t conv_kernel = 0;
  std::uint32_t state_size = 0;
  std::uint32_t inner_size = 0;
  std::uint32_t group_count = 0;
  std::uint32_t time_step_rank = 0;
  std::uint32_t wkv_head_size = 0;
  bool present() const { return state_size > 0 || wkv_head_size > 0; }
};

struct Tokenizer {
  std::string model;  // "llama", "gpt2", ...; empty when the file has no tokenizer
  std::string pre;
  std::uint64_t vocab_size = 0;
};

// Bytes and parameters of one transformer block (`blk.N.*`), by role.
struct BlockBytes {
  std::uint64_t attention_bytes = 0;      // attn_* tensors and their norms
  std::uint64_t ffn_bytes = 0;            // dense FFN and its norm
  std::uint64_t expert_bytes = 0;         // routed experts and the router
  std::uint64_t shared_expert_bytes = 0;  // *_shexp
  std::uint64_t recurrent_bytes = 0;      // ssm_*, time_mix_*, channel_mix_*
  std::uint64_t other_bytes = 0;
  std::uint64_t total_bytes = 0;
  std::uint64_t parameters = 0;
  // Of total_bytes, and of expert_bytes, those of super-block and of codebook types
  // (gguf::dequant_cost): what the speed model reads slower, block by block.
  std::uint64_t super_block_bytes = 0, codebook_bytes = 0;
  std::uint64_t expert_super_block_bytes = 0, expert_codebook_bytes = 0;
};

struct Profile {
  std::string architecture;
  std::string name;  // general.name
  std::uint32_t blocks = 0;
  std::uint64_t embedding_length = 0;
  std::uint64_t feed_forward_length = 0;  // dense FFN (first block's when per-block)
  std::uint64_t context_length = 0;       // training context
  std::uint64_t vocab_size = 0;
  Attention attention;
  Experts experts;
  Recurrent recurrent;
  Tokenizer tokenizer;

  std::uint64_t parameters = 0;
  std::uint64_t tensor_bytes = 0;
  std::uint64_t file_bytes = 0;
  std::uint64_t tensor_count = 0;
  std::uint64_t metadata_count = 0;
  std::vector<std::string> shards;

  std::vector<BlockBytes> block_bytes;  // index = block
  std::uint64_t token_embedding_bytes = 0;
  std::uint64_t output_bytes = 0;  // output head; 0 when tied to the embedding
  std::uint64_t output_norm_bytes = 0;
  std::uint64_t other_bytes = 0;  // non-block tensors not named above
  bool output_tied = false;       // no output.weight: llama.cpp reuses token_embd
  std::map<gguf::GgmlType, std::uint64_t> bytes_by_type;

  bool is_moe() const { return experts.count > 0; }
};

// Builds the profile of `model`. Unknown architectures still get per-block bytes from tensor
// names (blk.N.*) and whatever `ARCH.*` keys they share with known ones.
// Throws gguf::Error when required metadata is missing or contradicts the tensors.
Profile profile(const gguf::Model& model);

}  // namespace ggfleet::model
