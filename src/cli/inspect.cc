#include "cli/inspect.h"

#include <algorithm>
#include <cstdio>
#include <sstream>

#include "cluster/units.h"

namespace ggfleet::cli {
namespace {

using nlohmann::json;

json value_json(const gguf::Value& v) {
  using gguf::ValueType;
  switch (v.type()) {
    case ValueType::STRING: {
      // Not all GGUF strings are valid UTF-8: callers dump with error_handler_t::replace.
      return std::string(*v.as_string());
    }
    case ValueType::BOOL:
      return *v.as_bool();
    case ValueType::F32:
    case ValueType::F64:
      return *v.as_f64();
    case ValueType::I8:
    case ValueType::I16:
    case ValueType::I32:
    case ValueType::I64:
      return *v.as_i64();
    case ValueType::ARRAY: {
      if (v.array_size() > 16) {
        return json{{"type", "array"},
                    {"element_type", std::string(gguf::value_type_name(v.array_type()))},
                    {"length", v.array_size()}};
      }
      json a = json::array();
      v.for_each([&](const gguf::Value& e) { a.push_back(value_json(e)); });
      return a;
    }
    default:
      return *v.as_u64();
  }
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string human_count(std::uint64_t n) {
  if (n >= 1'000'000'000ULL) return fixed(static_cast<double>(n) / 1e9, 2) + " B";
  if (n >= 1'000'000ULL) return fixed(static_cast<double>(n) / 1e6, 2) + " M";
  return std::to_string(n);
}

}  // namespace

json inspect_json(const gguf::Model& model, const model::Profile& p) {
  json j;
  j["architecture"] = p.architecture;
  j["name"] = p.name;
  j["blocks"] = p.blocks;
  j["parameters"] = p.parameters;
  j["tensor_count"] = p.tensor_count;
  j["metadata_count"] = p.metadata_count;
  j["tensor_bytes"] = p.tensor_bytes;
  j["file_bytes"] = p.file_bytes;
  j["gguf_version"] = model.first().version();
  j["alignment"] = model.first().alignment();
  json shards = json::array();
  for (const gguf::File& s : model.shards()) {
    std::uint64_t bytes = 0;
    for (const gguf::TensorInfo& t : s.tensors()) bytes += t.bytes;
    shards.push_back({{"path", s.name()},
                      {"file_bytes", s.file_bytes()},
                      {"tensor_count", s.tensors().size()},
                      {"tensor_bytes", bytes}});
  }
  j["shards"] = shards;
  j["context_length"] = p.context_length;
  j["embedding_length"] = p.embedding_length;
  j["feed_forward_length"] = p.feed_forward_length;
  j["vocab_size"] = p.vocab_size;
  j["experts"] = {{"count", p.experts.count},
                  {"used", p.experts.used},
                  {"shared", p.experts.shared},
                  {"leading_dense_blocks", p.experts.leading_dense_blocks},
                  {"feed_forward_length", p.experts.feed_forward_length}};
  const model::Attention& a = p.attention;
  std::uint32_t swa_blocks = 0;
  for (bool b : a.sliding_window_blocks) swa_blocks += b ? 1 : 0;
  j["attention"] = {{"head_count", a.head_count},
                    {"head_count_kv", a.head_count_kv},
                    {"key_length", a.key_length},
                    {"value_length", a.value_length},
                    {"mla", a.is_mla()},
                    {"kv_lora_rank", a.kv_lora_rank},
                    {"q_lora_rank", a.q_lora_rank},
                    {"key_length_mla", a.key_length_mla},
                    {"value_length_mla", a.value_length_mla},
                    {"rope_dimensions", a.rope_dimensions},
                    {"sliding_window", a.sliding_window},
                    {"sliding_window_blocks", swa_blocks}};
  j["recurrent"] = {{"conv_kernel", p.recurrent.conv_kernel},
                    {"state_size", p.recurrent.state_size},
                    {"inner_size", p.recurrent.inner_size},
                    {"group_count", p.recurrent.group_count},
                    {"wkv_head_size", p.recurrent.wkv_head_size}};
  j["tokenizer"] = {{"model", p.tokenizer.model},
                    {"pre", p.tokenizer.pre},
                    {"vocab_size", p.tokenizer.vocab_size}};
  json mix = json::object();
  for (const auto& [type, bytes] : p.bytes_by_type)
    mix[std::string(gguf::type_display_name(type))] = bytes;
  j["bytes_by_type"] = mix;
  j["non_block_bytes"] = {{"token_embedding", p.token_embedding_bytes},
                          {"output", p.output_bytes},
                          {"output_norm", p.output_norm_bytes},
                          {"other", p.other_bytes},
                          {"output_tied", p.output_tied}};
  json blocks = json::array();
  for (const model::BlockBytes& b : p.block_bytes) {
    blocks.push_back({{"bytes", b.total_bytes},
                      {"parameters", b.parameters},
                      {"attention_bytes", b.attention_bytes},
                      {"ffn_bytes", b.ffn_bytes},
                      {"expert_bytes", b.expert_bytes},
                      {"shared_expert_bytes", b.shared_expert_bytes},
                      {"recurrent_bytes", b.recurrent_bytes},
                      {"other_bytes", b.other_bytes}});
  }
  j["block_bytes"] = blocks;
  json meta = json::object();
  for (const gguf::KeyValue& kv : model.first().metadata())
    meta[std::string(kv.key)] = value_json(kv.value);
  j["metadata"] = meta;
  return j;
}

std::string inspect_text(const gguf::Model& model, const model::Profile& p) {
  std::ostringstream o;
  o << (p.name.empty() ? model.first().name() : p.name) << "\n";
  o << "  architecture   " << (p.architecture.empty() ? "(none)" : p.architecture) << ", GGUF v"
    << model.first().version() << "\n";
  o << "  parameters     " << human_count(p.parameters) << " (" << p.parameters << ")\n";
  o << "  size           " << cluster::format_bytes(p.tensor_bytes) << " of tensors in "
    << cluster::format_bytes(p.file_bytes) << " of files, "
    << fixed(p.parameters
                 ? 8.0 * static_cast<double>(p.tensor_bytes) / static_cast<double>(p.parameters)
                 : 0,
             2)
    << " bits per weight\n";
  o << "  blocks         " << p.blocks;
  if (!p.block_bytes.empty()) {
    const auto [lo, hi] = std::minmax_element(
        p.block_bytes.begin(), p.block_bytes.end(),
        [](const auto& a, const auto& b) { return a.total_bytes < b.total_bytes; });
    o << ", " << cluster::format_bytes(lo->total_bytes);
    if (hi->total_bytes != lo->total_bytes) o << " to " << cluster::format_bytes(hi->total_bytes);
    o << " each";
  }
  o << "\n";
  o << "  non-block      token_embd " << cluster::format_bytes(p.token_embedding_bytes)
    << ", output "
    << (p.output_tied ? std::string("tied to token_embd") : cluster::format_bytes(p.output_bytes))
    << "\n";
  o << "  context        " << p.context_length << " tokens (training)\n";
  o << "  embedding      " << p.embedding_length << ", feed-forward " << p.feed_forward_length
    << "\n";
  const model::Attention& a = p.attention;
  o << "  attention      " << a.head_count << " heads, " << a.head_count_kv << " KV heads, key "
    << a.key_length << ", value " << a.value_length;
  if (a.is_mla())
    o << " (MLA latent: kv_lora_rank " << a.kv_lora_rank << " + rope " << a.rope_dimensions << ")";
  o << "\n";
  if (a.sliding_window > 0) {
    std::uint32_t n = 0;
    for (bool b : a.sliding_window_blocks) n += b ? 1 : 0;
    o << "  sliding window " << a.sliding_window << " tokens on " << n << " of " << p.blocks
      << " blocks\n";
  }
  if (p.is_moe()) {
    o << "  experts        " << p.experts.count << " routed, " << p.experts.used
      << " used per token, " << p.experts.shared << " shared, " << p.experts.leading_dense_blocks
      << " leading dense blocks, expert FFN " << p.experts.feed_forward_length << "\n";
  }
  if (p.recurrent.present()) {
    o << "  recurrent      state " << p.recurrent.state_size << ", inner " << p.recurrent.inner_size
      << ", conv " << p.recurrent.conv_kernel << "\n";
  }
  o << "  tokenizer      " << (p.tokenizer.model.empty() ? "(none)" : p.tokenizer.model) << ", "
    << p.vocab_size << " tokens\n";
  o << "  quantization  ";
  std::vector<std::pair<std::uint64_t, gguf::GgmlType>> mix;
  for (const auto& [type, bytes] : p.bytes_by_type) mix.emplace_back(bytes, type);
  std::sort(mix.rbegin(), mix.rend());
  for (const auto& [bytes, type] : mix) {
    o << " " << gguf::type_display_name(type) << " "
      << fixed(p.tensor_bytes
                   ? 100.0 * static_cast<double>(bytes) / static_cast<double>(p.tensor_bytes)
                   : 0,
               1)
      << "%";
  }
  o << "\n";
  o << "  tensors        " << p.tensor_count << ", metadata keys " << p.metadata_count << "\n";
  o << "  files          " << model.shards().size() << "\n";
  for (const gguf::File& s : model.shards())
    o << "    " << s.name() << "  " << cluster::format_bytes(s.file_bytes()) << "\n";
  return o.str();
}

}  // namespace ggfleet::cli
