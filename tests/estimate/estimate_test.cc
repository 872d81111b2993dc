// The memory estimate: layer assignment, KV cache sizes and weights as the pinned llama.cpp
// allocates them (numbers measured from its logs), option validation and the fit helpers.
#include <gtest/gtest.h>

#include "estimate/estimate.h"
#include "estimate/experts.h"
#include "estimate/fit.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"
#include "test_util.h"

namespace ggfleet::estimate {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

ModelMemory preset(const std::string& name, std::uint32_t blocks, const test::TempDir& dir) {
  model::SynthOptions o;
  o.blocks = blocks;
  const auto path = model::synth(name, dir.path().string(), o).front();
  const gguf::Model m = gguf::Model::open(path);
  return ModelMemory::from(m, model::profile(m));
}

Device rpc(const std::string& name, std::uint64_t free_bytes = 24ull << 30) {
  return {name, Backend::kCpu, true, free_bytes};
}

TEST(AssignLayers, LlamaCppExamples) {
  using V = std::vector<std::int32_t>;
  // 2 blocks + output on two equal devices: blocks on the first, the output on the second.
  EXPECT_EQ(assign_layers(2, -1, {1, 1}), (V{0, 0, 1}));
  EXPECT_EQ(assign_layers(2, -1, {3, 1}), (V{0, 0, 0}));
  EXPECT_EQ(assign_layers(2, -1, {1, 3}), (V{0, 1, 1}));
  // -ngl 2: the CPU keeps the first block.
  EXPECT_EQ(assign_layers(2, 2, {1, 1}), (V{-1, 0, 1}));
  // -ngl 1 offloads only the output layer.
  EXPECT_EQ(assign_layers(2, 1, {1}), (V{-1, -1, 0}));
  EXPECT_EQ(assign_layers(2, 0, {1}), (V{-1, -1, -1}));
  // 32 blocks + output, -ts 1,1: blocks 0..16 and 17..31 + output.
  const V big = assign_layers(32, -1, {1, 1});
  for (int i = 0; i <= 16; ++i) EXPECT_EQ(big[i], 0) << i;
  for (int i = 17; i <= 32; ++i) EXPECT_EQ(big[i], 1) << i;
}

TEST(Estimate, KvCacheMatchesLlamaCpp) {
  test::TempDir dir;
  const ModelMemory llama = preset("llama3-8b-q4_0", 2, dir);
  Layout l;
  l.devices = {rpc("RPC0")};
  l.context.context_tokens = 512;
  EXPECT_DOUBLE_EQ(static_cast<double>(estimate(llama, l).devices[0].kv_bytes) / kMiB, 4.0);
  l.context.cache_type_k = l.context.cache_type_v = gguf::GgmlType::Q8_0;
  EXPECT_DOUBLE_EQ(static_cast<double>(estimate(llama, l).devices[0].kv_bytes) / kMiB, 2.125);
  l.context.cache_type_k = l.context.cache_type_v = gguf::GgmlType::F16;
  l.context.context_tokens = 5000;  // -c 5000 -np 3: 3 streams of 1792 cells
  l.context.parallel = 3;
  const Estimate e = estimate(llama, l);
  EXPECT_EQ(e.kv_cells_per_stream, 1792u);
  EXPECT_EQ(e.kv_streams, 3u);
  EXPECT_DOUBLE_EQ(static_cast<double>(e.devices[0].kv_bytes) / kMiB, 42.0);

  // MLA keeps a 576-wide latent K and no V: 4 blocks at 8192 cells.
  const ModelMemory ds = preset("deepseek-r1-ud-iq2_xxs", 4, dir);
  Layout d;
  d.devices = {rpc("RPC0")};
  d.context.context_tokens = 8192;
  EXPECT_DOUBLE_EQ(static_cast<double>(estimate(ds, d).devices[0].kv_bytes) / kMiB, 36.0);
  d.context.cache_type_k = d.context.cache_type_v = gguf::GgmlType::Q8_0;
  EXPECT_DOUBLE_EQ(static_cast<double>(estimate(ds, d).devices[0].kv_bytes) / kMiB, 19.125);

  // Gemma 3 with 4 blocks: all sliding-window, min(8192, 1024 + 512) padded = 1536 cells.
  const ModelMemory gemma = preset("gemma3-27b-q4_k_m", 4, dir);
  Layout g;
  g.devices = {rpc("RPC0")};
  g.context.context_tokens = 8192;
  EXPECT_DOUBLE_EQ(static_cast<double>(estimate(gemma, g).devices[0].kv_bytes) / kMiB, 48.0);
  g.context.swa_full = true;
  EXPECT_DOUBLE_EQ(static_cast<double>(estimate(gemma, g).devices[0].kv_bytes) / kMiB, 256.0);
}

TEST(Estimate, WeightsAndTiedOutputMatchLlamaCpp) {
  test::TempDir dir;
  // Measured with two CPU-backed RPC servers: gemma3 (4 blocks, tied output), default split.
  const ModelMemory gemma = preset("gemma3-27b-q4_k_m", 4, dir);
  Layout l;
  l.devices = {rpc("RPC0"), rpc("RPC1")};
  l.context.context_tokens = 4096;
  const Estimate e = estimate(gemma, l);
  EXPECT_NEAR(static_cast<double>(e.host.mapped_bytes) / kMiB, 1102.77, 0.005);
  EXPECT_NEAR(static_cast<double>(e.devices[0].weights_bytes) / kMiB, 695.83, 0.005);
  EXPECT_NEAR(static_cast<double>(e.devices[1].weights_bytes) / kMiB, 1355.49,
              0.005);  // includes the copy
  EXPECT_TRUE(e.pipeline_parallel);
  EXPECT_EQ(e.devices[0].first_block, 0);
  EXPECT_EQ(e.devices[0].last_block, 2);
  EXPECT_TRUE(e.devices[1].has_output);
  EXPECT_NEAR(static_cast<double>(e.host.output_bytes) / kMiB, 1.0, 0.01);
}

TEST(Estimate, ImpossibleOptionsAreErrors) {
  test::TempDir dir;
  const ModelMemory llama = preset("llama3-8b-q4_0", 2, dir);
  Layout l;
  l.devices = {rpc("RPC0"), rpc("RPC1")};
  l.context.cache_type_v = gguf::GgmlType::Q4_0;
  l.context.flash_attention = FlashAttention::kOff;
  EXPECT_THROW(estimate(llama, l), LayoutError);
  l.context.flash_attention = FlashAttention::kOn;
  EXPECT_NO_THROW(estimate(llama, l));
  l.tensor_split = {1, 2, 3};
  EXPECT_THROW(estimate(llama, l), LayoutError);
  l.tensor_split = {1, -1};
  EXPECT_THROW(estimate(llama, l), LayoutError);
  l.tensor_split = {};
  l.context.parallel = 0;
  EXPECT_THROW(estimate(llama, l), LayoutError);
  const ModelMemory ds = preset("deepseek-r1-ud-iq2_xxs", 4, dir);
  Layout d;
  d.devices = {rpc("RPC0")};
  d.context.cache_type_k = gguf::GgmlType::Q8_0;  // V stays f16: MLA needs one type
  EXPECT_THROW(estimate(ds, d), LayoutError);
}

TEST(Experts, LlamaCppOptionsPlaceWholeBlocksOfExperts) {
  test::TempDir dir;
  const ModelMemory qwen = preset("qwen3-30b-a3b-q4_k_m", 4, dir);
  Layout l;
  l.devices = {rpc("RPC0"), rpc("RPC1")};
  using V = std::vector<std::int32_t>;
  constexpr std::int32_t kWith = kExpertsWithBlock;
  constexpr std::int32_t kHost = kExpertsOnHost;
  place_experts(qwen, {}, l);
  EXPECT_TRUE(l.experts.empty());  // no overrides at all
  place_experts(qwen, {false, 2, {}}, l);
  EXPECT_EQ(l.experts, (V{kHost, kHost, kWith, kWith}));
  place_experts(qwen, {true, 0, {}}, l);
  EXPECT_EQ(l.experts, (V{kHost, kHost, kHost, kHost}));
  // -ot rules come first; llama.cpp's common forms.
  place_experts(qwen, {false, 1, {R"(blk\.(2|3)\.ffn_.*_exps\.=RPC0)"}}, l);
  EXPECT_EQ(l.experts, (V{kHost, kWith, 0, 0}));
  place_experts(qwen, {false, 0, {"exps=CPU"}}, l);
  EXPECT_EQ(l.experts, (V{kHost, kHost, kHost, kHost}));
  place_experts(qwen, {false, 0, {R"(blk\.3\.ffn_(up|down|gate)_exps=RPC1,exps=CPU)"}}, l);
  EXPECT_EQ(l.experts, (V{kHost, kHost, kHost, 1}));

  auto error = [&](const ExpertOverrides& o) {
    try {
      place_experts(qwen, o, l);
    } catch (const LayoutError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error({false, 0, {"exps"}}).find("is not PATTERN=BUFFER"), std::string::npos);
  EXPECT_NE(error({false, 0, {"exps(=CPU"}}).find("bad pattern"), std::string::npos);
  EXPECT_NE(
      error({false, 0, {"exps=CUDA0"}}).find("no buffer CUDA0 (this layout has CPU, RPC0, RPC1)"),
      std::string::npos);
  EXPECT_NE(error({false, 0, {R"(blk\.0\.attn_q=CPU)"}}).find("would move blk.0.attn_q.weight"),
            std::string::npos);
  EXPECT_NE(error({false, 0, {R"(ffn_up_exps=CPU)"}}).find("in different places"),
            std::string::npos);
}

// What the planner writes on llama-server's command line reads back to the same placement:
// --n-cpu-moe for a prefix of blocks, one -ot rule otherwise.
TEST(Experts, PlannedHostExpertsRoundTripThroughLlamaCppOptions) {
  test::TempDir dir;
  const ModelMemory qwen = preset("qwen3-30b-a3b-q4_k_m", 6, dir);
  for (const std::vector<std::uint32_t>& blocks :
       {std::vector<std::uint32_t>{0}, {0, 1, 2}, {1}, {0, 2, 5}, {3, 4, 5}}) {
    Layout planned;
    planned.devices = {rpc("RPC0")};
    planned.experts.assign(qwen.blocks(), kExpertsWithBlock);
    for (std::uint32_t b : blocks) planned.experts[b] = kExpertsOnHost;
    EXPECT_EQ(host_expert_blocks(planned), blocks);
    const std::vector<std::string> args = host_expert_args(blocks);
    ASSERT_EQ(args.size(), 2u);
    const bool prefix = blocks.back() + 1 == blocks.size();
    EXPECT_EQ(args[0], prefix ? "--n-cpu-moe" : "-ot");
    ExpertOverrides o;
    if (prefix) {
      o.n_cpu_moe = static_cast<std::uint32_t>(std::stoul(args[1]));
    } else {
      o.rules = {args[1]};
    }
    Layout read_back;
    read_back.devices = planned.devices;
    place_experts(qwen, o, read_back);
    EXPECT_EQ(read_back.experts, planned.experts) << args[0] << " " << args[1];
  }
  EXPECT_THROW(host_expert_args({}), std::invalid_argument);
}

TEST(Experts, MovedExpertsKeepEveryByteAndTurnPipelineParallelismOff) {
  test::TempDir dir;
  const ModelMemory qwen = preset("qwen3-30b-a3b-q4_k_m", 4, dir);
  Layout l;
  l.devices = {rpc("RPC0"), rpc("RPC1")};
  l.context.context_tokens = 4096;
  l.context.mmap = false;  // host weights as copies: every byte counted once
  const Estimate whole = estimate(qwen, l);
  EXPECT_TRUE(whole.pipeline_parallel);
  place_experts(qwen, {false, 2, {}}, l);
  const Estimate moved = estimate(qwen, l);
  EXPECT_FALSE(moved.pipeline_parallel);
  EXPECT_EQ(moved.host_expert_blocks, 2u);
  const std::uint64_t experts = qwen.layers[0].expert_cpu_bytes + qwen.layers[1].expert_cpu_bytes;
  EXPECT_GT(experts, 0u);
  EXPECT_EQ(moved.devices[0].weights_bytes + experts, whole.devices[0].weights_bytes);
  EXPECT_EQ(moved.devices[1].weights_bytes, whole.devices[1].weights_bytes);
  EXPECT_EQ(moved.host.copied_bytes, whole.host.copied_bytes + experts);
  // The KV cache stays with the blocks' attention.
  EXPECT_EQ(moved.devices[0].kv_bytes, whole.devices[0].kv_bytes);
  EXPECT_EQ(moved.host.kv_bytes, 0u);
  // Overrides that move nothing still turn pipeline parallelism off, as in llama.cpp.
  l.experts.assign(4, kExpertsWithBlock);
  EXPECT_FALSE(estimate(qwen, l).pipeline_parallel);
  l.experts.assign(3, kExpertsWithBlock);
  EXPECT_THROW(estimate(qwen, l), LayoutError);
}

// llama.cpp's CUDA op offload counts a product's batch tokens, not the tokens per expert: with
// deepseek-r1's 256 experts a 256-token micro-batch gives each only 8, and still the GPU takes the
// host-held experts and receives a copy of the largest expert tensor (llama-bench -v on H200 with
// the experts of all six blocks on the host: CUDA0 compute 1475 MiB at -ub 256,
// bench/data/moe-batches/README.md). A last block, whose feed-forward part sees one row per
// sequence in llama-server, would keep its experts on the host; here it keeps them on the GPU.
TEST(Experts, OpOffloadTakesHostExpertsFromThirtyTwoBatchTokens) {
  test::TempDir dir;
  const ModelMemory ds = preset("deepseek-r1-ud-iq2_xxs", 6, dir);
  Layout l;
  l.devices = {{"CUDA0", Backend::kCuda, false, 140ull << 30}};
  l.context.context_tokens = 2048;
  l.context.ubatch_tokens = 256;
  place_experts(ds, {false, 5, {}}, l);  // MoE blocks 3 and 4 (0-2 are dense)
  std::uint64_t largest = 0;
  for (std::uint32_t b = 3; b < 5; ++b)
    largest = std::max(largest, ds.layers[b].largest_expert_bytes);
  ASSERT_GT(largest, 512ull << 20);
  const Estimate e = estimate(ds, l);
  EXPECT_GT(e.devices[0].compute_bytes, largest);
  EXPECT_NEAR(static_cast<double>(e.devices[0].compute_bytes) / kMiB, 1475, 0.05 * 1475);
  // Below 32 tokens the host multiplies them itself.
  l.context.ubatch_tokens = 16;
  EXPECT_LT(estimate(ds, l).devices[0].compute_bytes, largest);
}

// A device that holds only other blocks' experts (an -ot rule naming it) runs their products:
// qwen3's blocks 0-2 on RPC0 with their experts on RPC1, which holds no block (CPU build with two
// RPC servers: RPC1 compute 76.27 MiB).
TEST(Experts, DeviceWithOnlyMovedExpertsHasTheirComputeBuffer) {
  test::TempDir dir;
  const ModelMemory qwen = preset("qwen3-30b-a3b-q4_k_m", 4, dir);
  Layout l;
  l.devices = {rpc("RPC0"), rpc("RPC1")};
  l.tensor_split = {3, 1};
  l.context.context_tokens = 8192;
  l.context.parallel = 4;
  l.experts = {1, 1, 1, kExpertsWithBlock};
  const Estimate e = estimate(qwen, l);
  ASSERT_EQ(e.devices[1].layers, 1u);  // the output layer only
  EXPECT_NEAR(static_cast<double>(e.devices[1].compute_bytes) / kMiB, 76.27, 0.05 * 76.27);
}

TEST(Fit, MaxGpuLayersAndSplit) {
  test::TempDir dir;
  const ModelMemory llama = preset("llama3-8b-q4_0", 8, dir);
  Layout l;
  l.context.context_tokens = 4096;
  l.devices = {{"CUDA0", Backend::kCuda, false, 1ull << 40}};
  EXPECT_EQ(max_gpu_layers(llama, l), 9);
  // Room for about half of the model: the answer fits, one more layer does not.
  const Estimate all = estimate(llama, l);
  l.devices[0].free_bytes = all.devices[0].total_bytes / 2;
  const std::int32_t ngl = max_gpu_layers(llama, l);
  EXPECT_GT(ngl, 0);
  EXPECT_LT(ngl, 9);
  Layout check = l;
  check.gpu_layers = ngl;
  EXPECT_TRUE(estimate(llama, check).fits);
  check.gpu_layers = ngl + 1;
  EXPECT_FALSE(estimate(llama, check).fits);

  // Two unequal devices that together hold everything: the split found must fit.
  l.devices = {{"CUDA0", Backend::kCuda, false, all.devices[0].total_bytes * 3 / 10},
               {"CUDA1", Backend::kCuda, false, all.devices[0].total_bytes}};
  const auto split = fit_tensor_split(llama, l);
  ASSERT_TRUE(split);
  Layout fitted = l;
  fitted.tensor_split = *split;
  const Estimate e = estimate(llama, fitted);
  EXPECT_TRUE(e.fits);
  EXPECT_EQ(e.offloaded_layers, 9u);
  EXPECT_GT(e.devices[0].layers, 0u);
  // Too little memory in total: no split.
  l.devices[1].free_bytes = all.devices[0].total_bytes / 4;
  EXPECT_FALSE(fit_tensor_split(llama, l));
}

}  // namespace
}  // namespace ggfleet::estimate
