// Learned corrections: a prediction's basis reproduces it under any factors, learn() recovers
// factors from measured placements (several at once, with enough samples, fading with age),
// calibration files round-trip or are refused with the reason, and a plan made with the factors
// chooses differently and says what the speed model alone would have chosen.
#include "perf/corrections.h"

#include <gtest/gtest.h>

#include <cmath>

#include "estimate/estimate.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"
#include "plan/calibrated.h"
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
    gpus: [{name: NVIDIA A100 80GB}]
network:
  default: {bandwidth: 10Gbit/s, latency: 0.5ms}
)";

constexpr std::int64_t kDayMs = 86400 * 1000LL;

class Corrections : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    model::SynthOptions o;
    o.blocks = 8;
    const gguf::Model m =
        gguf::Model::open(model::synth("llama3-8b-q4_0", dir_->file("dense"), o).front());
    model_ = new estimate::ModelMemory(estimate::ModelMemory::from(m, model::profile(m)));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete dir_;
  }

  // (worker, gpu) places with main `main` and `ngl` layers offloaded, on `cl`.
  static Prediction run(const cluster::Cluster& cl, const std::vector<DevicePlace>& places,
                        const std::string& main, std::int32_t ngl = -1) {
    estimate::Layout l;
    std::uint32_t rpc = 0, local = 0;
    for (const DevicePlace& p : places) {
      const bool remote = p.worker != main;
      l.devices.push_back(
          {remote ? "RPC" + std::to_string(rpc++) : "CUDA" + std::to_string(local++),
           estimate::Backend::kCuda, remote, 40ull << 30});
    }
    l.gpu_layers = ngl;
    l.context.context_tokens = 4096;
    const estimate::Estimate e = estimate::estimate(*model_, l);
    Scenario s;
    s.cluster = &cl;
    s.main_worker = main;
    s.places = places;
    return predict(*model_, l, e, s);
  }

  // An observation of `p`'s placement measured as the true factors say, with `samples`.
  static Observation measured(const std::string& id, const Prediction& p,
                              const std::map<std::string, double>& truth_gen,
                              const std::map<std::string, double>& truth_prompt, double samples,
                              std::int64_t updated_ms) {
    Observation o;
    o.id = id;
    o.updated_ms = updated_ms;
    o.basis = basis_of(p, 512);
    o.measured_generation_s = o.basis.generation.seconds(truth_gen);
    o.generation_samples = samples;
    o.measured_prompt_s = o.basis.prompt.seconds(truth_prompt);
    o.prompt_samples = samples;
    return o;
  }

  cluster::Cluster cluster_ = cluster::parse_cluster(kCluster);
  static test::TempDir* dir_;
  static estimate::ModelMemory* model_;
};
test::TempDir* Corrections::dir_ = nullptr;
estimate::ModelMemory* Corrections::model_ = nullptr;

TEST_F(Corrections, BasisReproducesThePredictionUnderAnyFactors) {
  // A local GPU, a remote one and CPU layers: every kind of factor in one layout.
  const Prediction raw = run(cluster_, {{"a", 0}, {"b", 0}}, "a", 6);
  const PredictionBasis b = basis_of(raw, 512);
  EXPECT_NEAR(b.generation.seconds({}), raw.generation_token_s, 1e-12);
  EXPECT_NEAR(b.prompt.seconds({}) * 512, raw.prompt_s, 1e-9);
  ASSERT_EQ(b.generation.parts_s.size(), 4u);  // gpu:H100, gpu:A100, cpu:a, link:a|b
  EXPECT_TRUE(b.generation.parts_s.count("link:a|b"));

  perf::Corrections c;
  c.generation = {
      {"gpu:NVIDIA H100 SXM", {2.0, 50}}, {"cpu:a", {1.5, 50}}, {"link:a|b", {3.0, 50}}};
  c.prompt = {{"gpu:NVIDIA A100 80GB", {1.7, 50}}, {"cpu:a", {0.5, 50}}};
  const Prediction fixed = run(corrected(cluster_, c), {{"a", 0}, {"b", 0}}, "a", 6);
  EXPECT_GT(fixed.generation_token_s, raw.generation_token_s);
  EXPECT_NEAR(fixed.generation_token_s, b.generation.seconds(c.generation_values()), 1e-12);
  EXPECT_NEAR(fixed.prompt_s, b.prompt.seconds(c.prompt_values()) * 512, 1e-9);
  // The basis does not depend on the factors a prediction was made with.
  const PredictionBasis again = basis_of(fixed, 512);
  EXPECT_NEAR(again.generation.rest_s, b.generation.rest_s, 1e-12);
  for (const auto& [key, s] : b.generation.parts_s)
    EXPECT_NEAR(again.generation.parts_s.at(key), s, 1e-12) << key;
}

TEST_F(Corrections, LearnsSeveralFactorsFromSeveralPlacements) {
  const std::map<std::string, double> gen = {
      {"gpu:NVIDIA H100 SXM", 2.0}, {"gpu:NVIDIA L4", 0.8}, {"cpu:a", 1.5}};
  const std::map<std::string, double> prompt = {{"gpu:NVIDIA H100 SXM", 1.3}};
  const std::int64_t now = 100 * kDayMs;
  const std::vector<Observation> obs = {
      measured("1", run(cluster_, {{"a", 0}}, "a"), gen, prompt, 100, now),
      measured("2", run(cluster_, {{"a", 1}}, "a"), gen, prompt, 100, now),
      measured("3", run(cluster_, {{"a", 0}, {"a", 1}}, "a"), gen, prompt, 100, now),
      measured("4", run(cluster_, {{"a", 0}}, "a", 4), gen, prompt, 100, now),
  };
  const perf::Corrections c = learn(obs, now);
  for (const auto& [key, value] : gen) {
    ASSERT_TRUE(c.generation.count(key)) << key;
    EXPECT_NEAR(c.generation.at(key).value, value, 0.05 * value) << key;
    EXPECT_GE(c.generation.at(key).samples, 100) << key;
  }
  ASSERT_TRUE(c.prompt.count("gpu:NVIDIA H100 SXM"));
  EXPECT_NEAR(c.prompt.at("gpu:NVIDIA H100 SXM").value, 1.3, 0.05 * 1.3);
  // The A100 was never measured: no factor, the catalog stands.
  EXPECT_FALSE(c.generation.count("gpu:NVIDIA A100 80GB"));
}

TEST_F(Corrections, AppliesOnlyWithEnoughRequestsAndOldEvidenceFades) {
  const std::map<std::string, double> slow = {{"gpu:NVIDIA H100 SXM", 3.0}};
  const std::map<std::string, double> fine = {{"gpu:NVIDIA H100 SXM", 1.2}};
  const Prediction p = run(cluster_, {{"a", 0}}, "a");
  const std::int64_t now = 100 * kDayMs;
  EXPECT_TRUE(learn({measured("1", p, slow, {}, 10, now)}, now).empty());
  EXPECT_FALSE(learn({measured("1", p, slow, {}, 25, now)}, now).empty());
  // Evidence a month old (four half-lives) weighs a sixteenth: the fresh one decides.
  const std::vector<Observation> both = {measured("old", p, slow, {}, 100, now - 28 * kDayMs),
                                         measured("new", p, fine, {}, 60, now)};
  const double learned = learn(both, now).generation.at("gpu:NVIDIA H100 SXM").value;
  EXPECT_LT(std::abs(learned - 1.2), std::abs(learned - 3.0) / 4) << learned;
  // Evidence that old is forgotten, and the newest observations are kept first.
  const std::vector<Observation> kept = retained(both, now + 30 * kDayMs, 10);
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].id, "new");
  EXPECT_EQ(retained(both, now, 1).front().id, "new");
}

TEST_F(Corrections, FilesRoundTripAndBadOnesSayWhy) {
  perf::Corrections c;
  c.generation = {{"gpu:NVIDIA L4", {1.8, 42}}, {"link:a|b", {2.5, 30}}};
  c.prompt = {{"cpu:a", {0.7, 21}}};
  c.updated_ms = 1234;
  const perf::Corrections back = corrections_from_json(corrections_json(c));
  EXPECT_EQ(back.generation_values(), c.generation_values());
  EXPECT_EQ(back.prompt_values(), c.prompt_values());
  EXPECT_EQ(back.updated_ms, 1234);
  const Observation o = measured("x", run(cluster_, {{"a", 0}}, "a"), {}, {}, 5, 7);
  const Observation o2 = observation_from_json(observation_json(o));
  EXPECT_EQ(o2.id, "x");
  EXPECT_DOUBLE_EQ(o2.basis.generation.seconds({}), o.basis.generation.seconds({}));

  auto why = [](const nlohmann::json& j) {
    try {
      corrections_from_json(j);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  nlohmann::json good = corrections_json(c);
  EXPECT_NE(why({{"format", "other"}}).find("format"), std::string::npos);
  nlohmann::json bad = good;
  bad["factors"][0]["key"] = "disk:x";
  EXPECT_NE(why(bad).find("factors[0]: key 'disk:x'"), std::string::npos) << why(bad);
  bad = good;
  bad["factors"][1]["value"] = -1;
  EXPECT_NE(why(bad).find("factors[1]: value must be positive"), std::string::npos) << why(bad);
  bad = good;
  bad["factors"][2]["kind"] = "memory";
  EXPECT_NE(why(bad).find("kind"), std::string::npos) << why(bad);
}

TEST_F(Corrections, APlanWithTheFactorsChoosesDifferentlyAndSaysBothPredictions) {
  // Two workers that each hold the model: a's H100 beats b's A100 on paper.
  cluster::Cluster two = cluster::parse_cluster(R"(
workers:
  - {name: a, cpu: {cores: 8, memory_bandwidth: 50GB/s}, gpus: [{name: NVIDIA H100 SXM}]}
  - {name: b, cpu: {cores: 8, memory_bandwidth: 50GB/s}, gpus: [{name: NVIDIA A100 80GB}]}
)");
  plan::Request r;
  r.model_path = "m.gguf";
  r.allow_distributed = false;
  const plan::Plan before = plan::make_plan(*model_, two, r);
  ASSERT_TRUE(before.feasible);
  EXPECT_EQ(before.replicas[0].chosen.main_worker, "a");
  // The fleet measured a's H100 at a third of its catalog speed.
  perf::Corrections c;
  c.generation = {{"gpu:NVIDIA H100 SXM", {3.0, 40}}};
  plan::Plan after;
  const plan::CalibrationNote note = plan::plan_calibrated(*model_, two, c, r, after);
  ASSERT_TRUE(after.feasible);
  EXPECT_EQ(after.replicas[0].chosen.main_worker, "b");
  EXPECT_TRUE(note.model_alone_differs);
  EXPECT_EQ(note.model_alone_main, "a");
  EXPECT_NEAR(note.model_alone_tokens_per_s,
              before.replicas[0].chosen.prediction.generation_tokens_per_s, 1e-9);
  EXPECT_LT(note.model_alone_corrected_tokens_per_s, note.corrected_tokens_per_s);
  EXPECT_NE(note.sentence.find("alone would choose main a"), std::string::npos) << note.sentence;
  ASSERT_EQ(note.factors.size(), 1u);
  EXPECT_NE(note.factors[0].find("3.00x"), std::string::npos) << note.factors[0];
}

}  // namespace
}  // namespace ggfleet::perf
