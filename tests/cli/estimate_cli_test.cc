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

}  // namespace
}  // namespace ggfleet
