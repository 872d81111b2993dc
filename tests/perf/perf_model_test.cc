// The speed model's behaviour, part by part: what makes a layout faster or slower, where the time
// goes, and errors for impossible placements. Calibration accuracy is perf_accuracy_test's job.
#include <gtest/gtest.h>

#include <cmath>

#include "cluster/cluster.h"
#include "estimate/estimate.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"
#include "perf/calibrate.h"
#include "perf/constants.h"
#include "perf/perf.h"
#include "test_util.h"

namespace ggfleet::perf {
namespace {

const char* kCluster = R"(
workers:
  - name: a
    cpu: {cores: 32, memory_bandwidth: 200GB/s}
    gpus: [{name: NVIDIA H100 SXM}, {name: NVIDIA L4}]
  - name: b
    cpu: {cores: 8, memory_bandwidth: 50GB/s}
    gpus: [{name: NVIDIA H100 SXM}]
network:
  default: {bandwidth: 10Gbit/s, latency: 0.5ms}
)";

class PerfModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    model::SynthOptions o;
    o.blocks = 8;
    dense_ = load(model::synth("llama3-8b-q4_0", dir_->file("dense"), o).front());
    moe_ = load(model::synth("qwen3-30b-a3b-q4_k_m", dir_->file("moe"), o).front());
  }
  static void TearDownTestSuite() {
    delete dense_;
    delete moe_;
    delete dir_;
  }
  static estimate::ModelMemory* load(const std::string& path) {
    const gguf::Model m = gguf::Model::open(path);
    return new estimate::ModelMemory(estimate::ModelMemory::from(m, model::profile(m)));
  }

  // Predicts `model` on devices given as (worker, gpu, remote), main "a" unless said; the routed
  // experts of the first `host_expert_blocks` blocks stay in the main's RAM.
  Prediction run(const estimate::ModelMemory& m, const std::vector<DevicePlace>& places,
                 std::int32_t ngl = -1, const std::string& main = "a", std::uint32_t threads = 0,
                 std::uint32_t host_expert_blocks = 0, bool mmap = true) {
    estimate::Layout l;
    l.context.mmap = mmap;
    if (host_expert_blocks > 0) {
      l.experts.assign(m.blocks(), estimate::kExpertsWithBlock);
      for (std::uint32_t b = 0; b < host_expert_blocks; ++b)
        l.experts[b] = estimate::kExpertsOnHost;
    }
    std::uint32_t rpc = 0, local = 0;
    for (const DevicePlace& p : places) {
      const bool remote = p.worker != main;
      l.devices.push_back(
          {remote ? "RPC" + std::to_string(rpc++) : "CUDA" + std::to_string(local++),
           estimate::Backend::kCuda, remote, 40ull << 30});
    }
    l.gpu_layers = places.empty() ? 0 : ngl;
    l.context.context_tokens = 4096;
    const estimate::Estimate e = estimate::estimate(m, l);
    Scenario s;
    s.cluster = &cluster_;
    s.main_worker = main;
    s.places = places;
    s.threads = threads;
    return predict(m, l, e, s);
  }
  cluster::Cluster cluster_ = cluster::parse_cluster(kCluster);
  static test::TempDir* dir_;
  static estimate::ModelMemory* dense_;
  static estimate::ModelMemory* moe_;
};
test::TempDir* PerfModel::dir_ = nullptr;
estimate::ModelMemory* PerfModel::dense_ = nullptr;
estimate::ModelMemory* PerfModel::moe_ = nullptr;

TEST_F(PerfModel, ShippedConstantsParseAndArePositive) {
  const Constants& c = calibrated_constants();
  for (const ConstantField& f : constant_fields()) {
    EXPECT_GT(c.*f.member, 0) << f.name;
    EXPECT_TRUE(std::isfinite(c.*f.member)) << f.name;
  }
  nlohmann::json j = nlohmann::json::parse(calibration_json_text());
  ASSERT_TRUE(j.contains("measurements"));
  EXPECT_GE(j["measurements"].size(), 30u);
  j["constants"].erase("gpu_layer_s");
  EXPECT_THROW(constants_from_json(j), std::runtime_error);
}

TEST_F(PerfModel, FasterMemoryIsFaster) {
  const Prediction h100 = run(*dense_, {{"a", 0}});
  const Prediction l4 = run(*dense_, {{"a", 1}});
  EXPECT_GT(h100.generation_tokens_per_s, 3 * l4.generation_tokens_per_s);
  EXPECT_GT(h100.prompt_tokens_per_s, 3 * l4.prompt_tokens_per_s);
  EXPECT_NEAR(h100.generation_tokens_per_s * h100.generation_token_s, 1.0, 1e-9);
}

TEST_F(PerfModel, RemoteGpuPaysOneRoundTripPerToken) {
  const Prediction local = run(*dense_, {{"a", 0}});
  const Prediction remote = run(*dense_, {{"b", 0}});
  // Same GPU model: the difference is the RPC call, including 2 x 0.5 ms of latency.
  const double extra_s = remote.generation_token_s - local.generation_token_s;
  EXPECT_GT(extra_s, 1e-3);
  EXPECT_LT(extra_s, 1e-3 + calibrated_constants().rpc_call_s +
                         9 * calibrated_constants().rpc_layer_s + 1e-3);
  EXPECT_GT(remote.startup_s, 0);
  EXPECT_EQ(local.startup_s, 0);
  bool hop = false;
  for (const PartTime& p : remote.parts)
    hop = hop || p.what.rfind("RPC calls to RPC0 on b", 0) == 0;
  EXPECT_TRUE(hop);
}

TEST_F(PerfModel, CpuLayersAreTheMainsCpuAndScaleWithThreads) {
  const Prediction few = run(*dense_, {{"a", 0}}, 5, "a", 4);
  const Prediction many = run(*dense_, {{"a", 0}}, 5, "a", 32);
  const Prediction all = run(*dense_, {{"a", 0}}, -1);
  EXPECT_LT(few.generation_tokens_per_s, many.generation_tokens_per_s);
  EXPECT_LT(many.generation_tokens_per_s, all.generation_tokens_per_s);
  EXPECT_EQ(many.bottleneck.rfind("CPU of a", 0), 0u) << many.bottleneck;
  // The same CPU layers on b's slower CPU (b as main, a's GPU lent over RPC) are slower still,
  // and b's prompt has no local GPU to take the CPU layers' matmuls.
  const Prediction on_b = run(*dense_, {{"a", 0}}, 5, "b", 8);
  EXPECT_LT(on_b.generation_tokens_per_s, few.generation_tokens_per_s * 2.5);
  EXPECT_LT(on_b.prompt_tokens_per_s, many.prompt_tokens_per_s / 3);
}

TEST_F(PerfModel, ExpertsInHostRamCostTheCpuOnlyTheirReads) {
  const Prediction gpu = run(*moe_, {{"a", 0}});
  const Prediction experts = run(*moe_, {{"a", 0}}, -1, "a", 0, 8);  // every block's experts
  const Prediction blocks = run(*moe_, {{"a", 0}}, 1);               // every block on the CPU
  // The same bytes are read per token, only by other hands: the CPU reads the used experts.
  auto read_by = [](const Prediction& p, const std::string& who) {
    double read = 0;
    for (const PartTime& part : p.parts)
      if (part.what.rfind(who, 0) == 0) read += part.read_bytes;
    return read;
  };
  EXPECT_NEAR(read_by(experts, "CUDA0") + read_by(experts, "CPU"), read_by(gpu, "CUDA0"),
              1e-6 * read_by(gpu, "CUDA0"));
  EXPECT_GT(read_by(experts, "CPU"), 0.3 * read_by(gpu, "CUDA0"));
  bool named = false;
  for (const PartTime& part : experts.parts)
    named = named || part.what.find("experts of 8 blocks") != std::string::npos;
  EXPECT_TRUE(named);
  EXPECT_LT(experts.generation_tokens_per_s, gpu.generation_tokens_per_s);
  // Attention and the KV cache stay on the GPU: the CPU reads less than with whole blocks
  // (which of the two is faster also depends on the two device changes per block).
  EXPECT_LT(read_by(experts, "CPU"), read_by(blocks, "CPU"));
  // Fewer blocks' experts on the CPU: faster.
  const Prediction half = run(*moe_, {{"a", 0}}, -1, "a", 0, 4);
  EXPECT_GT(half.generation_tokens_per_s, experts.generation_tokens_per_s);
  EXPECT_LT(half.generation_tokens_per_s, gpu.generation_tokens_per_s);
  // On a remote GPU each such block costs one more call to its worker.
  const Prediction remote = run(*moe_, {{"b", 0}});
  const Prediction remote_experts = run(*moe_, {{"b", 0}}, -1, "a", 0, 4);
  EXPECT_GT(remote_experts.generation_token_s - remote.generation_token_s,
            4 * calibrated_constants().rpc_call_s);
}

// Prompts with weights on the CPU: a local GPU multiplies them on copies (op offload), which come
// several times faster from llama.cpp's pinned buffers (--load-mode none) than from the mapped file
// (H200: 7,367 against 1,679 tokens/s with the experts of 8 blocks in host RAM,
// bench/data/expert-offload/r2-extra-*); generation reads them in place either way.
TEST_F(PerfModel, OpOffloadCopiesFromPinnedBuffersFaster) {
  for (const auto& [ngl, experts] : {std::pair{5, 0u}, std::pair{-1, 8u}}) {
    const Prediction mapped = run(*moe_, {{"a", 0}}, ngl, "a", 0, experts, true);
    const Prediction pinned = run(*moe_, {{"a", 0}}, ngl, "a", 0, experts, false);
    EXPECT_GT(pinned.prompt_tokens_per_s, 2.5 * mapped.prompt_tokens_per_s) << ngl;
    EXPECT_DOUBLE_EQ(pinned.generation_tokens_per_s, mapped.generation_tokens_per_s) << ngl;
  }
  // Without a local GPU there is nothing to copy to: the CPU multiplies, whatever the load mode.
  const Prediction mapped = run(*dense_, {{"a", 0}}, 5, "b", 8, 0, true);
  const Prediction pinned = run(*dense_, {{"a", 0}}, 5, "b", 8, 0, false);
  EXPECT_DOUBLE_EQ(pinned.prompt_tokens_per_s, mapped.prompt_tokens_per_s);
}

TEST_F(PerfModel, MoeReadsOnlyTheExpertsItUses) {
  const Prediction moe = run(*moe_, {{"a", 0}});
  double read = 0;
  for (const PartTime& p : moe.parts) read += p.read_bytes;
  const double file_bytes = static_cast<double>(moe_->profile.tensor_bytes);
  EXPECT_LT(read, 0.35 * file_bytes);  // 8 of 128 experts plus attention and the output
  EXPECT_GT(read, 0.02 * file_bytes);
}

TEST_F(PerfModel, ImpossiblePlacementsAreErrors) {
  EXPECT_THROW(run(*dense_, {{"c", 0}}), PlacementError);
  EXPECT_THROW(run(*dense_, {{"a", 2}}), PlacementError);
  EXPECT_THROW(run(*dense_, {{"a", 0}, {"a", 0}}), PlacementError);
  estimate::Layout l;
  l.devices.push_back({"CUDA0", estimate::Backend::kCuda, false, 40ull << 30, 0});
  const estimate::Estimate e = estimate::estimate(*dense_, l);
  Scenario s;
  s.cluster = &cluster_;
  s.main_worker = "a";
  EXPECT_THROW(predict(*dense_, l, e, s), PlacementError);  // one device, no places
}

TEST(Minimiser, FindsTheMinimumOfAPositiveBowl) {
  const auto f = [](const std::vector<double>& x) {
    return log_error2(x[0], 3.0) + log_error2(x[1], 0.001) + log_error2(x[0] * x[2], 6.0);
  };
  const std::vector<double> best = minimise_positive(f, {1, 1, 1});
  EXPECT_NEAR(best[0], 3.0, 1e-3);
  EXPECT_NEAR(best[1], 0.001, 1e-6);
  EXPECT_NEAR(best[2], 2.0, 1e-3);
}

}  // namespace
}  // namespace ggfleet::perf
