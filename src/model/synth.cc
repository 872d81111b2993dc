#include "model/synth.h"

#include <algorithm>
#include <filesystem>
#include <functional>
#include <stdexcept>

namespace ggfleet::model {
namespace {

using gguf::GgmlType;
using gguf::MetaValue;
using gguf::TensorSpec;

enum class Family { kLlama, kQwen2, kQwen3Moe, kGemma3, kDeepseek2 };
enum class Scheme { kQ4_0, kQ4_K_M, kUdIq2Xxs };

// Shapes of a published model (its config.json), enough to lay out every tensor.
struct Shape {
  const char* preset;
  const char* description;
  const char* display_name;
  Family family;
  Scheme scheme;
  std::uint32_t blocks;
  std::uint64_t embd;
  std::uint64_t ff;  // dense FFN width
  std::uint32_t heads;
  std::uint32_t kv_heads;
  std::uint32_t head_dim;
  std::uint64_t vocab;
  std::uint64_t context;
  float rope_base;
  bool tied = false;
  // MoE
  std::uint32_t experts = 0;
  std::uint32_t experts_used = 0;
  std::uint32_t shared_experts = 0;
  std::uint32_t leading_dense = 0;
  std::uint64_t expert_ff = 0;
  // MLA (deepseek2)
  std::uint32_t q_lora = 0;
  std::uint32_t kv_lora = 0;
  std::uint32_t rope_dim = 0;
  std::uint32_t v_head_dim = 0;
  // sliding window (gemma3)
  std::uint32_t window = 0;
  std::uint32_t shards = 1;
};

const Shape kShapes[] = {
    {"llama3-8b-q4_0", "Meta Llama 3 8B, Q4_0 (dense, GQA 32/8)", "Meta-Llama-3-8B", Family::kLlama,
     Scheme::kQ4_0, 32, 4096, 14336, 32, 8, 128, 128256, 8192, 500000.0f},
    {"llama3-70b-q4_k_m", "Meta Llama 3 70B, Q4_K_M (dense, GQA 64/8)", "Meta-Llama-3-70B",
     Family::kLlama, Scheme::kQ4_K_M, 80, 8192, 28672, 64, 8, 128, 128256, 8192, 500000.0f},
    {"qwen2.5-72b-q4_k_m", "Qwen2.5 72B, Q4_K_M (dense, QKV bias)", "Qwen2.5-72B-Instruct",
     Family::kQwen2, Scheme::kQ4_K_M, 80, 8192, 29568, 64, 8, 128, 152064, 32768, 1000000.0f},
    {"qwen3-30b-a3b-q4_k_m",
     "Qwen3 30B-A3B, Q4_K_M (MoE, 128 experts, 8 used)",
     "Qwen3-30B-A3B",
     Family::kQwen3Moe,
     Scheme::kQ4_K_M,
     48,
     2048,
     6144,
     32,
     4,
     128,
     151936,
     40960,
     1000000.0f,
     false,
     128,
     8,
     0,
     0,
     768},
    {"gemma3-27b-q4_k_m",
     "Gemma 3 27B, Q4_K_M (sliding window 1024, every 6th block global, tied embedding)",
     "gemma-3-27b-it",
     Family::kGemma3,
     Scheme::kQ4_K_M,
     62,
     5376,
     21504,
     32,
     16,
     128,
     262208,
     131072,
     1000000.0f,
     true,
     0,
     0,
     0,
     0,
     0,
     0,
     0,
     0,
     0,
     1024},
    {"deepseek-r1-ud-iq2_xxs",
     "DeepSeek-R1 671B, Unsloth UD-IQ2_XXS-like mix (MLA, 256 experts, 8 used, 1 shared), 4 shards",
     "DeepSeek-R1",
     Family::kDeepseek2,
     Scheme::kUdIq2Xxs,
     61,
     7168,
     18432,
     128,
     1,
     192,
     129280,
     163840,
     10000.0f,
     false,
     256,
     8,
     1,
     3,
     2048,
     1536,
     512,
     64,
     128,
     0,
     4},
};

const Shape& find_shape(std::string_view preset) {
  for (const Shape& s : kShapes) {
    if (preset == s.preset) return s;
  }
  std::string known;
  for (const Shape& s : kShapes) known += std::string(known.empty() ? "" : ", ") + s.preset;
  throw std::invalid_argument("unknown preset '" + std::string(preset) + "' (known: " + known +
                              ")");
}

// llama.cpp's quantize "use more bits" rule for attn_v / ffn_down in K-quant mixes.
bool more_bits(std::uint32_t block, std::uint32_t blocks) {
  return block < blocks / 8 || block >= 7 * blocks / 8 || (block - blocks / 8) % 3 == 2;
}

bool fits_blocks(GgmlType type, std::uint64_t row) {
  return row % gguf::traits(type).block_elements == 0;
}

// The type of a weight matrix by its role, as the preset's quantization mix stores it.
GgmlType scheme_type(const Shape& s, std::string_view role, std::uint32_t block,
                     std::uint32_t blocks) {
  const bool down = role.find("ffn_down") != std::string_view::npos;
  switch (s.scheme) {
    case Scheme::kQ4_0:
      if (role == "output") return GgmlType::Q6_K;
      return GgmlType::Q4_0;
    case Scheme::kQ4_K_M:
      if (role == "output") return GgmlType::Q6_K;
      if (role == "token_embd") return s.tied ? GgmlType::Q6_K : GgmlType::Q4_K;
      if ((role == "attn_v" || down) && more_bits(block, blocks)) return GgmlType::Q6_K;
      return GgmlType::Q4_K;
    case Scheme::kUdIq2Xxs:
      if (role == "output") return GgmlType::Q6_K;
      if (role == "ffn_gate_exps" || role == "ffn_up_exps") return GgmlType::IQ2_XXS;
      // Unsloth's dynamic mix keeps the first MoE blocks' down projections at more bits.
      if (role == "ffn_down_exps")
        return block < s.leading_dense + 8 ? GgmlType::IQ3_XXS : GgmlType::IQ2_XXS;
      if (down || role == "attn_kv_a_mqa") return GgmlType::Q6_K;
      return GgmlType::Q4_K;
  }
  return GgmlType::Q4_K;
}

// llama-quantize's substitute when a row is not a multiple of the chosen type's block size.
GgmlType fallback_type(GgmlType t) {
  if (gguf::dequant_cost(t) == gguf::DequantCost::kCodebook) return GgmlType::IQ4_NL;
  switch (t) {
    case GgmlType::Q2_K:
    case GgmlType::Q3_K:
    case GgmlType::IQ4_XS:
      return GgmlType::IQ4_NL;
    case GgmlType::Q4_K:
      return GgmlType::Q5_0;
    case GgmlType::Q5_K:
      return GgmlType::Q5_1;
    case GgmlType::Q6_K:
      return GgmlType::Q8_0;
    default:
      return GgmlType::Q8_0;
  }
}

struct Builder {
  const Shape& s;
  const SynthOptions& o;
  std::uint32_t blocks;
  std::vector<TensorSpec> tensors;

  // A weight matrix: the scheme's type (or the override), falling back like llama-quantize
  // to a type whose block divides the row when the chosen one does not.
  void weight(const std::string& name, std::string_view role, std::uint32_t block,
              std::vector<std::uint64_t> dims) {
    GgmlType t = o.type.value_or(scheme_type(s, role, block, blocks));
    if (!fits_blocks(t, dims[0])) t = fallback_type(t);
    if (!fits_blocks(t, dims[0])) t = GgmlType::F16;
    tensors.push_back({name, t, std::move(dims)});
  }
  void f32(const std::string& name, std::vector<std::uint64_t> dims) {
    tensors.push_back({name, GgmlType::F32, std::move(dims)});
  }
};

std::string blk(std::uint32_t i, const char* rest) {
  return "blk." + std::to_string(i) + "." + rest;
}

}  // namespace

std::vector<PresetInfo> presets() {
  std::vector<PresetInfo> out;
  for (const Shape& s : kShapes) out.push_back({s.preset, s.description});
  return out;
}

gguf::GgufSpec synth_spec(std::string_view preset, const SynthOptions& options) {
  Shape s = find_shape(preset);
  if (options.blocks) {
    if (*options.blocks == 0) throw std::invalid_argument("--blocks must be at least 1");
    s.blocks = *options.blocks;
    s.leading_dense = std::min(s.leading_dense, s.blocks > 1 ? s.blocks - 1 : 0);
  }
  if (options.embedding) {
    const std::uint64_t embd = *options.embedding;
    if (embd == 0 || embd % 256 != 0)
      throw std::invalid_argument("--embd must be a positive multiple of 256");
    const std::uint32_t heads =
        std::max<std::uint32_t>(1, static_cast<std::uint32_t>(embd * s.heads / s.embd));
    s.kv_heads = s.family == Family::kDeepseek2
                     ? 1
                     : std::max<std::uint32_t>(1, heads * s.kv_heads / s.heads);
    if (s.family != Family::kDeepseek2) {
      while (heads % s.kv_heads != 0) --s.kv_heads;
    }
    s.ff = std::max<std::uint64_t>(256, s.ff * embd / s.embd / 256 * 256);
    s.heads = heads;
    s.embd = embd;
  }
  if (options.vocab) {
    if (*options.vocab < 512) throw std::invalid_argument("--vocab must be at least 512");
    s.vocab = *options.vocab;
  }

  Builder b{s, options, s.blocks, {}};
  const std::uint64_t q_dim = std::uint64_t{s.heads} * s.head_dim;
  const std::uint64_t kv_dim = std::uint64_t{s.kv_heads} * s.head_dim;
  b.weight("token_embd.weight", "token_embd", 0, {s.embd, s.vocab});
  for (std::uint32_t i = 0; i < s.blocks; ++i) {
    b.f32(blk(i, "attn_norm.weight"), {s.embd});
    if (s.family == Family::kDeepseek2) {
      const std::uint64_t nope = s.head_dim - s.rope_dim;
      b.weight(blk(i, "attn_q_a.weight"), "attn_q_a", i, {s.embd, s.q_lora});
      b.f32(blk(i, "attn_q_a_norm.weight"), {s.q_lora});
      b.weight(blk(i, "attn_q_b.weight"), "attn_q_b", i,
               {s.q_lora, std::uint64_t{s.heads} * s.head_dim});
      b.weight(blk(i, "attn_kv_a_mqa.weight"), "attn_kv_a_mqa", i,
               {s.embd, std::uint64_t{s.kv_lora} + s.rope_dim});
      b.f32(blk(i, "attn_kv_a_norm.weight"), {s.kv_lora});
      b.weight(blk(i, "attn_k_b.weight"), "attn_k_b", i, {nope, s.kv_lora, s.heads});
      b.weight(blk(i, "attn_v_b.weight"), "attn_v_b", i, {s.kv_lora, s.v_head_dim, s.heads});
      b.weight(blk(i, "attn_output.weight"), "attn_output", i,
               {std::uint64_t{s.heads} * s.v_head_dim, s.embd});
    } else {
      b.weight(blk(i, "attn_q.weight"), "attn_q", i, {s.embd, q_dim});
      b.weight(blk(i, "attn_k.weight"), "attn_k", i, {s.embd, kv_dim});
      b.weight(blk(i, "attn_v.weight"), "attn_v", i, {s.embd, kv_dim});
      if (s.family == Family::kQwen2) {
        b.f32(blk(i, "attn_q.bias"), {q_dim});
        b.f32(blk(i, "attn_k.bias"), {kv_dim});
        b.f32(blk(i, "attn_v.bias"), {kv_dim});
      }
      if (s.family == Family::kQwen3Moe || s.family == Family::kGemma3) {
        b.f32(blk(i, "attn_q_norm.weight"), {s.head_dim});
        b.f32(blk(i, "attn_k_norm.weight"), {s.head_dim});
      }
      b.weight(blk(i, "attn_output.weight"), "attn_output", i, {q_dim, s.embd});
    }
    if (s.family == Family::kGemma3) b.f32(blk(i, "post_attention_norm.weight"), {s.embd});
    b.f32(blk(i, "ffn_norm.weight"), {s.embd});
    const bool moe = s.experts > 0 && i >= s.leading_dense;
    if (moe) {
      b.f32(blk(i, "ffn_gate_inp.weight"), {s.embd, s.experts});
      if (s.family == Family::kDeepseek2) b.f32(blk(i, "exp_probs_b.bias"), {s.experts});
      b.weight(blk(i, "ffn_gate_exps.weight"), "ffn_gate_exps", i,
               {s.embd, s.expert_ff, s.experts});
      b.weight(blk(i, "ffn_up_exps.weight"), "ffn_up_exps", i, {s.embd, s.expert_ff, s.experts});
      b.weight(blk(i, "ffn_down_exps.weight"), "ffn_down_exps", i,
               {s.expert_ff, s.embd, s.experts});
      if (s.shared_experts > 0) {
        const std::uint64_t sh = s.expert_ff * s.shared_experts;
        b.weight(blk(i, "ffn_gate_shexp.weight"), "ffn_gate_shexp", i, {s.embd, sh});
        b.weight(blk(i, "ffn_up_shexp.weight"), "ffn_up_shexp", i, {s.embd, sh});
        b.weight(blk(i, "ffn_down_shexp.weight"), "ffn_down_shexp", i, {sh, s.embd});
      }
    } else {
      b.weight(blk(i, "ffn_gate.weight"), "ffn_gate", i, {s.embd, s.ff});
      b.weight(blk(i, "ffn_up.weight"), "ffn_up", i, {s.embd, s.ff});
      b.weight(blk(i, "ffn_down.weight"), "ffn_down", i, {s.ff, s.embd});
    }
    if (s.family == Family::kGemma3) b.f32(blk(i, "post_ffw_norm.weight"), {s.embd});
  }
  b.f32("output_norm.weight", {s.embd});
  if (!s.tied) b.weight("output.weight", "output", 0, {s.embd, s.vocab});

  // Metadata.
  std::string arch;
  switch (s.family) {
    case Family::kLlama:
      arch = "llama";
      break;
    case Family::kQwen2:
      arch = "qwen2";
      break;
    case Family::kQwen3Moe:
      arch = "qwen3moe";
      break;
    case Family::kGemma3:
      arch = "gemma3";
      break;
    case Family::kDeepseek2:
      arch = "deepseek2";
      break;
  }
  gguf::GgufSpec spec;
  auto& m = spec.metadata;
  auto key = [&](const std::string& k, MetaValue v) { m.emplace_back(k, std::move(v)); };
  auto akey = [&](const std::string& k, MetaValue v) {
    m.emplace_back(arch + "." + k, std::move(v));
  };
  key("general.architecture", MetaValue::string(arch));
  key("general.name", MetaValue::string(std::string(s.display_name) + " (ggfleet synthetic)"));
  key("general.quantization_version", MetaValue::u32(2));
  // llama_ftype of the mix: MOSTLY_Q4_0 = 2, MOSTLY_Q4_K_M = 15, MOSTLY_IQ2_XXS = 19.
  const std::uint32_t ftype = s.scheme == Scheme::kQ4_0 ? 2 : s.scheme == Scheme::kQ4_K_M ? 15 : 19;
  key("general.file_type", MetaValue::u32(options.type ? 0 : ftype));
  akey("vocab_size", MetaValue::u32(static_cast<std::uint32_t>(s.vocab)));
  akey("context_length", MetaValue::u32(static_cast<std::uint32_t>(s.context)));
  akey("embedding_length", MetaValue::u32(static_cast<std::uint32_t>(s.embd)));
  akey("block_count", MetaValue::u32(s.blocks));
  akey("feed_forward_length", MetaValue::u32(static_cast<std::uint32_t>(s.ff)));
  akey("attention.head_count", MetaValue::u32(s.heads));
  akey("attention.head_count_kv", MetaValue::u32(s.kv_heads));
  akey("attention.layer_norm_rms_epsilon",
       MetaValue::f32(s.family == Family::kGemma3 ? 1e-6f : 1e-5f));
  akey("rope.freq_base", MetaValue::f32(s.rope_base));
  if (s.family == Family::kDeepseek2) {
    akey("rope.dimension_count", MetaValue::u32(s.rope_dim));
    akey("attention.key_length", MetaValue::u32(s.kv_lora + s.rope_dim));
    akey("attention.value_length", MetaValue::u32(s.kv_lora));
    akey("attention.key_length_mla", MetaValue::u32(s.head_dim));
    akey("attention.value_length_mla", MetaValue::u32(s.v_head_dim));
    akey("attention.q_lora_rank", MetaValue::u32(s.q_lora));
    akey("attention.kv_lora_rank", MetaValue::u32(s.kv_lora));
    akey("leading_dense_block_count", MetaValue::u32(s.leading_dense));
    akey("expert_shared_count", MetaValue::u32(s.shared_experts));
    akey("expert_weights_scale", MetaValue::f32(2.5f));
    akey("expert_weights_norm", MetaValue::boolean(true));
    akey("expert_gating_func", MetaValue::u32(2));  // sigmoid
    akey("rope.scaling.type", MetaValue::string("yarn"));
    akey("rope.scaling.factor", MetaValue::f32(40.0f));
    akey("rope.scaling.original_context_length", MetaValue::u32(4096));
    akey("rope.scaling.yarn_log_multiplier", MetaValue::f32(0.1f));
  } else {
    akey("rope.dimension_count", MetaValue::u32(s.head_dim));
    akey("attention.key_length", MetaValue::u32(s.head_dim));
    akey("attention.value_length", MetaValue::u32(s.head_dim));
  }
  if (s.experts > 0) {
    akey("expert_count", MetaValue::u32(s.experts));
    akey("expert_used_count", MetaValue::u32(s.experts_used));
    akey("expert_feed_forward_length", MetaValue::u32(static_cast<std::uint32_t>(s.expert_ff)));
  }
  if (s.window > 0) akey("attention.sliding_window", MetaValue::u32(s.window));

  // A SentencePiece ("llama") vocabulary: <unk> <s> </s>, the 256 byte tokens, then filler pieces.
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<std::int32_t> types;
  tokens.reserve(s.vocab);
  tokens = {"<unk>", "<s>", "</s>"};
  types = {2, 3, 3};
  for (int byte = 0; byte < 256; ++byte) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", byte);
    tokens.emplace_back(buf);
    types.push_back(6);
  }
  const std::string letters = "etaoinshrdlucmfwypvbgkjqxz";
  for (std::uint64_t i = 0; tokens.size() < s.vocab; ++i) {
    std::string piece = "\xe2\x96\x81";  // the SentencePiece word boundary
    if (i < letters.size()) {
      tokens.push_back(std::string(1, letters[i]));
      types.push_back(1);
      if (tokens.size() == s.vocab) break;
    }
    for (std::uint64_t n = i;; n = n / letters.size() - 1) {
      piece += letters[n % letters.size()];
      if (n < letters.size()) break;
    }
    tokens.push_back(std::move(piece));
    types.push_back(1);
  }
  scores.resize(tokens.size());
  for (std::size_t i = 0; i < scores.size(); ++i) scores[i] = -static_cast<float>(i);
  key("tokenizer.ggml.model", MetaValue::string("llama"));
  key("tokenizer.ggml.tokens", MetaValue::strings(tokens));
  key("tokenizer.ggml.scores", MetaValue::f32s(scores));
  key("tokenizer.ggml.token_type", MetaValue::i32s(types));
  key("tokenizer.ggml.bos_token_id", MetaValue::u32(1));
  key("tokenizer.ggml.eos_token_id", MetaValue::u32(2));
  key("tokenizer.ggml.unknown_token_id", MetaValue::u32(0));
  key("tokenizer.ggml.add_bos_token", MetaValue::boolean(true));

  spec.tensors = std::move(b.tensors);
  return spec;
}

std::vector<std::string> synth(std::string_view preset, const std::string& out_dir,
                               const SynthOptions& options) {
  const Shape& s = find_shape(preset);
  gguf::GgufSpec spec = synth_spec(preset, options);
  std::filesystem::create_directories(out_dir);
  gguf::WriteOptions w;
  w.shards = options.shards.value_or(s.shards);
  w.fill = options.fill;
  w.seed = options.seed;
  return gguf::write_gguf(
      (std::filesystem::path(out_dir) / (std::string(preset) + ".gguf")).string(), spec, w);
}

}  // namespace ggfleet::model
