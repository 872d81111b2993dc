#include "estimate/estimate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace ggfleet::estimate {
namespace {

using gguf::GgmlType;

constexpr std::uint64_t kCpuAlignment = 32;
constexpr std::uint64_t kCudaAlignment = 128;
constexpr std::uint32_t kContextPadding = 256;  // llama.cpp pads n_ctx (and SWA cells) to 256
constexpr std::uint32_t kPipelineCopies = 4;    // GGML_SCHED_MAX_COPIES

std::uint64_t pad(std::uint64_t v, std::uint64_t a) {
  return (v + a - 1) / a * a;
}

std::uint64_t align_for(Backend b) {
  return b == Backend::kCuda ? kCudaAlignment : kCpuAlignment;
}

std::string type_name(GgmlType t) {
  return std::string(gguf::type_display_name(t));
}

void validate(const model::Profile& p, const Layout& layout) {
  const ContextOptions& c = layout.context;
  if (!layout.tensor_split.empty() && layout.tensor_split.size() != layout.devices.size()) {
    throw LayoutError("tensor split has " + std::to_string(layout.tensor_split.size()) +
                      " values but there are " + std::to_string(layout.devices.size()) +
                      " devices");
  }
  for (double v : layout.tensor_split) {
    if (!std::isfinite(v) || v < 0)
      throw LayoutError("tensor split values must be finite and not negative");
  }
  if (layout.gpu_layers < -1) throw LayoutError("gpu layers must be -1 (all) or at least 0");
  if (c.parallel == 0) throw LayoutError("parallel must be at least 1");
  if (c.ubatch_tokens == 0 || c.batch_tokens == 0)
    throw LayoutError("batch and ubatch sizes must be at least 1");
  const bool v_quantized = gguf::traits(c.cache_type_v).quantized;
  if (v_quantized && c.flash_attention == FlashAttention::kOff) {
    throw LayoutError("a quantized V cache (" + type_name(c.cache_type_v) +
                      ") requires flash attention");
  }
  if (p.attention.is_mla() && c.cache_type_k != c.cache_type_v) {
    throw LayoutError("MLA models keep one latent cache: K and V cache types must match (K " +
                      type_name(c.cache_type_k) + ", V " + type_name(c.cache_type_v) + ")");
  }
  for (GgmlType t : {c.cache_type_k, c.cache_type_v}) {
    const auto& tr = gguf::traits(t);
    const bool allowed = t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16 ||
                         t == GgmlType::Q8_0 || t == GgmlType::Q4_0 || t == GgmlType::Q4_1 ||
                         t == GgmlType::Q5_0 || t == GgmlType::Q5_1 || t == GgmlType::IQ4_NL;
    if (!allowed) throw LayoutError("cache type " + type_name(t) + " is not one llama.cpp accepts");
    if (tr.quantized && p.attention.key_length % tr.block_elements != 0) {
      throw LayoutError("cache type " + type_name(t) + " needs head sizes that are multiples of " +
                        std::to_string(tr.block_elements));
    }
  }
  for (const Device& d : layout.devices) {
    if (d.name.empty()) throw LayoutError("every device needs a name");
  }
  if (!layout.experts.empty() && layout.experts.size() != p.blocks) {
    throw LayoutError("expert placement has " + std::to_string(layout.experts.size()) +
                      " entries for " + std::to_string(p.blocks) + " blocks");
  }
  for (std::int32_t e : layout.experts) {
    if (e < kExpertsWithBlock || e >= static_cast<std::int32_t>(layout.devices.size()))
      throw LayoutError("expert placement names device " + std::to_string(e) +
                        ", which is not one");
  }
}

bool is_recurrent_layer(const model::Profile& p, std::uint32_t il) {
  return p.recurrent.present() && p.attention.head_count_kv_per_block[il] == 0;
}

// Per-layer KV (or recurrent state) bytes for one buffer of alignment `align`.
struct KvPlan {
  std::uint32_t n_ctx = 0;      // after padding
  std::uint32_t cells = 0;      // per stream, full-attention layers
  std::uint32_t swa_cells = 0;  // per stream, sliding-window layers
  std::uint32_t streams = 1;
};

KvPlan plan_kv(const model::Profile& p, const ContextOptions& c) {
  KvPlan k;
  std::uint64_t n_ctx = c.context_tokens ? c.context_tokens : p.context_length;
  n_ctx = pad(std::max<std::uint64_t>(n_ctx, 1), kContextPadding);
  std::uint64_t n_ctx_seq = n_ctx;
  k.streams = 1;
  if (!c.kv_unified && c.parallel > 1) {
    n_ctx_seq = pad(n_ctx / c.parallel, kContextPadding);
    k.streams = c.parallel;
    n_ctx = n_ctx_seq * c.parallel;
  }
  k.n_ctx = static_cast<std::uint32_t>(n_ctx);
  k.cells = static_cast<std::uint32_t>(n_ctx_seq);
  if (p.attention.sliding_window > 0) {
    const std::uint64_t window =
        std::uint64_t{p.attention.sliding_window} * (c.kv_unified ? c.parallel : 1) +
        std::min(c.ubatch_tokens, c.batch_tokens);
    k.swa_cells = c.swa_full ? k.cells
                             : static_cast<std::uint32_t>(pad(
                                   std::min<std::uint64_t>(n_ctx_seq, window), kContextPadding));
  }
  return k;
}

std::uint64_t kv_layer_bytes(const model::Profile& p, const ContextOptions& c, const KvPlan& k,
                             std::uint32_t il, std::uint64_t align) {
  const model::Attention& a = p.attention;
  if (is_recurrent_layer(p, il)) {
    const model::Recurrent& r = p.recurrent;
    std::uint64_t n_embd_r = 0;
    std::uint64_t n_embd_s = 0;
    if (r.wkv_head_size > 0) {
      n_embd_r = 2 * p.embedding_length;
      n_embd_s = p.embedding_length * r.wkv_head_size;
    } else {
      n_embd_r = std::uint64_t{r.conv_kernel ? r.conv_kernel - 1 : 0} *
                 (r.inner_size + 2ull * r.group_count * r.state_size);
      n_embd_s = std::uint64_t{r.state_size} * r.inner_size;
    }
    const std::uint64_t rows = std::max<std::uint32_t>(1, c.parallel);
    return pad(4 * n_embd_r * rows, align) + pad(4 * n_embd_s * rows, align);
  }
  const std::uint32_t heads_kv = a.head_count_kv_per_block[il];
  if (heads_kv == 0) return 0;
  const bool swa = !a.sliding_window_blocks.empty() && a.sliding_window_blocks[il];
  const std::uint64_t cells = std::uint64_t{swa ? k.swa_cells : k.cells} * k.streams;
  const std::uint64_t k_bytes =
      pad(gguf::row_bytes(c.cache_type_k, std::uint64_t{a.key_length} * heads_kv) * cells, align);
  if (a.is_mla()) return k_bytes;  // the latent cache has no V
  const std::uint64_t v_bytes =
      pad(gguf::row_bytes(c.cache_type_v, std::uint64_t{a.value_length} * heads_kv) * cells, align);
  return k_bytes + v_bytes;
}

// The routed experts' own activations of an MoE block: what moves with the expert tensors when
// they live apart from their block.
std::uint64_t routed_activation_bytes(const model::Profile& p, std::uint32_t il,
                                      std::uint64_t ffn_tokens) {
  if (p.experts.count == 0 || il < p.experts.leading_dense_blocks) return 0;
  const std::uint64_t row = 4 * ffn_tokens;
  return (3 * p.experts.feed_forward_length + p.embedding_length) * p.experts.used * row;
}

// The routed experts' weighted outputs for `rows` tokens (one hidden state per used expert), which
// the block sums into its feed-forward output.
std::uint64_t weighted_expert_outputs_bytes(const model::Profile& p, std::uint64_t rows) {
  return std::uint64_t{p.embedding_length} * p.experts.used * 4 * rows;
}

// The same when a GPU runs a GPU block's routed experts on copies of their host-held weights (op
// offload), which it receives for each product in turn (`weight_bytes`: the largest). The block's
// attention used resident weights and cache, so the gate and up outputs lie low; the down
// projection's weight arrives after they are freed and ggml-alloc places it and the output right
// above the activation (bench/data/cuda-alloc-trace, qwen3_d2_cmoe4: activation 12, weight 108,
// output 32 MiB, contiguous from 24 MiB) instead of above all three products. The peak is the
// larger of the up product (gate and up outputs and a weight) and the down product (activation,
// weight, output).
std::uint64_t routed_copy_bytes(const model::Profile& p, std::uint32_t il, std::uint64_t ffn_tokens,
                                std::uint64_t weight_bytes) {
  if (routed_activation_bytes(p, il, ffn_tokens) == 0) return 0;
  const std::uint64_t ff = p.experts.feed_forward_length;
  const std::uint64_t rows = std::uint64_t{4} * ffn_tokens * p.experts.used;
  return weight_bytes + std::max(2 * ff, ff + p.embedding_length) * rows;
}

// What a GPU that runs a CPU block's products (op offload) receives for them.
struct CopiedInputs {
  std::uint64_t cache_bytes = 0;           // the layer's K and V views (and f16 copies)
  std::uint64_t f16_cache_bytes = 0;       // MLA: f16 forms of quantized K and V view copies
  std::uint64_t stacked_weight_bytes = 0;  // a weight alive above all feed-forward outputs
  std::uint64_t gate_up_weight_bytes = 0;  // dense: the gate and up weights copied in turn
  std::uint64_t down_weight_bytes = 0;     // dense: the down weight copied after them
  std::uint64_t attn_output_bytes = 0;     // dense: the attention output projection's copy
};

// Peak activation bytes of one block for a micro-batch of `tokens`, excluding what every block
// keeps live (the residual stream, inputs), which the callers add.
// `dequant_bytes_per_cell`: CUDA's flash attention reads a quantized cache through f16 copies of
// the layer's K and V, this many bytes per cell (0 otherwise).
// `ffn_tokens`: the rows that reach the feed-forward part. The last block gathers only the rows
// whose logits are wanted before its FFN (llama-server reserves one per sequence), so there it is
// far fewer than `tokens`. `copied`: what a GPU that runs a CPU block's products receives (see
// the caller).
// `experts_here`: false when the block's routed experts live elsewhere (Layout::experts).
// `below_bytes`: the weighted expert outputs of the block before, when it ran its experts on the
// same device (0 otherwise): see below.
std::uint64_t block_activation_bytes(const model::Profile& p, std::uint32_t il,
                                     std::uint64_t tokens, std::uint64_t ffn_tokens, bool fa,
                                     std::uint64_t kv_cells, std::uint64_t dequant_bytes_per_cell,
                                     const CopiedInputs& copied, bool experts_here,
                                     std::uint64_t below_bytes) {
  const model::Attention& a = p.attention;
  const std::uint64_t row = 4 * ffn_tokens;  // one f32 element per FFN row
  std::uint64_t ffn = 0;
  const bool moe = p.experts.count > 0 && il >= p.experts.leading_dense_blocks;
  if (moe) {
    ffn = 2 * p.experts.count * row + 3 * p.experts.feed_forward_length * p.experts.shared * row;
    // Experts that live elsewhere send their down projection's output back: the block's device
    // weights it in place of the copy and sums it into one more hidden state. Measured with
    // GGML_SCHED_DEBUG on the CPU build (without the sum, a 137 MiB device was 3.5 MiB under).
    ffn += experts_here ? routed_activation_bytes(p, il, ffn_tokens)
                        : std::uint64_t{p.embedding_length} * (p.experts.used + 1) * row;
    // A CPU block whose products a GPU runs stacks the expert weight it receives above all of
    // its feed-forward outputs: its attention ran there too, on copies of its weights and cache,
    // and the holes they leave below are too small for the products (bench/data/cuda-alloc-trace,
    // qwen3_d0: the activation lands above the mask at 44.5 MiB, not in the 24 MiB the gate and
    // up outputs free).
    ffn += copied.stacked_weight_bytes;
  } else if (copied.gate_up_weight_bytes > 0) {
    // A dense CPU block whose products a GPU runs: the gate weight's copy and output, then the up
    // weight's copy in its place and the up output above; then the activation, the down weight's
    // copy and the output. Both above a hole that the attention output projection's copy left
    // under the residual (bench/data/cuda-alloc-trace, llama3_d0: 33 or 42 MiB of residuals,
    // mask and hole, weight 31.5, outputs 28 + 28 MiB). An FFN without a gate has one output
    // fewer; counting two keeps it over, not under.
    const std::uint64_t ff = p.feed_forward_length;
    ffn = std::max(2 * ff * row + copied.gate_up_weight_bytes,
                   (ff + p.embedding_length) * row + copied.down_weight_bytes) +
          copied.attn_output_bytes;
  } else {
    ffn = 3 * p.feed_forward_length * row + copied.stacked_weight_bytes;
  }
  const std::uint64_t f32 = 4 * tokens;
  std::uint64_t attn = 0;
  if (a.is_mla()) {
    attn = std::uint64_t{a.head_count} *
           (a.key_length_mla + a.kv_lora_rank + a.key_length + a.value_length_mla) * f32;
  } else if (a.head_count_kv_per_block[il] > 0) {
    const std::uint64_t heads_kv = a.head_count_kv_per_block[il];
    attn =
        (std::uint64_t{a.head_count} * a.key_length + heads_kv * (a.key_length + a.value_length)) *
        f32;
  }
  if (a.head_count_kv_per_block[il] > 0) {
    attn += fa ? kv_cells * dequant_bytes_per_cell : kv_cells * tokens * a.head_count * 4;
    // With MLA the projected query (heads x key_length_mla floats per token) is freed before the
    // copies of the host cache arrive, and ggml-alloc places them in that block when they fit
    // (best fit): the peak then does not grow (bench/data/cuda-alloc-peaks, deepseek_d0 at 8k
    // cells; at 32k cells and four streams they do not fit and add to it).
    const std::uint64_t query_hole =
        a.is_mla() ? std::uint64_t{a.head_count} * a.key_length_mla * f32 : 0;
    if (copied.cache_bytes > query_hole) attn += copied.cache_bytes;
    // MLA with flash attention on copies of a quantized cache: ggml-cuda sizes the attention's
    // latent output (heads x kv_lora_rank floats per token) and f16 forms of the K and V copies
    // into one tensor. It goes where the projected and the absorbed query were freed (the query
    // the attention reads is their concatenation) when it fits there, as with an f16 cache; when
    // not, it lands above the whole query, and the copies lie in holes below
    // (bench/data/cuda-alloc-trace, deepseek_np4_ngl4_q8_0: 196 MiB above 48 + 128 + 144 MiB of
    // query parts; with 162 MiB, at two streams of 8k cells, it fits: bench/data/cuda-held-out,
    // which is how this threshold was corrected, so that case is not held out for this rule).
    // The region really free is a little smaller than the two freed parts (172.5 of 176 MiB in
    // that trace: the mask took the rest), so an output within a few MiB under counts as fitting
    // when it may not.
    if (a.is_mla() && fa && copied.f16_cache_bytes > 0) {
      const std::uint64_t output =
          std::uint64_t{a.head_count} * a.kv_lora_rank * f32 + copied.f16_cache_bytes;
      const std::uint64_t freed =
          std::uint64_t{a.head_count} * (a.key_length_mla + a.kv_lora_rank) * f32;
      if (output > freed) {
        attn = std::max(attn, std::uint64_t{a.head_count} *
                                      (a.key_length_mla + a.kv_lora_rank + a.key_length) * f32 +
                                  output);
      }
    }
    // After an MoE block, ggml-alloc has put the residual it hands on above that block's weighted
    // expert outputs, so this block's attention scores (without flash attention) or flash
    // attention's output with its f16 copies of a quantized cache (ggml-cuda sizes them into the
    // one tensor) start above both (bench/data/cuda-alloc-trace: qwen3_c8192_nofa, the 512 MiB
    // scores from 62.8 MiB; qwen3_c32768_q8, 72 MiB from 84.1). Measured for grouped-query
    // attention, not for MLA.
    if (below_bytes > 0 && !a.is_mla()) {
      const std::uint64_t scores = fa ? kv_cells * dequant_bytes_per_cell +
                                            std::uint64_t{a.head_count} * a.value_length * f32
                                      : kv_cells * tokens * a.head_count * 4;
      attn = std::max(attn, below_bytes + scores);
    }
  }
  return std::max(ffn, attn);
}

}  // namespace

std::vector<std::int32_t> assign_layers(std::uint32_t blocks, std::int32_t gpu_layers,
                                        const std::vector<double>& splits) {
  const std::uint32_t n_layers = blocks + 1;
  std::vector<std::int32_t> out(n_layers, -1);
  if (splits.empty()) return out;
  const std::uint32_t ngl =
      gpu_layers < 0 ? n_layers
                     : std::min<std::uint32_t>(static_cast<std::uint32_t>(gpu_layers), n_layers);
  if (ngl == 0) return out;
  std::vector<double> cumulative(splits.size());
  double sum = 0;
  for (double s : splits) sum += s;
  if (sum <= 0) {
    for (std::size_t i = 0; i < splits.size(); ++i)
      cumulative[i] = static_cast<double>(i + 1) / static_cast<double>(splits.size());
  } else {
    double run = 0;
    for (std::size_t i = 0; i < splits.size(); ++i) {
      run += splits[i];
      cumulative[i] = run / sum;
    }
  }
  const std::uint32_t start = n_layers - ngl;
  for (std::uint32_t il = start; il < n_layers; ++il) {
    // llama.cpp compares in float: the first device whose cumulative split exceeds the fraction.
    const float frac = static_cast<float>(il - start) / static_cast<float>(ngl);
    std::size_t dev = 0;
    while (dev + 1 < cumulative.size() && !(static_cast<float>(cumulative[dev]) > frac)) ++dev;
    out[il] = static_cast<std::int32_t>(dev);
  }
  return out;
}

Estimate estimate(const ModelMemory& m, const Layout& layout) {
  const model::Profile& p = m.profile;
  validate(p, layout);
  const ContextOptions& c = layout.context;
  const std::uint32_t blocks = p.blocks;
  const std::size_t n_dev = layout.devices.size();

  Estimate e;
  e.total_layers = blocks + 1;
  std::vector<double> splits = layout.tensor_split;
  const bool all_zero = std::all_of(splits.begin(), splits.end(), [](double v) { return v == 0; });
  if (splits.empty() || all_zero) {
    splits.clear();
    for (const Device& d : layout.devices) splits.push_back(static_cast<double>(d.free_bytes));
  }
  const std::vector<std::int32_t> where =
      assign_layers(blocks, n_dev == 0 ? 0 : layout.gpu_layers, splits);

  e.devices.resize(n_dev);
  for (std::size_t d = 0; d < n_dev; ++d) {
    e.devices[d].name = layout.devices[d].name;
    e.devices[d].free_bytes = layout.devices[d].free_bytes;
  }
  for (std::uint32_t il = 0; il <= blocks; ++il) {
    if (where[il] < 0) continue;
    DeviceUsage& u = e.devices[static_cast<std::size_t>(where[il])];
    ++u.layers;
    ++e.offloaded_layers;
    if (il == blocks) {
      u.has_output = true;
    } else {
      if (u.first_block < 0) u.first_block = static_cast<std::int32_t>(il);
      u.last_block = static_cast<std::int32_t>(il);
    }
  }
  const std::int32_t output_device = where[blocks];
  // Where each block's routed experts are: with the block unless the layout moves them (no copy
  // for the usual layout without overrides).
  std::vector<std::int32_t> moved_experts;
  if (!layout.experts.empty()) {
    moved_experts.assign(where.begin(), where.begin() + blocks);
    for (std::uint32_t il = 0; il < blocks; ++il) {
      if (layout.experts[il] != kExpertsWithBlock) moved_experts[il] = layout.experts[il];
    }
  }
  const std::vector<std::int32_t>& experts_at = layout.experts.empty() ? where : moved_experts;

  // Flash attention: auto is on for every backend we plan for; a quantized V cache forces it.
  e.flash_attention = c.flash_attention != FlashAttention::kOff;
  // Pipeline parallelism: several devices, everything offloaded, KV offloaded.
  // Any tensor override turns it off (llama_model::has_tensor_overrides).
  e.pipeline_parallel =
      n_dev > 1 && e.offloaded_layers == blocks + 1 && c.kv_offload && layout.experts.empty();

  // ---- Weights ----
  const bool cuda_first =
      n_dev > 0 && !layout.devices[0].remote && layout.devices[0].backend == Backend::kCuda;
  for (std::uint32_t il = 0; il <= blocks; ++il) {
    const LayerMemory& l = m.layers[il];
    const bool moved = il < blocks && experts_at[il] != where[il];
    auto add = [&](std::int32_t dev, std::uint64_t cuda_bytes, std::uint64_t cpu_bytes) {
      if (dev < 0) return;  // host RAM: from the host pieces below
      const auto d = static_cast<std::size_t>(dev);
      e.devices[d].weights_bytes +=
          layout.devices[d].backend == Backend::kCuda ? cuda_bytes : cpu_bytes;
    };
    if (moved && l.expert_cpu_bytes > 0) {
      add(where[il], l.cuda_bytes - l.expert_cuda_bytes, l.cpu_bytes - l.expert_cpu_bytes);
      add(experts_at[il], l.expert_cuda_bytes, l.expert_cpu_bytes);
      if (experts_at[il] >= 0) {
        ++e.devices[static_cast<std::size_t>(experts_at[il])].expert_blocks;
      } else if (where[il] >= 0) {
        ++e.host_expert_blocks;
      }
    } else {
      add(where[il], l.cuda_bytes, l.cpu_bytes);
    }
  }
  if (output_device >= 0 && m.profile.output_tied) {
    const auto d = static_cast<std::size_t>(output_device);
    e.devices[d].weights_bytes += layout.devices[d].backend == Backend::kCuda
                                      ? m.tied_output_cuda_bytes
                                      : m.tied_output_cpu_bytes;
  }
  // Host: the input tensors, blocks kept on the CPU, and the output layer if it is not offloaded.
  std::vector<std::uint64_t> span_lo(m.shard_count, ~0ull);
  std::vector<std::uint64_t> span_hi(m.shard_count, 0);
  const bool repack = c.cpu_repack && !cuda_first;
  for (const HostPiece& t : m.host_pieces) {
    const bool on_cpu =
        t.layer < 0 || (t.experts ? experts_at : where)[static_cast<std::size_t>(t.layer)] < 0;
    if (!on_cpu) continue;
    e.host.weights_bytes += t.bytes;
    if (repack) e.host.repack_bytes += t.repack_cpu_bytes;
    const std::uint64_t lo = repack ? t.plain_span_lo : t.span_lo;
    const std::uint64_t hi = repack ? t.plain_span_hi : t.span_hi;
    if (!c.mmap) {
      e.host.copied_bytes += repack ? t.plain_cpu_bytes : t.cpu_bytes;
    } else if (hi > 0) {
      span_lo[t.shard] = std::min(span_lo[t.shard], lo);
      span_hi[t.shard] = std::max(span_hi[t.shard], hi);
    }
  }
  for (std::uint32_t s = 0; s < m.shard_count; ++s) {
    if (span_hi[s] > 0) e.host.mapped_bytes += span_hi[s] - span_lo[s];
  }
  e.host.copied_bytes += e.host.repack_bytes;

  // ---- KV cache ----
  const KvPlan kv = plan_kv(p, c);
  e.context_tokens = kv.n_ctx;
  e.kv_cells_per_stream = kv.cells;
  e.kv_streams = kv.streams;
  for (std::uint32_t il = 0; il < blocks; ++il) {
    const std::int32_t d = c.kv_offload ? where[il] : -1;
    if (d < 0) {
      e.host.kv_bytes += kv_layer_bytes(p, c, kv, il, kCpuAlignment);
    } else {
      const auto di = static_cast<std::size_t>(d);
      e.devices[di].kv_bytes += kv_layer_bytes(p, c, kv, il, align_for(layout.devices[di].backend));
    }
  }

  // ---- Compute buffers ----
  // llama.cpp caps the micro-batch at the batch, and both at the context.
  const std::uint64_t tokens =
      std::min<std::uint64_t>(kv.n_ctx, std::min(c.ubatch_tokens, c.batch_tokens));
  const std::uint64_t hidden = p.embedding_length * tokens * 4;  // one residual-stream tensor
  // The attention masks the blocks chosen by `pick` read: one over the whole cache for global
  // attention, one over the window for sliding-window attention. A device receives only those
  // its own blocks use; the host builds them all.
  const std::uint64_t mask_elem = e.flash_attention ? 2 : 4;
  auto mask_of = [&](auto pick) {
    bool global = false;
    bool window = false;
    for (std::uint32_t il = 0; il < blocks; ++il) {
      if (!pick(il) || p.attention.head_count_kv_per_block[il] == 0) continue;
      const bool swa =
          !p.attention.sliding_window_blocks.empty() && p.attention.sliding_window_blocks[il];
      (swa ? window : global) = true;
    }
    return ((global ? kv.cells : 0) + (window ? kv.swa_cells : 0)) * tokens * mask_elem;
  };
  const std::uint64_t mask = mask_of([](std::uint32_t) { return true; });
  const std::uint64_t logits = p.vocab_size * 4 * c.parallel;
  // llama-server reserves the graph for one output row per sequence (n_outputs_max = -np).
  const std::uint64_t output_rows = std::min<std::uint64_t>(tokens, std::max(1u, c.parallel));
  const bool quantized_kv =
      gguf::traits(c.cache_type_k).quantized || gguf::traits(c.cache_type_v).quantized;
  bool cpu_has_blocks = false;
  for (std::uint32_t il = 0; il < blocks; ++il) {
    if (where[il] < 0) cpu_has_blocks = true;
  }
  // Op offload: with layers left on the CPU, a local CUDA GPU runs their large matrix products,
  // so the host only prepares inputs, and the first GPU holds the weights it is handed: for MoE
  // blocks their largest expert tensor, for dense blocks about one hidden state (measured on
  // H200). llama.cpp offloads a product when its batch has at least 32 tokens, expert products
  // included (however few reach each expert); a block's feed-forward part has fewer rows where
  // only the output rows reach it (the last block).
  std::int32_t offload_gpu = -1;
  for (std::size_t d = 0; d < n_dev && offload_gpu < 0; ++d) {
    if (!layout.devices[d].remote && layout.devices[d].backend == Backend::kCuda)
      offload_gpu = static_cast<std::int32_t>(d);
  }
  const bool gpu_takes_cpu_products = offload_gpu >= 0 && tokens >= kOpOffloadMinBatch;
  const bool op_offload = cpu_has_blocks && gpu_takes_cpu_products;
  auto peak_of = [&](auto pick, bool cuda) {
    std::uint64_t peak = 0;
    for (std::uint32_t il = 0; il < blocks; ++il) {
      if (!pick(il)) continue;
      const bool swa =
          !p.attention.sliding_window_blocks.empty() && p.attention.sliding_window_blocks[il];
      const std::uint64_t heads_kv = p.attention.head_count_kv_per_block[il];
      const std::uint64_t per_cell =
          p.attention.key_length + (p.attention.is_mla() ? 0 : p.attention.value_length);
      const std::uint64_t dequant =
          cuda && quantized_kv && !p.attention.is_mla() ? 2 * heads_kv * per_cell : 0;
      const std::uint64_t ffn_tokens = il + 1 == blocks ? output_rows : tokens;
      const std::uint64_t cells = swa ? kv.swa_cells : kv.cells;
      // A CPU block whose products a GPU runs (op offload): its attention follows the query onto
      // that GPU, which receives copies of the layer's K and V views of the host cache (with MLA
      // both views are whole latent rows), and, for a quantized cache, f16 copies of them
      // (measured on H200 with ggml-alloc's debug output).
      CopiedInputs copied;
      if (cuda && where[il] < 0 && heads_kv > 0 && !is_recurrent_layer(p, il)) {
        const std::uint64_t layer = kv_layer_bytes(p, c, kv, il, 1);
        copied.cache_bytes = p.attention.is_mla() ? 2 * layer : layer;
        if (quantized_kv && p.attention.is_mla()) {
          copied.cache_bytes += 2 * std::uint64_t{p.attention.kv_lora_rank} * cells * kv.streams;
          copied.f16_cache_bytes =
              2 * std::uint64_t{p.attention.key_length + p.attention.kv_lora_rank} * cells *
              kv.streams;
        }
      }
      if (cuda && where[il] < 0) {
        const LayerMemory& l = m.layers[il];
        const bool ffn_offloaded = ffn_tokens >= kOpOffloadMinBatch;
        if (ffn_offloaded && l.largest_expert_bytes > 0) {
          copied.stacked_weight_bytes = l.largest_expert_bytes;
        } else if (ffn_offloaded && l.ffn_gate_up_bytes > 0) {
          copied.gate_up_weight_bytes = l.ffn_gate_up_bytes;
          copied.down_weight_bytes = l.ffn_down_bytes;
          copied.attn_output_bytes = l.attn_output_bytes;
        } else {
          copied.stacked_weight_bytes = hidden;  // the feed-forward part stays on the CPU
        }
      }
      // (On CUDA, where the traces come from; a CPU-backed RPC server's measured buffer is 19 MiB
      // smaller than this would make it for qwen3 without flash attention.)
      const bool after_moe_here =
          cuda && where[il] >= 0 && il > 0 && pick(il - 1) && where[il - 1] == where[il] &&
          experts_at[il - 1] == where[il - 1] && routed_activation_bytes(p, il - 1, tokens) > 0;
      const std::uint64_t below = after_moe_here ? weighted_expert_outputs_bytes(p, tokens) : 0;
      peak = std::max(peak, block_activation_bytes(p, il, tokens, ffn_tokens, e.flash_attention,
                                                   cells, dequant * kv.streams, copied,
                                                   experts_at[il] == where[il], below));
    }
    return peak;
  };
  // Routed experts that live apart from their block run where they are, except that a local GPU's
  // op offload takes host-held ones when the block's feed-forward batch has at least 32 tokens
  // (and then receives the expert weights). The peak of those products on `runs_on` (-1 = the
  // host).
  auto routed_peak = [&](std::int32_t runs_on) {
    std::uint64_t peak = 0;
    for (std::uint32_t il = 0; il < blocks && !layout.experts.empty(); ++il) {
      if (experts_at[il] == where[il]) continue;
      const std::uint64_t ffn_tokens = il + 1 == blocks ? output_rows : tokens;
      const bool offloaded =
          experts_at[il] < 0 && offload_gpu >= 0 && ffn_tokens >= kOpOffloadMinBatch;
      if ((offloaded ? offload_gpu : experts_at[il]) != runs_on) continue;
      // Where the GPU also runs whole CPU blocks, their attention (first in the graph) leaves
      // the mask high and every later feed-forward part stacks above it as in a CPU block
      // (bench/data/cuda-alloc-trace, qwen3_ngl3_cmoe4).
      const std::uint64_t weight = offloaded ? m.layers[il].largest_expert_bytes : 0;
      peak = std::max(peak, offloaded && !op_offload
                                ? routed_copy_bytes(p, il, ffn_tokens, weight)
                                : routed_activation_bytes(p, il, ffn_tokens) + weight);
    }
    return peak;
  };
  bool first_with_blocks = true;
  for (std::size_t d = 0; d < n_dev; ++d) {
    DeviceUsage& u = e.devices[d];
    std::uint64_t bytes = 0;
    if (u.first_block >= 0) {
      const bool cuda = layout.devices[d].backend == Backend::kCuda;
      // The GPU that runs the CPU layers' products sizes its buffer for those blocks too.
      const bool runs_cpu_blocks = op_offload && static_cast<std::int32_t>(d) == offload_gpu;
      auto on_device = [&](std::uint32_t il) {
        return where[il] == static_cast<std::int32_t>(d) || (runs_cpu_blocks && where[il] < 0);
      };
      const std::uint64_t device_mask = mask_of(on_device);
      bytes = std::max(peak_of(on_device, cuda), routed_peak(static_cast<std::int32_t>(d))) +
              3 * hidden + device_mask;
      // When the block before this device's first one has its experts in host RAM (a CPU
      // block, or another device's block with moved experts), that block's tail (weighting and
      // summing its experts' outputs) runs here, on a copy of its down projection's output;
      // not where a local GPU takes host experts (op offload: the tail stays there).
      const auto before = static_cast<std::uint32_t>(u.first_block);
      if (!gpu_takes_cpu_products && before > 0 && experts_at[before - 1] < 0 &&
          routed_activation_bytes(p, before - 1, tokens) > 0) {
        bytes += weighted_expert_outputs_bytes(p, tokens);
      }
      if (e.pipeline_parallel) {
        // Four copies of every input that crosses into the device; the first device also keeps
        // one more hidden state (measured on CPU-backed RPC and CUDA).
        bytes += (kPipelineCopies - 1) * (hidden + device_mask) + (first_with_blocks ? hidden : 0);
      }
      first_with_blocks = false;
    } else if (const std::uint64_t routed = routed_peak(static_cast<std::int32_t>(d)); routed > 0) {
      // A device that holds only other blocks' experts (an -ot rule naming it) runs their
      // products on copies of the normed inputs it receives (measured on CPU-backed RPC: the
      // products plus two hidden states).
      bytes = routed + 2 * hidden;
    }
    if (u.has_output) bytes += logits;
    u.compute_bytes = bytes;
  }
  if (op_offload) {
    DeviceUsage& g = e.devices[static_cast<std::size_t>(offload_gpu)];
    if (g.first_block < 0) {
      g.compute_bytes +=
          peak_of([&](std::uint32_t il) { return where[il] < 0; }, true) + 3 * hidden + mask;
    }
  }
  const std::uint64_t host_routed = routed_peak(-1);
  if (op_offload) {
    e.host.compute_bytes = 2 * hidden + mask + host_routed;
  } else if (cpu_has_blocks || n_dev == 0 || e.offloaded_layers == 0) {
    e.host.compute_bytes =
        std::max(peak_of([&](std::uint32_t il) { return where[il] < 0; }, false), host_routed) +
        4 * hidden + mask;
  } else {
    e.host.compute_bytes = 2 * hidden + mask + host_routed;
    if (e.pipeline_parallel) e.host.compute_bytes += (kPipelineCopies - 1) * mask;
    // Without flash attention the host also keeps a half-precision copy of the hidden state
    // (measured: +4 MiB for llama3, +2 MiB for qwen3 at 512 tokens).
    if (!e.flash_attention) e.host.compute_bytes += hidden / 2;
  }
  if (output_device < 0) e.host.compute_bytes += logits;
  e.host.output_bytes = logits;

  // ---- Totals ----
  e.fits = true;
  for (std::size_t d = 0; d < n_dev; ++d) {
    DeviceUsage& u = e.devices[d];
    u.runtime_bytes = layout.devices[d].runtime_bytes;
    u.total_bytes = u.weights_bytes + u.kv_bytes + u.compute_bytes + u.runtime_bytes;
    u.fits = u.total_bytes <= u.free_bytes;
    e.fits = e.fits && u.fits;
  }
  // Mapped weights occupy page cache as they are read; copies occupy their buffers.
  const std::uint64_t host_weights = c.mmap ? e.host.weights_bytes : e.host.copied_bytes;
  e.host.total_bytes = host_weights + e.host.kv_bytes + e.host.compute_bytes + e.host.output_bytes;
  return e;
}

}  // namespace ggfleet::estimate
