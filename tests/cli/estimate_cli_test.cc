// `ggfleet estimate` as a user runs it: a table and JSON in llama.cpp's device order, and a clear
// error (exit 1, one line) for impossible options.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace ggfleet {
namespace {

class EstimateCli : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto r =
        test::run_command(std::string(GGFLEET_BINARY) + " synth llama3-8b-q4_0 --blocks 4 --out " +
                          dir_.path().string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    model_ = dir_.file("llama3-8b-q4_0.gguf");
  }
  test::CommandResult estimate(const std::string& args) {
    return test::run_command(std::string(GGFLEET_BINARY) + " estimate " + model_ + " " + args);
  }
  test::TempDir dir_;
  std::string model_;
};

TEST_F(EstimateCli, JsonInLlamaCppDeviceOrder) {
  const auto r =
      estimate("--rpc-gpus 8GiB --gpus 8GiB,8GiB --ctx 8192 --tensor-split 1,1,1 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output);
  ASSERT_EQ(j["devices"].size(), 3u);
  EXPECT_EQ(j["devices"][0]["name"], "RPC0");
  EXPECT_EQ(j["devices"][1]["name"], "CUDA0");
  EXPECT_EQ(j["devices"][2]["name"], "CUDA1");
  std::uint64_t layers = 0;
  for (const auto& d : j["devices"]) {
    EXPECT_EQ(d["total_bytes"].get<std::uint64_t>(), d["weights_bytes"].get<std::uint64_t>() +
                                                         d["kv_bytes"].get<std::uint64_t>() +
                                                         d["compute_bytes"].get<std::uint64_t>());
    EXPECT_TRUE(d["fits"].get<bool>());
    layers += d["layers"].get<std::uint64_t>();
  }
  EXPECT_EQ(layers, 5u);
  EXPECT_TRUE(j["host"].contains("total_bytes"));
  EXPECT_TRUE(j["pipeline_parallel"].get<bool>());
}

TEST_F(EstimateCli, TablePerOffloadLevel) {
  const auto r = estimate("--gpus 1GiB --ngl-step 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* level : {"-ngl 0:", "-ngl 2:", "-ngl 4:", "-ngl 5:"}) {
    EXPECT_NE(r.output.find(level), std::string::npos) << level << "\n" << r.output;
  }
  EXPECT_NE(r.output.find("DOES NOT FIT"), std::string::npos)
      << r.output;  // 1 GiB is too small for all
}

TEST_F(EstimateCli, ImpossibleOptionsAreErrors) {
  struct Bad {
    const char* args;
    const char* message;
  };
  for (const Bad& b :
       {Bad{"--gpus 8GiB --cache-type-v q4_0 --flash-attn off", "requires flash attention"},
        Bad{"--gpus 8GiB,8GiB --tensor-split 1,1,1", "3 values but there are 2 devices"},
        Bad{"--gpus -8GiB", "negative"}, Bad{"--gpus '8 parsecs'", "unknown unit"},
        Bad{"--gpus 8GiB --cache-type-k q9_9", "unknown cache type"},
        Bad{"--gpus 8GiB --flash-attn maybe", "on, off or auto"}}) {
    const auto r = estimate(b.args);
    EXPECT_NE(r.exit_code, 0) << b.args;
    EXPECT_NE(r.output.find(b.message), std::string::npos) << b.args << "\n" << r.output;
  }
}

// llama.cpp's expert options, as users write them for MoE models.
TEST(EstimateCliExperts, NCpuMoeCpuMoeAndOverrideTensorRules) {
  test::TempDir dir;
  const auto made =
      test::run_command(std::string(GGFLEET_BINARY) +
                        " synth qwen3-30b-a3b-q4_k_m --blocks 4 --out " + dir.path().string());
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const std::string run = std::string(GGFLEET_BINARY) + " estimate " +
                          dir.file("qwen3-30b-a3b-q4_k_m.gguf") + " --gpus 24GiB,24GiB ";
  auto json_of = [&](const std::string& args) {
    const auto r = test::run_command(run + args + " --json");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return nlohmann::json::parse(r.output, nullptr, false);
  };
  const nlohmann::json plain = json_of("");
  const nlohmann::json two = json_of("--n-cpu-moe 2");
  EXPECT_TRUE(plain["pipeline_parallel"].get<bool>());
  EXPECT_FALSE(two["pipeline_parallel"].get<bool>());
  EXPECT_EQ(two["host_expert_blocks"], 2);
  EXPECT_LT(two["devices"][0]["weights_bytes"], plain["devices"][0]["weights_bytes"]);
  EXPECT_EQ(json_of("--cpu-moe")["host_expert_blocks"], 4);
  // Block 3's experts to the first GPU, away from their block (on the second).
  const nlohmann::json moved = json_of(R"(--override-tensor 'blk\.3\.ffn_.*_exps=CUDA0')");
  EXPECT_EQ(moved["devices"][0]["expert_blocks"], 1);
  EXPECT_EQ(moved["host_expert_blocks"], 0);
  const auto table = test::run_command(run + "--n-cpu-moe 3");
  EXPECT_NE(table.output.find("experts of 3 blocks in host RAM"), std::string::npos)
      << table.output;
  // A rule that would move attention weights is refused, naming the rule and the tensor.
  const auto refused = test::run_command(run + R"(--override-tensor 'attn_q=CPU')");
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.output.find("'attn_q=CPU' would move blk.0.attn_q.weight"), std::string::npos)
      << refused.output;
}

}  // namespace
}  // namespace ggfleet
