// `ggfleet plan` as a user runs it: the seed case as JSON and text, and errors for bad requests.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace ggfleet {
namespace {

const std::string kSeedCluster =
    std::string(GGFLEET_SOURCE_DIR) + "/tests/fixtures/seed-cluster.yaml";

class PlanCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    const auto r = test::run_command(std::string(GGFLEET_BINARY) +
                                     " synth deepseek-r1-ud-iq2_xxs --shards 4 --out " +
                                     dir_->path().string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    model_ = dir_->file("deepseek-r1-ud-iq2_xxs-00001-of-00004.gguf");
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static test::CommandResult plan(const std::string& args) {
    return test::run_command(std::string(GGFLEET_BINARY) + " plan " + model_ + " " + args);
  }
  static test::TempDir* dir_;
  static std::string model_;
};
test::TempDir* PlanCli::dir_ = nullptr;
std::string PlanCli::model_;

TEST_F(PlanCli, SeedCaseJson) {
  const auto r = plan("--cluster " + kSeedCluster + " --ctx 8192 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output);
  EXPECT_TRUE(j["feasible"].get<bool>());
  EXPECT_EQ(j["layout"]["main_worker"], "worker1");
  // Every block on the GPUs, the experts of those they cannot hold in worker1's RAM.
  EXPECT_EQ(j["layout"]["cpu_layers"].get<int>(), 0);
  EXPECT_GT(j["layout"]["host_expert_blocks"].size(), 10u);
  ASSERT_EQ(j["notes"].size(), 2u);  // experts against whole blocks; mmap: false for prompts
  EXPECT_NE(j["notes"][0].get<std::string>().find("whole blocks on the CPU would give"),
            std::string::npos);
  EXPECT_NE(j["notes"][1].get<std::string>().find("pinned buffers"), std::string::npos);
  ASSERT_EQ(j["layout"]["devices"].size(), 3u);
  for (const auto& d : j["layout"]["devices"]) {
    for (const char* key : {"worker", "gpu", "layers", "vram_bytes"})
      EXPECT_TRUE(d.contains(key)) << key;
  }
  const double tg = j["prediction"]["generation_tokens_per_s"].get<double>();
  EXPECT_GT(j["prediction"]["prompt_tokens_per_s"].get<double>(), 0);
  ASSERT_FALSE(j["alternatives"].empty());
  bool other_main = false;
  for (const auto& a : j["alternatives"]) {
    EXPECT_TRUE(a["layout"].contains("main_worker"));
    EXPECT_TRUE(a["prediction"].contains("generation_tokens_per_s"));
    if (a["layout"]["main_worker"] == "worker2") {
      other_main = true;
      EXPECT_LT(a["prediction"]["generation_tokens_per_s"].get<double>(), tg / 1.15);
    }
  }
  EXPECT_TRUE(other_main);
  ASSERT_EQ(j["commands"].size(), 2u);
  EXPECT_EQ(j["commands"][0]["role"], "rpc-server");
  EXPECT_EQ(j["commands"][1]["role"], "llama-server");
  EXPECT_NE(j["commands"][1]["line"].get<std::string>().find("--rpc worker2:50052"),
            std::string::npos);
  EXPECT_TRUE(j["rejected"].is_array());
}

TEST_F(PlanCli, SeedCaseTextSaysWhy) {
  const auto r = plan("--cluster " + kSeedCluster + " --ctx 8192");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* s : {"plan: main worker worker1",
                        "why worker1: with the same GPUs, main worker2", "% faster with worker1",
                        "commands:", "ggml-rpc-server -H worker2", "alternatives:", "experts of",
                        "blocks in host RAM", "whole blocks on the CPU would give", " -ot 'blk"}) {
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
  }
  // --no-expert-offload: whole blocks on worker1's CPU, by far the best main, no -ot.
  const auto w = plan("--cluster " + kSeedCluster + " --ctx 8192 --no-expert-offload --json");
  ASSERT_EQ(w.exit_code, 0) << w.output;
  const nlohmann::json j = nlohmann::json::parse(w.output);
  EXPECT_EQ(j["layout"]["main_worker"], "worker1");
  EXPECT_GT(j["layout"]["cpu_layers"].get<int>(), 0);
  EXPECT_TRUE(j["layout"]["host_expert_blocks"].empty());
  const double tg = j["prediction"]["generation_tokens_per_s"].get<double>();
  for (const auto& a : j["alternatives"]) {
    if (a["layout"]["main_worker"] == "worker2") {
      EXPECT_LT(a["prediction"]["generation_tokens_per_s"].get<double>(), tg / 1.3);
    }
  }
  EXPECT_EQ(j["commands"][1]["line"].get<std::string>().find(" -ot "), std::string::npos);
}

TEST_F(PlanCli, BadRequestsAreClearErrors) {
  struct Bad {
    std::string args;
    int code;
    std::string message;
  };
  test::TempDir tmp;
  const std::string small = tmp.file("small.yaml");
  std::ofstream(small)
      << "workers:\n  - name: tiny\n    ram: {total: 16GiB}\n    gpus: [{name: NVIDIA L4}]\n";
  const std::vector<Bad> bad = {
      {"--cluster " + kSeedCluster + " --gpus worker9:0", 1, "no worker named worker9"},
      {"--cluster " + kSeedCluster + " --gpus worker1:0 --tensor-split 1,2", 1,
       "2 entries for 1 GPUs"},
      {"--cluster " + kSeedCluster + " --ngl 99", 1,
       "-ngl 99 is larger than the model's 62 layers"},
      {"--cluster " + kSeedCluster + " --policy random", 1, "policy must be spread or binpack"},
      {"--cluster " + small + " --ctx 8192", 3, "does not fit: the closest option is main tiny"},
  };
  for (const Bad& b : bad) {
    const auto r = plan(b.args);
    EXPECT_EQ(r.exit_code, b.code) << b.args << "\n" << r.output;
    EXPECT_NE(r.output.find(b.message), std::string::npos) << b.args << "\n" << r.output;
  }
}

}  // namespace
}  // namespace ggfleet
