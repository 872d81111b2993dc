#include "estimate/model_memory.h"

#include <algorithm>
#include <charconv>
#include <map>
#include <string_view>
#include <tuple>

namespace ggfleet::estimate {
namespace {

std::uint64_t pad(std::uint64_t v, std::uint64_t a) {
  return (v + a - 1) / a * a;
}

// Layer of a tensor by name: blk.N.* -> N, output/output_norm -> the output layer, else input.
std::int32_t layer_of(std::string_view name, std::uint32_t blocks) {
  if (name.substr(0, 4) == "blk.") {
    const std::size_t dot = name.find('.', 4);
    std::uint32_t n = 0;
    if (dot != std::string_view::npos &&
        std::from_chars(name.data() + 4, name.data() + dot, n).ec == std::errc()) {
      return static_cast<std::int32_t>(n);
    }
  }
  if (name.substr(0, 7) == "output." || name.substr(0, 12) == "output_norm.")
    return static_cast<std::int32_t>(blocks);
  return -1;
}

// CPU_REPACK on x86 with AVX2 takes 2-D MUL_MAT and 3-D MUL_MAT_ID weights of these types whose
// second dimension is a multiple of 8 (ggml-cpu/repack.cpp).
bool repackable(const gguf::TensorInfo& t, std::int32_t layer) {
  using gguf::GgmlType;
  if (layer < 0) return false;
  // 2-D weights of MUL_MAT, or 3-D expert stacks of MUL_MAT_ID; not other 3-D weights (MLA's
  // attn_k_b/attn_v_b are batched products, which CPU_REPACK does not take).
  const bool experts = t.name.find("_exps.") != std::string_view::npos;
  if (!(t.n_dims == 2 || (t.n_dims == 3 && experts))) return false;
  const bool type_ok = t.type == GgmlType::Q4_0 || t.type == GgmlType::Q4_K ||
                       t.type == GgmlType::IQ4_NL || t.type == GgmlType::MXFP4;
  return type_ok && t.dims[1] % 8 == 0 && t.name.find(".bias") == std::string_view::npos;
}

}  // namespace

bool is_expert_tensor(std::string_view name) {
  for (std::size_t at = name.find(".ffn_"); at != std::string_view::npos;
       at = name.find(".ffn_", at + 1)) {
    std::string_view rest = name.substr(at + 5);
    bool kind = false;
    for (std::string_view k : {"gate_up_", "up_", "down_", "gate_"}) {
      if (rest.substr(0, k.size()) == k) {
        rest.remove_prefix(k.size());
        kind = true;
        break;
      }
    }
    if (!kind) continue;
    if (rest.substr(0, 2) == "ch") rest.remove_prefix(2);
    if (rest.substr(0, 4) == "exps") return true;
  }
  return false;
}

std::uint64_t cuda_tensor_bytes(gguf::GgmlType type, std::uint64_t ne0, std::uint64_t bytes) {
  std::uint64_t size = bytes;
  if (gguf::traits(type).quantized && ne0 % 512 != 0)
    size += gguf::row_bytes(type, 512 - ne0 % 512);
  return pad(size, 128);
}

ModelMemory ModelMemory::from(const gguf::Model& model, model::Profile profile) {
  ModelMemory m;
  m.profile = std::move(profile);
  m.shard_count = static_cast<std::uint32_t>(model.shards().size());
  const std::uint32_t blocks = m.profile.blocks;
  m.layers.resize(blocks + 1);
  m.tensors.reserve(model.tensors().size());
  for (const gguf::TensorInfo& t : model.tensors()) {
    TensorMemory tm;
    tm.name = t.name;
    tm.layer = layer_of(t.name, blocks);
    tm.shard = t.shard;
    tm.file_offset = t.file_offset;
    tm.bytes = t.bytes;
    tm.cpu_bytes = pad(t.bytes, 32);
    tm.cuda_bytes = cuda_tensor_bytes(t.type, t.dims[0], t.bytes);
    tm.repackable = repackable(t, tm.layer);
    tm.expert = tm.layer >= 0 && is_expert_tensor(t.name);
    if (tm.layer >= 0) {  // input tensors (token_embd) always stay in host RAM: see estimate()
      LayerMemory& l = m.layers[static_cast<std::size_t>(tm.layer)];
      l.cpu_bytes += tm.cpu_bytes;
      l.cuda_bytes += tm.cuda_bytes;
      const std::string_view name = t.name;
      if (name.find("_exps.") != std::string_view::npos)
        l.largest_expert_bytes = std::max(l.largest_expert_bytes, tm.cuda_bytes);
      if (name.ends_with(".ffn_up.weight") || name.ends_with(".ffn_gate.weight"))
        l.ffn_gate_up_bytes = std::max(l.ffn_gate_up_bytes, tm.cuda_bytes);
      if (name.ends_with(".ffn_down.weight")) l.ffn_down_bytes = tm.cuda_bytes;
      if (name.ends_with(".attn_output.weight")) l.attn_output_bytes = tm.cuda_bytes;
      if (tm.expert) {
        l.expert_cpu_bytes += tm.cpu_bytes;
        l.expert_cuda_bytes += tm.cuda_bytes;
      }
    }
    if (t.name == "token_embd.weight" && m.profile.output_tied) {
      m.tied_output_cpu_bytes = tm.cpu_bytes;
      m.tied_output_cuda_bytes = tm.cuda_bytes;
    }
    m.tensors.push_back(tm);
  }
  std::sort(m.tensors.begin(), m.tensors.end(), [](const TensorMemory& a, const TensorMemory& b) {
    return a.shard != b.shard ? a.shard < b.shard : a.file_offset < b.file_offset;
  });
  std::map<std::tuple<std::int32_t, std::uint32_t, bool>, HostPiece> pieces;
  for (const TensorMemory& t : m.tensors) {
    HostPiece& p = pieces[{t.layer, t.shard, t.expert}];
    p.layer = t.layer;
    p.shard = t.shard;
    p.experts = t.expert;
    p.bytes += t.bytes;
    p.cpu_bytes += t.cpu_bytes;
    p.span_lo = std::min(p.span_lo, t.file_offset);
    p.span_hi = std::max(p.span_hi, t.file_offset + t.bytes);
    if (t.repackable) {
      p.repack_cpu_bytes += t.cpu_bytes;
    } else {
      p.plain_cpu_bytes += t.cpu_bytes;
      p.plain_span_lo = std::min(p.plain_span_lo, t.file_offset);
      p.plain_span_hi = std::max(p.plain_span_hi, t.file_offset + t.bytes);
    }
  }
  for (auto& [key, p] : pieces) m.host_pieces.push_back(p);
  return m;
}

}  // namespace ggfleet::estimate
