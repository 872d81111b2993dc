// `ggfleet predict` on the case that defines ggfleet (worker1 = 2x L40S, worker2 = 1x L40S,
// DeepSeek-R1 UD-IQ2_XXS at context 8192), and its errors for bad input.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace ggfleet {
namespace {

const std::string kSeedCluster =
    std::string(GGFLEET_SOURCE_DIR) + "/tests/fixtures/seed-cluster.yaml";

class PredictCli : public ::testing::Test {
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
  static test::CommandResult predict(const std::string& args) {
    return test::run_command(std::string(GGFLEET_BINARY) + " predict " + model_ + " " + args);
  }
  static nlohmann::json predict_json(const std::string& main, const std::string& devices) {
    const auto r = predict("--cluster " + kSeedCluster + " --main " + main + " --devices " +
                           devices + " --ctx 8192 --json");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.exit_code == 0 ? nlohmann::json::parse(r.output) : nlohmann::json{};
  }
  static double part_s(const nlohmann::json& j, const std::string& prefix) {
    double t = 0;
    for (const auto& part : j["prediction"]["breakdown"]) {
      if (part["part"].get<std::string>().rfind(prefix, 0) == 0)
        t += part["generation_s"].get<double>();
    }
    return t;
  }
  static test::TempDir* dir_;
  static std::string model_;
};
test::TempDir* PredictCli::dir_ = nullptr;
std::string PredictCli::model_;

TEST_F(PredictCli, SeedCaseWorker1IsTheRightMain) {
  const nlohmann::json w1 = predict_json("worker1", "worker1:0,worker1:1,worker2:0");
  const nlohmann::json w2 = predict_json("worker2", "worker1:0,worker1:1,worker2:0");
  ASSERT_FALSE(w1.is_null());
  ASSERT_FALSE(w2.is_null());
  // llama.cpp's order: the GPUs of the other worker first (RPC), then the main's own.
  EXPECT_EQ(w1["layout"]["devices"][0]["name"], "RPC0");
  EXPECT_EQ(w1["layout"]["devices"][0]["worker"], "worker2");
  EXPECT_EQ(w1["layout"]["devices"][1]["name"], "CUDA0");
  EXPECT_EQ(w2["layout"]["devices"][0]["worker"], "worker1");
  EXPECT_EQ(w2["layout"]["devices"][1]["name"], "RPC1");
  EXPECT_EQ(w2["layout"]["devices"][2]["name"], "CUDA0");
  for (const auto* j : {&w1, &w2}) {
    // 183 GB does not fit in 3 x 47 GiB: some blocks stay on the main's CPU.
    EXPECT_GT((*j)["layout"]["cpu_layers"].get<int>(), 0);
    for (const auto& d : (*j)["layout"]["devices"]) {
      EXPECT_LE(d["vram_bytes"].get<std::uint64_t>(), 47ull << 30);
      EXPECT_GT(d["layers"].get<int>(), 0);
    }
  }
  const double tg1 = w1["prediction"]["generation_tokens_per_s"].get<double>();
  const double tg2 = w2["prediction"]["generation_tokens_per_s"].get<double>();
  EXPECT_GT(tg1, 1.3 * tg2) << "worker1 as main should win clearly: " << tg1 << " vs " << tg2;
  // The reason is visible in the breakdown: the main's CPU layers dominate, worker2's CPU is
  // slower, and worker2 as main reaches two GPUs over RPC instead of one.
  EXPECT_EQ(w1["prediction"]["bottleneck"].get<std::string>().rfind("CPU of worker1", 0), 0u);
  EXPECT_EQ(w2["prediction"]["bottleneck"].get<std::string>().rfind("CPU of worker2", 0), 0u);
  EXPECT_GT(part_s(w2, "CPU of worker2"), 1.5 * part_s(w1, "CPU of worker1"));
  EXPECT_GT(part_s(w2, "RPC calls"), part_s(w1, "RPC calls"));
  EXPECT_GT(w2["prediction"]["startup_s"].get<double>(),
            w1["prediction"]["startup_s"].get<double>());
}

TEST_F(PredictCli, TextShowsLayoutAndBreakdown) {
  const auto r = predict("--cluster " + kSeedCluster +
                         " --main worker1 --devices worker2:0,worker1:0,worker1:1 --ctx 8192");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* s :
       {"RPC0", "worker2 GPU 0", "CUDA1", "tokens/s generation", "CPU of worker1", "bottleneck"}) {
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
  }
}

// --n-cpu-moe as llama.cpp takes it: DeepSeek-R1's first three blocks are dense, so 44 moves the
// experts of 41; the CPU part reads only them, and every layer's attention stays on a GPU.
TEST_F(PredictCli, ExpertsInHostRamAreEstimatedAndTimed) {
  const auto r = predict("--cluster " + kSeedCluster +
                         " --main worker1 --devices worker2:0,worker1:0,worker1:1 --ctx 8192"
                         " --ngl 62 --n-cpu-moe 44 --tensor-split 1.15,1.15,0.8");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* s :
       {"62/62 layers on GPUs, 0 on the main's CPU", "experts of 41 blocks in host RAM",
        "CPU of worker1 (64 threads, experts of 41 blocks)"}) {
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
  }
  const auto bad = predict("--cluster " + kSeedCluster +
                           " --main worker1 --devices worker1:0 --override-tensor 'exps=CUDA7'");
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("no buffer CUDA7"), std::string::npos) << bad.output;
}

TEST_F(PredictCli, BadInputIsAClearError) {
  test::TempDir tmp;
  const std::string unknown_gpu = tmp.file("unknown-gpu.yaml");
  std::ofstream(unknown_gpu)
      << "workers:\n  - name: w\n    gpus:\n      - {name: Frobnicator 9000}\n";
  struct Bad {
    std::string args;
    std::string message;
  };
  const std::vector<Bad> bad = {
      {"--cluster " + unknown_gpu + " --main w --devices w:0", "not in the catalog"},
      {"--cluster " + kSeedCluster + " --main worker1 --devices worker1:0,worker1:0",
       "listed twice"},
      {"--cluster " + kSeedCluster + " --main worker1 --devices worker1:0 --ngl -1 --ctx 8192",
       "does not fit"},
      {"--cluster " + kSeedCluster + " --main worker1 --devices worker3:0",
       "no worker named worker3"},
      {"--cluster " + kSeedCluster + " --main worker1 --devices worker2:5", "has 1 GPU"},
      {"--cluster " + kSeedCluster + " --main worker1 --devices worker2", "WORKER:GPU"},
      {"--cluster " + kSeedCluster + " --main nobody --devices worker2:0", "main worker 'nobody'"},
      {"--cluster " + kSeedCluster +
           " --main worker1 --devices worker1:0,worker2:0 --tensor-split 1",
       "--tensor-split has 1 values for 2 devices"},
  };
  for (const Bad& b : bad) {
    const auto r = predict(b.args);
    EXPECT_EQ(r.exit_code, 1) << b.args << "\n" << r.output;
    EXPECT_NE(r.output.find(b.message), std::string::npos) << b.args << "\n" << r.output;
  }
}

}  // namespace
}  // namespace ggfleet
