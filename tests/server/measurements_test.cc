// The measured side of predictions (src/server/measurements.h) on a real store: what counts as
// a sample, single-stream apart from concurrent, the deviation event and its end, a server
// restart that continues the stored summary, memory next to the estimate, and the learner
// (src/server/learning.h) that turns measured placements into stored factors.
#include "server/measurements.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>
#include <tuple>

#include "server/learning.h"
#include "store/test_db.h"

namespace ggfleet::server {
namespace {

using nlohmann::json;

class MeasurementsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store_ = std::make_unique<store::Store>(db_.target());
    ASSERT_TRUE(store_->create_deployment({"chat", "/m.gguf", "{}", 1, 1, 1}));
    store::InstanceRow i;
    i.id = "chat-1";
    i.deployment = "chat";
    i.state = InstanceState::kRunning;
    i.predicted_tokens_per_s = 100;
    store_->put_instance(i);
  }
  std::vector<std::string> events() {
    std::vector<std::string> out;
    for (const store::EventRow& e : store_->events()) out.push_back(e.kind + ": " + e.message);
    return out;
  }
  test::TestDb db_{"sqlite"};
  std::unique_ptr<store::Store> store_;
};

Timings timing(double generated, double seconds, bool alone, double prompt = 0,
               double prompt_s = 0) {
  Timings t;
  t.generated_tokens = generated;
  t.generation_s = seconds;
  t.prompt_tokens = prompt;
  t.prompt_s = prompt_s;
  t.alone = alone;
  return t;
}

TEST_F(MeasurementsTest, SamplesDeviationAndRestart) {
  Measurements m;
  EXPECT_TRUE(m.view("chat-1").is_null());
  m.record("chat-1", timing(1, 0.01, true, 10, 0.1));  // one token, short prompt: no speed
  m.record("chat-1", timing(50, 1.0, false));          // shared: apart
  json v = m.view("chat-1");
  EXPECT_EQ(v["samples"], 1);
  EXPECT_TRUE(v["generation_tokens_per_s"].is_null()) << v.dump();
  EXPECT_TRUE(v["prompt_tokens_per_s"].is_null()) << v.dump();
  EXPECT_EQ(v["concurrent"]["samples"], 1);
  EXPECT_DOUBLE_EQ(v["concurrent"]["generation_tokens_per_s"].get<double>(), 50);
  // 19 more single-stream requests at 50 tokens/s (prediction 100): not yet 20 in the window.
  for (int k = 0; k < 19; ++k) m.record("chat-1", timing(10, 0.2, true, 64, 0.5));
  m.flush(*store_);
  for (const std::string& e : events()) EXPECT_EQ(e.find("speed"), std::string::npos) << e;
  m.record("chat-1", timing(10, 0.2, true));
  m.flush(*store_);
  v = m.view("chat-1");
  EXPECT_EQ(v["samples"], 21);
  EXPECT_EQ(v["generation_samples"], 20);
  EXPECT_EQ(v["prompt_samples"], 19);
  EXPECT_DOUBLE_EQ(v["generation_tokens_per_s"].get<double>(), 50);
  EXPECT_DOUBLE_EQ(v["prompt_tokens_per_s"].get<double>(), 128);
  ASSERT_EQ(events().size(), 1u);
  EXPECT_EQ(events()[0],
            "instance.speed_deviation: measured 50.0 tokens/s over the last 20 single-stream "
            "requests, predicted 100.0 (-50.0 %)");
  m.flush(*store_);  // nothing new: no second event
  EXPECT_EQ(events().size(), 1u);

  // A restarted server continues the stored summary; back within 25 %: the event's end.
  Measurements after;
  after.flush(*store_);
  EXPECT_EQ(after.view("chat-1")["samples"], 21);
  for (int k = 0; k < 20; ++k) after.record("chat-1", timing(19, 0.2, true));
  after.flush(*store_);
  EXPECT_EQ(after.view("chat-1")["samples"], 41);
  ASSERT_EQ(events().size(), 2u);
  EXPECT_EQ(events()[1].rfind("instance.speed_ok: measured 95.0 tokens/s", 0), 0u) << events()[1];

  // Deleted with its instance; a late record of a deleted instance is not stored.
  EXPECT_TRUE(store_->delete_instance("chat-1"));
  after.record("chat-1", timing(10, 0.2, true));
  after.flush(*store_);
  EXPECT_TRUE(store_->measurements().empty());
  EXPECT_TRUE(after.view("chat-1").is_null());
}

// The chart's series: every request with a rate, newest last, at most kHistory, kept across a
// restart of the server; requests too short for a rate are not points.
TEST_F(MeasurementsTest, HistoryKeepsTheLastRequestsAcrossARestart) {
  Measurements m;
  m.record("chat-1", timing(1, 0.01, true, 10, 0.1));  // no rate: not a point
  EXPECT_TRUE(m.view("chat-1")["history"].empty());
  m.record("chat-1", timing(20, 0.5, true, 64, 0.25));
  m.record("chat-1", timing(30, 1.0, false));
  json h = m.view("chat-1")["history"];
  ASSERT_EQ(h.size(), 2u) << h.dump();
  EXPECT_DOUBLE_EQ(h[0]["generation_tokens_per_s"].get<double>(), 40);
  EXPECT_DOUBLE_EQ(h[0]["prompt_tokens_per_s"].get<double>(), 256);
  EXPECT_TRUE(h[0]["alone"].get<bool>());
  EXPECT_TRUE(h[1]["prompt_tokens_per_s"].is_null());
  EXPECT_FALSE(h[1]["alone"].get<bool>());
  EXPECT_LE(h[0]["time_ms"].get<std::int64_t>(), h[1]["time_ms"].get<std::int64_t>());
  for (int k = 0; k < 200; ++k) m.record("chat-1", timing(10 + k, 1.0, true));
  h = m.view("chat-1")["history"];
  ASSERT_EQ(h.size(), Measurements::kHistory);
  EXPECT_DOUBLE_EQ(h.back()["generation_tokens_per_s"].get<double>(), 209);
  m.flush(*store_);
  Measurements after;
  after.flush(*store_);
  EXPECT_EQ(after.view("chat-1")["history"], h);
}

}  // namespace
}  // namespace ggfleet::server

namespace ggfleet::server {
namespace {

// An instance placed on w0's GPU 0 (1000 MiB estimated) with 200 MiB on its main's host.
std::string assignment(const std::string& placement) {
  const json a = {
      {"placement", placement},
      {"plan",
       {{"layout",
         {{"main_worker", "w0"},
          {"devices",
           {{{"name", "RPC0"}, {"worker", "w0"}, {"gpu", 0}, {"vram_bytes", 1000.0 * 1048576}}}},
          {"host", {{"total_bytes", 200.0 * 1048576}}}}}}}};
  return a.dump();
}

TEST_F(MeasurementsTest, MemoryNextToTheEstimateAndANewPlacementStartsAgain) {
  store::InstanceRow i = *store_->instance("chat-1");
  i.assignment_json = assignment("7");
  store_->put_instance(i);
  Measurements m;
  const json a = json::parse(i.assignment_json);
  json view = m.memory_view("chat-1", a);
  ASSERT_EQ(view.size(), 2u);  // the GPU and the host, not measured yet
  EXPECT_EQ(view[0]["device"], "RPC0");
  EXPECT_TRUE(view[0]["measured_bytes"].is_null());
  m.memory("chat-1", "w0:0", 1020.0 * 1048576);  // within 5 %: no event
  m.memory("chat-1", "w0:host", 150.0 * 1048576);
  m.record("chat-1", timing(10, 0.1, true));
  m.flush(*store_);
  EXPECT_TRUE(events().empty());
  m.memory("chat-1", "w0:0", 1100.0 * 1048576);  // +10 %: the event, once
  m.memory("chat-1", "w0:0", 900.0 * 1048576);   // the peak stays
  m.flush(*store_);
  m.memory("chat-1", "w0:0", 1101.0 * 1048576);
  m.flush(*store_);
  const std::vector<std::string> e = events();
  ASSERT_EQ(e.size(), 1u) << ::testing::PrintToString(e);
  EXPECT_NE(e[0].find("instance.memory_over_estimate: w0:0: measured 1100.0 MiB, estimated "
                      "1000.0 MiB (+10.0 %)"),
            std::string::npos)
      << e[0];
  view = m.memory_view("chat-1", a);
  EXPECT_DOUBLE_EQ(view[0]["measured_bytes"].get<double>(), 1101.0 * 1048576);
  EXPECT_DOUBLE_EQ(view[0]["peak_bytes"].get<double>(), 1101.0 * 1048576);
  EXPECT_EQ(view[1]["device"], "host");
  EXPECT_DOUBLE_EQ(view[1]["measured_bytes"].get<double>(), 150.0 * 1048576);
  // A restarted server shows what was stored.
  Measurements again;
  again.flush(*store_);
  EXPECT_DOUBLE_EQ(again.memory_view("chat-1", a)[0]["peak_bytes"].get<double>(), 1101.0 * 1048576);
  EXPECT_EQ(again.delivered().at("chat-1").placement, "7");
  // Placed anew: speed and memory of the old layout are gone from the instance's view.
  i.assignment_json = assignment("8");
  store_->put_instance(i);
  m.record("chat-1", timing(10, 0.1, true));
  m.flush(*store_);
  EXPECT_TRUE(m.memory_view("chat-1", a)[0]["measured_bytes"].is_null());
  EXPECT_EQ(m.delivered().at("chat-1").placement, "8");
  EXPECT_EQ(m.view("chat-1")["samples"], 0);
}

// Two servers measure one instance: one proxies requests, the worker reports memory to both (its
// heartbeats moved). Each shows the requests of both and the latest memory, and neither's row
// overwrites the other's (before, each wrote the instance's one row: last writer won).
TEST_F(MeasurementsTest, SeveralServersAddUpInsteadOfOverwriting) {
  store::InstanceRow i = *store_->instance("chat-1");
  i.assignment_json = assignment("7");
  store_->put_instance(i);
  const json a = json::parse(i.assignment_json);
  Measurements one, two;
  EXPECT_NE(one.writer(), two.writer());
  for (int k = 0; k < 10; ++k) one.record("chat-1", timing(10, 0.2, true));  // 50 tokens/s
  for (int k = 0; k < 30; ++k) two.record("chat-1", timing(10, 0.1, true));  // 100 tokens/s
  one.memory("chat-1", "w0:0", 1100.0 * 1048576);
  one.flush(*store_);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  two.memory("chat-1", "w0:0", 900.0 * 1048576);  // reported later, to the other server
  two.flush(*store_);
  one.record("chat-1", timing(10, 0.2, true));  // (a change: `one` reads the others again)
  one.flush(*store_);
  // `two` read `one`'s row before its last request; `one` read everything.
  for (const auto& [m, samples, tokens, seconds] :
       {std::tuple{&one, 41, 410.0, 5.2}, std::tuple{&two, 40, 400.0, 5.0}}) {
    const json v = m->view("chat-1");
    EXPECT_EQ(v["samples"], samples) << v.dump();
    EXPECT_DOUBLE_EQ(v["generation_tokens_per_s"].get<double>(), tokens / seconds) << v.dump();
    EXPECT_EQ(v["history"].size(), static_cast<std::size_t>(samples));
    const json memory = m->memory_view("chat-1", a);
    EXPECT_DOUBLE_EQ(memory[0]["measured_bytes"].get<double>(), 900.0 * 1048576);
    EXPECT_DOUBLE_EQ(memory[0]["peak_bytes"].get<double>(), 1100.0 * 1048576);
    EXPECT_EQ(m->delivered().at("chat-1").generation_samples, samples);
  }
  EXPECT_EQ(store_->measurements().at("chat-1").size(), 2u);
  Measurements third;  // another server, or one of these restarted
  third.flush(*store_);
  EXPECT_EQ(third.view("chat-1")["samples"], 41);
  // The memory event was announced once (by `one`), not again by the others.
  third.memory("chat-1", "w0:0", 1200.0 * 1048576);
  third.flush(*store_);
  int announced = 0;
  for (const std::string& e : events())
    announced += e.find("memory_over_estimate") != std::string::npos;
  EXPECT_EQ(announced, 1) << ::testing::PrintToString(events());
  // A download reported to one server shows on the others; its end (null) too.
  const json progress = {{"done_bytes", 5}, {"total_bytes", 10}};
  two.download("chat-1", progress);
  two.flush(*store_);
  EXPECT_EQ(two.download_view("chat-1"), progress);
  third.record("chat-1", timing(10, 0.2, true));  // (a change: `third` reads the others again)
  third.flush(*store_);
  EXPECT_EQ(third.download_view("chat-1"), progress);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  third.download("chat-1", nullptr);
  third.flush(*store_);
  EXPECT_TRUE(third.download_view("chat-1").is_null());
  Measurements fourth;
  fourth.flush(*store_);
  EXPECT_TRUE(fourth.download_view("chat-1").is_null()) << fourth.download_view("chat-1");
  EXPECT_TRUE(one.download_view("chat-1").is_null()) << "nothing new for `one` yet";
}

}  // namespace
}  // namespace ggfleet::server

namespace ggfleet::server {
namespace {

// The learner on a real store: a measured placement becomes an observation of its basis, the
// factor is stored and announced, and a restarted server starts with it.
TEST_F(MeasurementsTest, LearnerStoresFactorsAndARestartStartsWithThem) {
  perf::PredictionBasis basis;  // predicted 10 ms per token: 8 ms of H100 reads, 2 ms fixed
  basis.generation.parts_s["gpu:NVIDIA H100 SXM"] = 0.008;
  basis.generation.rest_s = 0.002;
  basis.prompt.rest_s = 0.001;
  store::InstanceRow i = *store_->instance("chat-1");
  i.assignment_json = json{{"placement", "3"}, {"basis", perf::basis_json(basis)}}.dump();
  store_->put_instance(i);
  Measurements m;
  Learner learner({}, 0);
  m.flush(*store_);
  EXPECT_FALSE(learner.update(*store_, m));  // nothing measured, nothing stored
  for (int k = 0; k < 19; ++k) m.record("chat-1", timing(10, 0.26, true));  // 26 ms per token
  m.flush(*store_);
  EXPECT_FALSE(learner.update(*store_, m));  // 19 requests: not enough
  EXPECT_TRUE(learner.corrections().empty());
  for (int k = 0; k < 11; ++k) m.record("chat-1", timing(10, 0.26, true));
  m.flush(*store_);
  ASSERT_TRUE(learner.update(*store_, m));
  const perf::Corrections c = learner.corrections();
  ASSERT_EQ(c.generation.size(), 1u);
  // (26 - 2) / 8 = 3, pulled a little toward 1 by the prior.
  const double f = c.generation.at("gpu:NVIDIA H100 SXM").value;
  EXPECT_GT(f, 2.5);
  EXPECT_LT(f, 3.0);
  EXPECT_FALSE(learner.update(*store_, m));  // nothing new
  bool announced = false;
  for (const std::string& e : events())
    announced = announced || e.rfind("calibration.updated: learned from 1 placement", 0) == 0;
  EXPECT_TRUE(announced) << ::testing::PrintToString(events());
  EXPECT_EQ(learner.view()["observations"], 1);
  // A restarted server: the stored factors are news on its first pass.
  Learner again({}, 0);
  Measurements fresh;
  EXPECT_TRUE(again.update(*store_, fresh));
  EXPECT_DOUBLE_EQ(again.corrections().generation.at("gpu:NVIDIA H100 SXM").value, f);
}

}  // namespace
}  // namespace ggfleet::server
