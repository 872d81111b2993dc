#include "perf/perf.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace ggfleet::perf {
namespace {

constexpr double kActivationBytes = 4;  // f32 hidden state per value
using estimate::kOpOffloadMinBatch;     // llama.cpp offloads CPU matmuls from this batch
// A worker to itself (an rpc-server on the main's own host): loopback TCP.
constexpr cluster::Link kLoopback{20e9, 10e-6, 1};

struct LayerCost {
  double active_bytes = 0;          // weights read per token (routed experts: only the used ones)
  double all_bytes = 0;             // weights in the layer
  double expert_bytes = 0;          // of which routed experts
  double active_params = 0;         // parameters multiplied per token
  double expert_active_bytes = 0;   // of active_bytes: the routed experts a token uses
  double expert_active_params = 0;  // of active_params: theirs
  double kv_bytes_per_token = 0;
  // active_bytes and expert_active_bytes weighted by their types' dequantization cost
  // (dequant_factor): what the read time is proportional to.
  double active_read_bytes = 0;
  double expert_active_read_bytes = 0;
};

// Time per byte of `bytes`, of which `super_block` and `codebook` bytes are of the slower types,
// relative to plain types (1 when there are no bytes).
double dequant_factor(double bytes, double super_block, double codebook, const Constants& c) {
  if (bytes <= 0) return 1.0;
  return 1.0 +
         (super_block * (c.kquant_read_factor - 1.0) + codebook * (c.codebook_read_factor - 1.0)) /
             bytes;
}

// The model-wide dequantization factor (gguf::dequant_cost of every tensor's bytes).
double read_factor(const model::Profile& p, const Constants& c) {
  double super_block = 0, codebook = 0;
  for (const auto& [type, bytes] : p.bytes_by_type) {
    const gguf::DequantCost cost = gguf::dequant_cost(type);
    if (cost == gguf::DequantCost::kSuperBlock) super_block += static_cast<double>(bytes);
    if (cost == gguf::DequantCost::kCodebook) codebook += static_cast<double>(bytes);
  }
  return dequant_factor(static_cast<double>(p.tensor_bytes), super_block, codebook, c);
}

// Per block: the time-weighted bytes a token reads, routed experts apart.
struct BlockRead {
  double read_bytes = 0;         // everything a token reads (routed experts: the used share)
  double expert_read_bytes = 0;  // of which the routed experts
};
BlockRead block_read(const model::BlockBytes& b, double used_fraction, const Constants& c) {
  const auto rest = static_cast<double>(b.total_bytes - b.expert_bytes);
  const double rest_factor =
      dequant_factor(rest, static_cast<double>(b.super_block_bytes - b.expert_super_block_bytes),
                     static_cast<double>(b.codebook_bytes - b.expert_codebook_bytes), c);
  const auto experts = static_cast<double>(b.expert_bytes);
  const double expert_factor =
      dequant_factor(experts, static_cast<double>(b.expert_super_block_bytes),
                     static_cast<double>(b.expert_codebook_bytes), c);
  const double expert_read = used_fraction * experts * expert_factor;
  return {rest * rest_factor + expert_read, expert_read};
}

// Per layer 0..blocks (blocks = the output head) of the model.
std::vector<LayerCost> layer_costs(const estimate::ModelMemory& m, const estimate::Estimate& e,
                                   const Constants& c) {
  const model::Profile& p = m.profile;
  std::vector<LayerCost> out(p.blocks + 1);
  const double used_fraction =
      p.experts.count > 0 ? static_cast<double>(p.experts.used) / p.experts.count : 1.0;
  for (std::uint32_t i = 0; i < p.blocks && i < p.block_bytes.size(); ++i) {
    const model::BlockBytes& b = p.block_bytes[i];
    const double active = static_cast<double>(b.total_bytes - b.expert_bytes) +
                          used_fraction * static_cast<double>(b.expert_bytes);
    out[i].all_bytes = static_cast<double>(b.total_bytes);
    out[i].expert_bytes = static_cast<double>(b.expert_bytes);
    out[i].active_bytes = active;
    out[i].active_params = b.total_bytes == 0 ? 0
                                              : static_cast<double>(b.parameters) * active /
                                                    static_cast<double>(b.total_bytes);
    out[i].expert_active_bytes = used_fraction * static_cast<double>(b.expert_bytes);
    out[i].expert_active_params =
        active > 0 ? out[i].active_params * out[i].expert_active_bytes / active : 0.0;
    const BlockRead r = block_read(b, used_fraction, c);
    out[i].active_read_bytes = r.read_bytes;
    out[i].expert_active_read_bytes = r.expert_read_bytes;
  }
  LayerCost& head = out[p.blocks];
  const double head_bytes = static_cast<double>(
      (p.output_tied ? p.token_embedding_bytes : p.output_bytes) + p.output_norm_bytes);
  head.all_bytes = head.active_bytes = head_bytes;
  head.active_read_bytes = head_bytes * read_factor(p, c);
  head.active_params = static_cast<double>(p.embedding_length * p.vocab_size);
  // KV bytes per cached token, spread evenly over the blocks that hold them.
  double kv_total = static_cast<double>(e.host.kv_bytes);
  for (const estimate::DeviceUsage& d : e.devices) kv_total += static_cast<double>(d.kv_bytes);
  const double cells = static_cast<double>(e.kv_cells_per_stream) * std::max(1u, e.kv_streams);
  if (cells > 0 && p.blocks > 0) {
    for (std::uint32_t i = 0; i < p.blocks; ++i)
      out[i].kv_bytes_per_token = kv_total / cells / p.blocks;
  }
  return out;
}

// Attention FLOPs of one block for `n` new tokens after `depth` cached ones (QK^T and AV).
double attention_flops(const model::Profile& p, double n, double depth) {
  const double per_pair =
      2.0 * p.attention.head_count *
      (p.attention.is_mla() ? p.attention.key_length_mla + p.attention.value_length_mla
                            : p.attention.key_length + p.attention.value_length);
  return per_pair * n * (depth + n / 2.0);
}

// The main's CPU bandwidth for its layers as the model has it, before the learned factor.
double cpu_bandwidth(const cluster::Worker& w, std::uint32_t threads, const Constants& c) {
  const double thread_bw = threads * c.cpu_thread_bandwidth_bytes_per_s;
  return 1.0 / (1.0 / thread_bw + 1.0 / w.cpu.memory_bandwidth_bytes_per_s);
}

std::string link_factor(const std::string& a, const std::string& b) {
  return a < b ? "link:" + a + "|" + b : "link:" + b + "|" + a;
}

struct Segment {
  std::int32_t device = -1;  // layout device, -1 = the main's CPU
  std::uint32_t first = 0;   // layers [first, last]
  std::uint32_t last = 0;
};

Prediction run(const estimate::ModelMemory& m, const estimate::Layout& layout,
               const estimate::Estimate& e, const Scenario& s, const Constants& c, bool detail) {
  if (s.cluster == nullptr) throw PlacementError("no cluster given");
  const cluster::Cluster& cl = *s.cluster;
  const cluster::Worker* main = cl.find(s.main_worker);
  if (main == nullptr)
    throw PlacementError("main worker '" + s.main_worker + "' is not in the cluster");
  if (s.places.size() != layout.devices.size()) {
    throw PlacementError(std::to_string(layout.devices.size()) + " devices but " +
                         std::to_string(s.places.size()) + " places");
  }
  std::vector<const cluster::Worker*> workers;
  std::vector<const cluster::Gpu*> gpus;
  {
    std::set<std::pair<std::string, std::uint32_t>> seen;
    for (const DevicePlace& place : s.places) {
      const cluster::Worker* w = cl.find(place.worker);
      if (w == nullptr) throw PlacementError("unknown worker '" + place.worker + "'");
      if (place.gpu >= w->gpus.size()) {
        throw PlacementError("worker " + place.worker + " has no GPU " + std::to_string(place.gpu) +
                             " (it has " + std::to_string(w->gpus.size()) + ")");
      }
      if (!seen.insert({place.worker, place.gpu}).second) {
        throw PlacementError(place.worker + ":" + std::to_string(place.gpu) + " is listed twice");
      }
      workers.push_back(w);
      gpus.push_back(&w->gpus[place.gpu]);
    }
  }
  const model::Profile& p = m.profile;
  const std::uint32_t blocks = p.blocks;
  const std::vector<LayerCost> cost = layer_costs(m, e, c);
  std::vector<std::int32_t> owner(blocks + 1, -1);
  for (std::size_t d = 0; d < e.devices.size(); ++d) {
    const estimate::DeviceUsage& u = e.devices[d];
    if (u.first_block >= 0) {
      for (std::int32_t b = u.first_block; b <= u.last_block; ++b)
        owner[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(d);
    }
    if (u.has_output) owner[blocks] = static_cast<std::int32_t>(d);
  }
  std::vector<Segment> segments;
  for (std::uint32_t l = 0; l <= blocks; ++l) {
    if (!segments.empty() && segments.back().device == owner[l]) {
      segments.back().last = l;
    } else {
      segments.push_back({owner[l], l, l});
    }
  }
  const std::uint32_t threads = s.threads > 0 ? s.threads : std::max(1u, main->cpu.cores);
  // The main's first local GPU, which takes the CPU layers' matmuls in prompt processing.
  std::int32_t main_gpu = -1;
  for (std::size_t d = 0; d < s.places.size(); ++d) {
    if (s.places[d].worker == s.main_worker && !layout.devices[d].remote) {
      main_gpu = static_cast<std::int32_t>(d);
      break;
    }
  }
  const double width = static_cast<double>(p.embedding_length);
  const double depth = s.depth_tokens;
  const double n_prompt = std::max(1u, s.prompt_tokens);
  const double ubatch = std::min<double>(
      n_prompt, std::max(1u, std::min(layout.context.ubatch_tokens, layout.context.batch_tokens)));
  const double n_ubatches = std::ceil(n_prompt / ubatch);
  const double width_efficiency = width / (width + c.gpu_matmul_half_width);
  // A GPU's matrix products run faster the more rows (tokens) each has: efficiency
  // rows / (rows + half), relative to the 512-token micro-batch the rest of the calibration was
  // fitted at. Dense products have a micro-batch's rows; routed experts (grouped products, at a
  // fraction of the dense efficiency) only the tokens routed to each, ubatch x used / count on
  // average (H200, -ub 32..2048: bench/data/moe-batches).
  const double at_512 = 512.0 / (512.0 + c.gpu_matmul_half_rows);
  const double dense_efficiency = (ubatch / (ubatch + c.gpu_matmul_half_rows)) / at_512;
  // An expert that a micro-batch reaches gets at least one row.
  const double expert_rows =
      p.experts.count > 0 ? std::max(1.0, ubatch * p.experts.used / p.experts.count) : ubatch;
  const double expert_efficiency = c.gpu_expert_matmul_efficiency *
                                   (expert_rows / (expert_rows + c.gpu_expert_matmul_half_rows)) /
                                   at_512;
  auto gpu_matmul_s = [&](const cluster::Gpu& g, double dense_flops, double expert_flops) {
    return (dense_flops / dense_efficiency +
            (expert_flops > 0 ? expert_flops / expert_efficiency : 0.0)) /
           (g.fp16_flops * c.gpu_matmul_efficiency * width_efficiency);
  };
  // Op offload copies the CPU's weights to the GPU per micro-batch: from the mapped file (pageable
  // memory) at one rate, from llama.cpp's own pinned host buffers (--load-mode none next to a CUDA
  // GPU) at several times that.
  const double op_offload_bw = layout.context.mmap ? c.op_offload_bandwidth_bytes_per_s
                                                   : c.op_offload_pinned_bandwidth_bytes_per_s;
  // Share of a layer's routed experts that one micro-batch touches (random routing): llama.cpp's
  // op offload copies only the experts in use.
  const double expert_share =
      p.experts.count > 0
          ? 1.0 - std::pow(1.0 - static_cast<double>(p.experts.used) / p.experts.count, ubatch)
          : 1.0;

  Prediction out;
  const std::size_t n_dev = layout.devices.size();
  std::vector<PartTime> dev_parts(n_dev);
  PartTime cpu_part;
  cpu_part.worker = main->name;

  // Routed experts that live apart from their block (--n-cpu-moe, -ot): read and multiplied where
  // they are (moved_to[n_dev]: the main's CPU), with two changes of device per block when they
  // are on another GPU. Nothing is allocated for the usual layout without overrides (the planner
  // calls this in its loops).
  struct Moved {
    double read_bytes = 0, all_bytes = 0, params = 0;
    std::uint32_t blocks = 0;
  };
  std::vector<std::int32_t> experts_at;  // per block: where its moved experts are; -2 = not moved
  std::vector<Moved> moved_to;
  if (!layout.experts.empty()) {
    experts_at.assign(blocks, -2);
    moved_to.resize(n_dev + 1);
  }
  for (std::uint32_t l = 0; l < experts_at.size(); ++l) {
    const std::int32_t at = layout.experts[l];
    if (at == estimate::kExpertsWithBlock || at == owner[l] || cost[l].expert_bytes <= 0) continue;
    experts_at[l] = at;
    Moved& to = moved_to[at < 0 ? n_dev : static_cast<std::size_t>(at)];
    to.read_bytes += cost[l].expert_active_read_bytes;
    to.all_bytes += cost[l].expert_bytes * expert_share;
    to.params += cost[l].expert_active_params;
    ++to.blocks;
  }
  auto is_moved = [&](std::uint32_t l) { return l < experts_at.size() && experts_at[l] != -2; };
  const std::uint32_t host_expert_blocks = moved_to.empty() ? 0 : moved_to[n_dev].blocks;

  // Work per device: the layers it holds.
  for (const Segment& seg : segments) {
    double read = 0, all = 0, params = 0, expert_params = 0, attn = 0;
    for (std::uint32_t l = seg.first; l <= seg.last; ++l) {
      const bool moved = is_moved(l);
      read += cost[l].active_read_bytes - (moved ? cost[l].expert_active_read_bytes : 0.0) +
              cost[l].kv_bytes_per_token * depth;
      all += cost[l].all_bytes - cost[l].expert_bytes * (moved ? 1.0 : 1.0 - expert_share);
      if (l < blocks) {
        params += cost[l].active_params - cost[l].expert_active_params;
        if (!moved) expert_params += cost[l].expert_active_params;
        attn += attention_flops(p, ubatch, depth);
      }
    }
    const std::uint32_t layers = seg.last - seg.first + 1;
    // Prompt FLOPs per micro-batch: only the last token of a prompt needs the output head.
    const double dense_flops = 2.0 * params * ubatch + attn +
                               (seg.last == blocks ? 2.0 * cost[blocks].active_params : 0.0);
    const double expert_flops = 2.0 * expert_params * ubatch;
    const double flops = dense_flops + expert_flops;
    if (seg.device >= 0) {
      const auto d = static_cast<std::size_t>(seg.device);
      PartTime& part = dev_parts[d];
      const cluster::Gpu& g = *gpus[d];
      const double bw = g.memory_bandwidth_bytes_per_s * c.gpu_bandwidth_efficiency;
      const double read_s = read / bw;
      const double matmul_s = n_ubatches * gpu_matmul_s(g, dense_flops, expert_flops);
      part.layers += layers;
      part.read_bytes += read;
      part.bandwidth_bytes_per_s = bw / g.generation_time_factor;
      part.generation_s += read_s * g.generation_time_factor + layers * c.gpu_layer_s;
      part.prompt_s += matmul_s * g.prompt_time_factor + n_ubatches * layers * c.gpu_layer_prompt_s;
      part.scaled_generation_s += read_s;
      part.scaled_prompt_s += matmul_s;
      part.generation_factor = g.generation_time_factor;
      part.prompt_factor = g.prompt_time_factor;
    } else {
      const double bw = cpu_bandwidth(*main, threads, c);
      const double read_s = read / bw;
      cpu_part.layers += layers;
      cpu_part.read_bytes += read;
      cpu_part.bandwidth_bytes_per_s = bw / main->cpu.generation_time_factor;
      cpu_part.generation_s += read_s * main->cpu.generation_time_factor + layers * c.cpu_layer_s;
      double per_ubatch;
      if (main_gpu >= 0 && ubatch >= kOpOffloadMinBatch) {
        const cluster::Gpu& g = *gpus[static_cast<std::size_t>(main_gpu)];
        per_ubatch = all / op_offload_bw + gpu_matmul_s(g, dense_flops, expert_flops);
      } else {
        per_ubatch = flops / (threads * c.cpu_thread_flops);
      }
      cpu_part.prompt_s +=
          n_ubatches * (per_ubatch * main->cpu.prompt_time_factor + layers * c.cpu_layer_s);
      cpu_part.scaled_generation_s += read_s;
      cpu_part.scaled_prompt_s += n_ubatches * per_ubatch;
      cpu_part.generation_factor = main->cpu.generation_time_factor;
      cpu_part.prompt_factor = main->cpu.prompt_time_factor;
    }
  }

  // Moved experts: a device reads its share at its bandwidth; the main's CPU at its own, and for
  // prompts either its threads multiply them or its first local GPU does, on copies of the
  // experts a micro-batch uses, when the micro-batch has enough tokens (llama.cpp's op offload
  // counts the tokens of the batch, not those per expert: bench/data/moe-batches shows qwen3's
  // CPU experts taken by the GPU at 16 tokens per expert).
  const bool experts_offload = main_gpu >= 0 && ubatch >= kOpOffloadMinBatch;
  for (std::size_t t = 0; t < moved_to.size(); ++t) {
    const Moved& to = moved_to[t];
    if (to.blocks == 0) continue;
    const double flops = 2.0 * to.params * ubatch;
    if (t < n_dev) {
      PartTime& part = dev_parts[t];
      const cluster::Gpu& g = *gpus[t];
      const double read_s =
          to.read_bytes / (g.memory_bandwidth_bytes_per_s * c.gpu_bandwidth_efficiency);
      const double matmul_s = n_ubatches * gpu_matmul_s(g, 0, flops);
      part.read_bytes += to.read_bytes;
      part.generation_s += read_s * g.generation_time_factor;
      part.prompt_s += matmul_s * g.prompt_time_factor;
      part.scaled_generation_s += read_s;
      part.scaled_prompt_s += matmul_s;
      continue;
    }
    const double bw = cpu_bandwidth(*main, threads, c);
    const double read_s = to.read_bytes / bw;
    double per_ubatch;
    if (experts_offload) {
      const cluster::Gpu& g = *gpus[static_cast<std::size_t>(main_gpu)];
      per_ubatch = to.all_bytes / op_offload_bw + gpu_matmul_s(g, 0, flops);
    } else {
      per_ubatch = flops / (threads * c.cpu_thread_flops);
    }
    cpu_part.read_bytes += to.read_bytes;
    cpu_part.bandwidth_bytes_per_s = bw / main->cpu.generation_time_factor;
    cpu_part.generation_s += read_s * main->cpu.generation_time_factor;
    cpu_part.prompt_s += n_ubatches * per_ubatch * main->cpu.prompt_time_factor;
    cpu_part.scaled_generation_s += read_s;
    cpu_part.scaled_prompt_s += n_ubatches * per_ubatch;
    cpu_part.generation_factor = main->cpu.generation_time_factor;
    cpu_part.prompt_factor = main->cpu.prompt_time_factor;
  }

  // Hops: every change of device along the layers; runs on RPC devices pay a call each.
  double hop_gen = 0, hop_prompt = 0, split_gen = 0;
  std::vector<PartTime> hop_parts;
  const double hidden_bytes = width * kActivationBytes;
  const double logits_bytes = static_cast<double>(p.vocab_size) * kActivationBytes;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const Segment& seg = segments[i];
    if (i > 0) {
      split_gen += c.split_s;
      hop_gen += c.split_s;
      hop_prompt += n_ubatches * c.split_s;
    }
    if (seg.device < 0) continue;
    // A block whose experts live elsewhere leaves its device and comes back: to another GPU at
    // the cost of two device changes; to the main's CPU at no cost beyond the experts' own (the
    // H200 runs of bench/data/expert-offload: fitting it gives nothing measurable).
    std::uint32_t moved = 0, moved_to_gpu = 0;
    for (std::uint32_t l = seg.first; l <= seg.last; ++l) {
      moved += is_moved(l);
      moved_to_gpu += is_moved(l) && experts_at[l] >= 0;
    }
    split_gen += 2 * moved_to_gpu * c.split_s;
    hop_gen += 2 * moved_to_gpu * c.split_s;
    hop_prompt += n_ubatches * 2 * moved_to_gpu * c.split_s;
    const auto d = static_cast<std::size_t>(seg.device);
    if (!layout.devices[d].remote) continue;
    const bool loopback = s.places[d].worker == s.main_worker;
    const cluster::Link link = loopback ? kLoopback : cl.link(s.main_worker, s.places[d].worker);
    const double transfer_bw =
        1.0 / (1.0 / link.bandwidth_bytes_per_s + 1.0 / c.rpc_transfer_bandwidth_bytes_per_s);
    const std::uint32_t layers = seg.last - seg.first + 1;
    const bool has_output = seg.last == blocks;
    const double call_s = 2 * link.latency_s + c.rpc_call_s;
    const double fixed = call_s * link.call_time_factor + layers * c.rpc_layer_s;
    // In: the hidden state from the previous device (or the embeddings from the host).
    // Out: the hidden state for the next device, or the logits of the outputs.
    const double gen_bytes = hidden_bytes + (has_output ? logits_bytes : hidden_bytes);
    const double prompt_bytes =
        hidden_bytes * ubatch + (has_output ? logits_bytes : hidden_bytes * ubatch);
    // Each block with its experts elsewhere cuts the run: one more call, the block's feed-forward
    // input out and its experts' outputs (one hidden state per expert used) back.
    const double expert_bytes = hidden_bytes * (1.0 + p.experts.used);
    PartTime hop;
    hop.worker = s.places[d].worker;
    hop.layers = layers;
    hop.generation_s = fixed + gen_bytes / transfer_bw +
                       moved * (call_s * link.call_time_factor + expert_bytes / transfer_bw);
    hop.prompt_s = n_ubatches *
                   (fixed + prompt_bytes / transfer_bw +
                    moved * (call_s * link.call_time_factor + expert_bytes * ubatch / transfer_bw));
    if (!loopback) {
      if (detail) hop.factor = link_factor(s.main_worker, s.places[d].worker);
      hop.scaled_generation_s = call_s * (1 + moved);
      hop.scaled_prompt_s = n_ubatches * call_s * (1 + moved);
      hop.generation_factor = hop.prompt_factor = link.call_time_factor;
    }
    hop_gen += hop.generation_s;
    hop_prompt += hop.prompt_s;
    if (detail) {
      hop.what = "RPC calls to " + layout.devices[d].name + " on " + hop.worker + " (round trip " +
                 std::to_string(2 * link.latency_s * 1e3).substr(0, 5) + " ms)";
      hop_parts.push_back(std::move(hop));
    }
  }

  double gen_s = c.token_s + hop_gen + cpu_part.generation_s;
  double prompt_s = n_ubatches * c.token_s + hop_prompt + cpu_part.prompt_s;
  for (const PartTime& part : dev_parts) {
    gen_s += part.generation_s;
    prompt_s += part.prompt_s;
  }
  out.generation_token_s = gen_s;
  out.prompt_s = prompt_s;
  out.generation_tokens_per_s = 1.0 / gen_s;
  out.prompt_tokens_per_s = n_prompt / prompt_s;
  out.time_to_first_token_s = prompt_s + gen_s;
  for (std::size_t d = 0; d < n_dev; ++d) {
    if (layout.devices[d].remote && s.places[d].worker != s.main_worker) {
      out.rpc_load_bytes += e.devices[d].weights_bytes;
    }
  }
  out.startup_s = static_cast<double>(out.rpc_load_bytes) / c.rpc_load_bandwidth_bytes_per_s;
  if (!detail) return out;

  double worst = -1;
  for (std::size_t d = 0; d < n_dev; ++d) {
    PartTime& part = dev_parts[d];
    part.worker = s.places[d].worker;
    part.what = layout.devices[d].name + " (" + s.places[d].worker + " GPU " +
                std::to_string(s.places[d].gpu) + ", " + gpus[d]->name + ")";
    if (part.layers > 0) part.factor = "gpu:" + gpus[d]->name;
    out.parts.push_back(part);
  }
  if (cpu_part.layers > 0 || host_expert_blocks > 0) {
    cpu_part.what =
        "CPU of " + main->name + " (" + std::to_string(threads) + " threads" +
        (host_expert_blocks > 0 ? ", experts of " + std::to_string(host_expert_blocks) + " blocks"
                                : std::string()) +
        ")";
    cpu_part.factor = "cpu:" + main->name;
    out.parts.push_back(cpu_part);
  }
  for (PartTime& hop : hop_parts) out.parts.push_back(std::move(hop));
  PartTime fixed;
  fixed.what = "per-token fixed cost and local device changes";
  fixed.worker = main->name;
  fixed.generation_s = c.token_s + split_gen;
  fixed.prompt_s = n_ubatches * (c.token_s + split_gen);
  out.parts.push_back(fixed);
  for (const PartTime& part : out.parts) {
    if (part.generation_s > worst) {
      worst = part.generation_s;
      out.bottleneck = part.what;
    }
  }
  return out;
}

}  // namespace

Prediction predict(const estimate::ModelMemory& model, const estimate::Layout& layout,
                   const estimate::Estimate& e, const Scenario& scenario,
                   const Constants& constants) {
  return run(model, layout, e, scenario, constants, true);
}

LayerCosts::LayerCosts(const model::Profile& p, const Constants& c) : c_(c) {
  const double used_fraction =
      p.experts.count > 0 ? static_cast<double>(p.experts.used) / p.experts.count : 1.0;
  double sum = 0;
  for (const model::BlockBytes& b : p.block_bytes) {
    const BlockRead r = block_read(b, used_fraction, c);
    sum += r.read_bytes;
    block_read_bytes_.push_back(r.read_bytes);
    block_expert_read_bytes_.push_back(r.expert_read_bytes);
  }
  block_bytes_ = p.block_bytes.empty() ? 0 : sum / static_cast<double>(p.block_bytes.size());
  head_bytes_ = read_factor(p, c) *
                static_cast<double>((p.output_tied ? p.token_embedding_bytes : p.output_bytes) +
                                    p.output_norm_bytes);
  logits_bytes_ = static_cast<double>(p.vocab_size) * kActivationBytes;
}

double LayerCosts::head_gpu_s(const cluster::Gpu& gpu, bool remote) const {
  return head_bytes_ * gpu_byte_s(gpu) + c_.gpu_layer_s +
         (remote ? c_.rpc_layer_s + logits_bytes_ / c_.rpc_transfer_bandwidth_bytes_per_s : 0.0);
}

double LayerCosts::gpu_byte_s(const cluster::Gpu& gpu) const {
  return gpu.generation_time_factor /
         (gpu.memory_bandwidth_bytes_per_s * c_.gpu_bandwidth_efficiency);
}

double LayerCosts::gpu_layer_fixed_s(bool remote) const {
  return c_.gpu_layer_s + (remote ? c_.rpc_layer_s : 0.0);
}

double LayerCosts::cpu_byte_s(const cluster::Worker& main, std::uint32_t threads) const {
  return main.cpu.generation_time_factor /
         cpu_bandwidth(main, threads > 0 ? threads : std::max(1u, main.cpu.cores), c_);
}

double LayerCosts::cpu_layer_fixed_s() const {
  return c_.cpu_layer_s;
}

double LayerCosts::head_cpu_s(const cluster::Worker& main, std::uint32_t threads) const {
  return head_bytes_ * cpu_byte_s(main, threads) + c_.cpu_layer_s;
}

double LayerCosts::gpu_block_s(const cluster::Gpu& gpu, bool remote) const {
  return block_bytes_ * gpu_byte_s(gpu) + c_.gpu_layer_s + (remote ? c_.rpc_layer_s : 0.0);
}

double LayerCosts::cpu_block_s(const cluster::Worker& main, std::uint32_t threads) const {
  return block_bytes_ * cpu_byte_s(main, threads) + c_.cpu_layer_s;
}

double LayerCosts::rpc_call_s(const cluster::Link& link) const {
  return (2 * link.latency_s + c_.rpc_call_s) * link.call_time_factor;
}

std::pair<double, double> predict_rates(const estimate::ModelMemory& model,
                                        const estimate::Layout& layout, const estimate::Estimate& e,
                                        const Scenario& scenario, const Constants& constants) {
  const Prediction p = run(model, layout, e, scenario, constants, false);
  return {p.generation_tokens_per_s, p.prompt_tokens_per_s};
}

}  // namespace ggfleet::perf
