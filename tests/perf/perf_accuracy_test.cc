// The shipped constants against the stored llama-bench measurements (two H200; no GPU needed):
// the goals of the speed model and the ranking of layouts. bench/perf_calibrate prints the full
// table, including the error on configurations held out of the fit.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "perf/constants.h"
#include "perf_cases.h"
#include "test_util.h"

namespace ggfleet::perfdata {
namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

class PerfAccuracy : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    const nlohmann::json cal = nlohmann::json::parse(perf::calibration_json_text());
    Host host;
    host.cpu_memory_bandwidth_bytes_per_s =
        cal["measuring_host"]["cpu_memory_bandwidth_bytes_per_s"];
    host.proxy_latency_s = cal["measuring_host"]["delay_proxy_latency_s"];
    host.loopback_latency_s = cal["measuring_host"]["loopback_latency_s"];
    data_ = new Dataset(load_measurements(std::string(GGFLEET_SOURCE_DIR) + "/bench/data/perf"),
                        dir_->path().string(), host);
  }
  static void TearDownTestSuite() {
    delete data_;
    delete dir_;
  }
  static test::TempDir* dir_;
  static Dataset* data_;
};
test::TempDir* PerfAccuracy::dir_ = nullptr;
Dataset* PerfAccuracy::data_ = nullptr;

TEST_F(PerfAccuracy, MeetsTheGoalsOnTheMeasuredMatrix) {
  std::vector<double> tg_err, pp_err;
  for (const Case& c : data_->cases()) {
    const auto [tg, pp] = predict_case(c, perf::calibrated_constants());
    ASSERT_GT(c.m.tg_tokens_per_s, 0) << c.m.config;
    tg_err.push_back(std::abs(tg / c.m.tg_tokens_per_s - 1) * 100);
    if (c.m.prompt_caveat.empty()) pp_err.push_back(std::abs(pp / c.m.pp_tokens_per_s - 1) * 100);
  }
  ASSERT_GE(tg_err.size(), 30u);
  EXPECT_LE(median(tg_err), 10.0);
  EXPECT_LE(*std::max_element(tg_err.begin(), tg_err.end()), 25.0);
  EXPECT_LE(median(pp_err), 20.0);
}

TEST_F(PerfAccuracy, MeasuredGenerationRankingIsKept) {
  std::vector<std::pair<const Case*, double>> predicted;
  for (const Case& c : data_->cases())
    predicted.emplace_back(&c, predict_case(c, perf::calibrated_constants()).first);
  for (const auto& [a, pa] : predicted) {
    for (const auto& [b, pb] : predicted) {
      if (a->m.model_tag != b->m.model_tag) continue;
      if (a->m.tg_tokens_per_s >= 1.1 * b->m.tg_tokens_per_s) {
        EXPECT_GT(pa, pb) << a->m.config << " is measured faster than " << b->m.config;
      }
    }
  }
}

TEST_F(PerfAccuracy, CalibrationFileMatchesTheModel) {
  // The predictions stored beside the constants are what the model computes now: a change to
  // src/perf without a refit (bench/perf_calibrate --write) fails here.
  const nlohmann::json cal = nlohmann::json::parse(perf::calibration_json_text());
  std::size_t checked = 0;
  for (const Case& c : data_->cases()) {
    for (const auto& m : cal["measurements"]) {
      if (m["config"] != c.m.config) continue;
      const auto [tg, pp] = predict_case(c, perf::calibrated_constants());
      EXPECT_NEAR(tg, m["tg_predicted"].get<double>(), 1e-6 * tg) << c.m.config;
      EXPECT_NEAR(pp, m["pp_predicted"].get<double>(), 1e-6 * pp) << c.m.config;
      ++checked;
    }
  }
  EXPECT_EQ(checked, data_->cases().size());
}

}  // namespace
}  // namespace ggfleet::perfdata
