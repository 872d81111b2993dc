#include "model/profile.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <string_view>

namespace ggfleet::model {
namespace {

using gguf::Error;
using gguf::Value;
using gguf::ValueType;

// llama.cpp's LLAMA_MAX_LAYERS: no model it loads has more blocks, and trusting a larger count
// from a file would let it size our per-block tables.
constexpr std::uint32_t kMaxBlocks = 512;

class Keys {
 public:
  Keys(const gguf::Model& m, std::string arch) : m_(m), arch_(std::move(arch)) {}

  const Value* find(std::string_view suffix) const {
    return m_.find(arch_ + "." + std::string(suffix));
  }

  std::uint64_t u64(std::string_view suffix, std::uint64_t fallback = 0) const {
    const Value* v = find(suffix);
    if (!v) return fallback;
    if (v->type() == ValueType::ARRAY) {
      // Per-block arrays: the largest element describes the model for scalar callers.
      std::uint64_t best = 0;
      v->for_each([&](const Value& e) { best = std::max(best, e.as_u64().value_or(0)); });
      return best;
    }
    const auto u = v->as_u64();
    if (!u) {
      throw Error(m_.first().name(), Error::kNoOffset,
                  "metadata key '" + arch_ + "." + std::string(suffix) + "' is " +
                      std::string(gguf::value_type_name(v->type())) +
                      ", expected an unsigned integer");
    }
    return *u;
  }
  std::uint32_t u32(std::string_view suffix, std::uint64_t fallback = 0) const {
    return static_cast<std::uint32_t>(std::min<std::uint64_t>(u64(suffix, fallback), 0xffffffffu));
  }

  // A key that is either one number or one number per block.
  std::vector<std::uint32_t> per_block(std::string_view suffix, std::uint32_t blocks,
                                       std::uint32_t fallback) const {
    std::vector<std::uint32_t> out(blocks, fallback);
    const Value* v = find(suffix);
    if (!v) return out;
    if (v->type() == ValueType::ARRAY) {
      if (v->array_size() != blocks) {
        throw Error(m_.first().name(), Error::kNoOffset,
                    "metadata key '" + arch_ + "." + std::string(suffix) + "' has " +
                        std::to_string(v->array_size()) + " elements, expected one per block (" +
                        std::to_string(blocks) + ")");
      }
      std::uint32_t i = 0;
      v->for_each(
          [&](const Value& e) { out[i++] = static_cast<std::uint32_t>(e.as_u64().value_or(0)); });
      return out;
    }
    std::fill(out.begin(), out.end(), u32(suffix));
    return out;
  }

 private:
  const gguf::Model& m_;
  std::string arch_;
};

std::string string_key(const gguf::Model& m, const char* key) {
  const Value* v = m.find(key);
  if (!v) return {};
  const auto s = v->as_string();
  return s ? std::string(*s) : std::string();
}

// "blk.12.ffn_up.weight" -> 12 and "ffn_up.weight"; false for non-block tensors.
bool split_block_name(std::string_view name, std::uint32_t* block, std::string_view* rest) {
  if (name.substr(0, 4) != "blk.") return false;
  const std::size_t dot = name.find('.', 4);
  if (dot == std::string_view::npos || dot == 4) return false;
  std::uint32_t n = 0;
  const auto [p, ec] = std::from_chars(name.data() + 4, name.data() + dot, n);
  if (ec != std::errc() || p != name.data() + dot) return false;
  *block = n;
  *rest = name.substr(dot + 1);
  return true;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}
bool contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

void add_block_tensor(BlockBytes* b, std::string_view rest, gguf::GgmlType type,
                      std::uint64_t bytes, std::uint64_t elements) {
  b->total_bytes += bytes;
  b->parameters += elements;
  const gguf::DequantCost cost = gguf::dequant_cost(type);
  const std::uint64_t super_block = cost == gguf::DequantCost::kSuperBlock ? bytes : 0;
  const std::uint64_t codebook = cost == gguf::DequantCost::kCodebook ? bytes : 0;
  b->super_block_bytes += super_block;
  b->codebook_bytes += codebook;
  if (contains(rest, "_shexp")) {
    b->shared_expert_bytes += bytes;
  } else if (contains(rest, "_exps") || starts_with(rest, "ffn_gate_inp") ||
             starts_with(rest, "exp_probs_b")) {
    b->expert_bytes += bytes;
    b->expert_super_block_bytes += super_block;
    b->expert_codebook_bytes += codebook;
  } else if (starts_with(rest, "attn") || starts_with(rest, "post_attention_norm")) {
    b->attention_bytes += bytes;
  } else if (starts_with(rest, "ffn") || starts_with(rest, "post_ffw_norm")) {
    b->ffn_bytes += bytes;
  } else if (starts_with(rest, "ssm") || starts_with(rest, "time_mix") ||
             starts_with(rest, "channel_mix")) {
    b->recurrent_bytes += bytes;
  } else {
    b->other_bytes += bytes;
  }
}

// Which blocks use sliding-window attention, as llama.cpp decides it: an explicit per-block
// array, or a period n (every n-th block is full attention; gemma3 n=6, gpt-oss n=2).
std::vector<bool> sliding_window_blocks(const gguf::Model& m, const Keys& keys,
                                        const std::string& arch, std::uint32_t blocks,
                                        std::uint32_t window) {
  std::vector<bool> out(blocks, false);
  if (window == 0) return out;
  const Value* pattern = keys.find("attention.sliding_window_pattern");
  if (pattern && pattern->type() == ValueType::ARRAY) {
    if (pattern->array_size() != blocks) {
      throw Error(m.first().name(), Error::kNoOffset,
                  "sliding_window_pattern has " + std::to_string(pattern->array_size()) +
                      " elements, expected one per block (" + std::to_string(blocks) + ")");
    }
    std::uint32_t i = 0;
    pattern->for_each(
        [&](const Value& e) { out[i++] = e.as_bool().value_or(e.as_u64().value_or(0) != 0); });
    return out;
  }
  // llama.cpp's default period per architecture; 0 = every block windowed.
  static const std::map<std::string, std::uint32_t> kPeriod = {
      {"gemma2", 2}, {"gemma3", 6}, {"gpt-oss", 2}, {"cohere2", 4}};
  const auto known = kPeriod.find(arch);
  std::uint32_t period = known == kPeriod.end() ? 0 : known->second;
  if (pattern) period = static_cast<std::uint32_t>(pattern->as_u64().value_or(period));
  for (std::uint32_t il = 0; il < blocks; ++il) out[il] = period == 0 || (il % period < period - 1);
  return out;
}

}  // namespace

Profile profile(const gguf::Model& model) {
  Profile p;
  p.architecture = string_key(model, "general.architecture");
  p.name = string_key(model, "general.name");
  const Keys keys(model, p.architecture);

  for (const gguf::File& s : model.shards()) p.shards.push_back(s.name());
  p.file_bytes = model.file_bytes();
  p.tensor_count = model.tensors().size();
  p.metadata_count = model.first().metadata().size();

  // Tensors: bytes per block and per role, parameters, quantization mix.
  std::uint32_t max_block_plus_one = 0;
  for (const gguf::TensorInfo& t : model.tensors()) {
    std::uint32_t block = 0;
    std::string_view rest;
    if (split_block_name(t.name, &block, &rest))
      max_block_plus_one = std::max(max_block_plus_one, block + 1);
  }
  p.blocks = keys.u32("block_count", max_block_plus_one);
  if (p.architecture.empty()) p.blocks = max_block_plus_one;
  if (p.blocks > kMaxBlocks) {
    throw Error(model.first().name(), Error::kNoOffset,
                p.architecture + ".block_count = " + std::to_string(p.blocks) +
                    " exceeds llama.cpp's limit of " + std::to_string(kMaxBlocks) + " layers");
  }
  if (max_block_plus_one > p.blocks) {
    throw Error(model.first().name(), Error::kNoOffset,
                "tensor blk." + std::to_string(max_block_plus_one - 1) + ".* is past " +
                    p.architecture + ".block_count = " + std::to_string(p.blocks));
  }
  p.block_bytes.resize(p.blocks);
  bool has_output = false;
  for (const gguf::TensorInfo& t : model.tensors()) {
    p.parameters += t.elements;
    p.tensor_bytes += t.bytes;
    p.bytes_by_type[t.type] += t.bytes;
    std::uint32_t block = 0;
    std::string_view rest;
    if (split_block_name(t.name, &block, &rest)) {
      add_block_tensor(&p.block_bytes[block], rest, t.type, t.bytes, t.elements);
    } else if (t.name == "token_embd.weight") {
      p.token_embedding_bytes += t.bytes;
      p.vocab_size = t.dims[1];
    } else if (starts_with(t.name, "output_norm")) {
      p.output_norm_bytes += t.bytes;
    } else if (starts_with(t.name, "output.")) {
      p.output_bytes += t.bytes;
      has_output = has_output || t.name == "output.weight";
    } else {
      p.other_bytes += t.bytes;
    }
  }
  p.output_tied = !has_output && p.token_embedding_bytes > 0;

  // Hyper-parameters.
  p.embedding_length = keys.u64("embedding_length");
  p.feed_forward_length = keys.u64("feed_forward_length");
  p.context_length = keys.u64("context_length");
  Attention& a = p.attention;
  a.head_count = keys.u32("attention.head_count");
  a.head_count_kv_per_block = keys.per_block("attention.head_count_kv", p.blocks, a.head_count);
  a.head_count_kv =
      a.head_count_kv_per_block.empty()
          ? 0
          : *std::max_element(a.head_count_kv_per_block.begin(), a.head_count_kv_per_block.end());
  const std::uint32_t head_dim =
      a.head_count ? static_cast<std::uint32_t>(p.embedding_length / a.head_count) : 0;
  a.key_length = keys.u32("attention.key_length", head_dim);
  a.value_length = keys.u32("attention.value_length", head_dim);
  a.kv_lora_rank = keys.u32("attention.kv_lora_rank");
  a.q_lora_rank = keys.u32("attention.q_lora_rank");
  a.key_length_mla = keys.u32("attention.key_length_mla");
  a.value_length_mla = keys.u32("attention.value_length_mla");
  a.rope_dimensions = keys.u32("rope.dimension_count", a.key_length);
  a.sliding_window = keys.u32("attention.sliding_window");
  a.sliding_window_blocks =
      sliding_window_blocks(model, keys, p.architecture, p.blocks, a.sliding_window);

  Experts& e = p.experts;
  e.count = keys.u32("expert_count");
  e.used = keys.u32("expert_used_count");
  e.shared = keys.u32("expert_shared_count");
  e.leading_dense_blocks = keys.u32("leading_dense_block_count");
  e.feed_forward_length = keys.u64("expert_feed_forward_length");
  if (e.used > e.count) {
    throw Error(model.first().name(), Error::kNoOffset,
                "expert_used_count " + std::to_string(e.used) + " exceeds expert_count " +
                    std::to_string(e.count));
  }

  Recurrent& r = p.recurrent;
  r.conv_kernel = keys.u32("ssm.conv_kernel");
  r.state_size = keys.u32("ssm.state_size");
  r.inner_size = keys.u32("ssm.inner_size");
  r.group_count = keys.u32("ssm.group_count");
  r.time_step_rank = keys.u32("ssm.time_step_rank");
  r.wkv_head_size = keys.u32("wkv.head_size");

  p.tokenizer.model = string_key(model, "tokenizer.ggml.model");
  p.tokenizer.pre = string_key(model, "tokenizer.ggml.pre");
  if (const Value* tokens = model.find("tokenizer.ggml.tokens");
      tokens && tokens->type() == ValueType::ARRAY) {
    p.tokenizer.vocab_size = tokens->array_size();
  }
  if (p.vocab_size == 0) p.vocab_size = keys.u64("vocab_size", p.tokenizer.vocab_size);
  return p;
}

}  // namespace ggfleet::model
