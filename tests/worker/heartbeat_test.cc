// What a worker's heartbeat carries: parts that changed for the server since it acknowledged
// them, every part on the first beat, after forget() and when a full report is due.
#include "worker/heartbeat.h"

#include <gtest/gtest.h>

#include <set>

namespace ggfleet::worker {
namespace {

using nlohmann::json;
using Clock = HeartbeatDelta::Clock;
constexpr double kMiB = 1024.0 * 1024.0;

json parts(double gpu_used, const std::string& state, double host_bytes) {
  return {{"resources",
           {{"gpus", json::array({{{"name", "NVIDIA L40S"}, {"used", gpu_used}}})},
            {"ram", {{"total", 256.0 * 1024 * kMiB}, {"used", 8.0 * 1024 * kMiB}}}}},
          {"instances", json::array({{{"id", "i1"}, {"state", state}, {"port", 9000}}})},
          {"memory", json::array({{{"id", "i1"}, {"host_bytes", host_bytes}}})}};
}

TEST(SameForTheServer, NumbersThatAlwaysMoveHaveATolerance) {
  const json a = parts(1000 * kMiB, "running", 4000 * kMiB);
  EXPECT_TRUE(same_for_the_server(a, parts(1030 * kMiB, "running", 4030 * kMiB)));
  // 64 MiB more used on the GPU, or a process holding 1 % more: the server acts on that.
  EXPECT_FALSE(same_for_the_server(a, parts(1065 * kMiB, "running", 4000 * kMiB)));
  EXPECT_FALSE(same_for_the_server(a, parts(1000 * kMiB, "running", 4050 * kMiB)));
  // Anything else must be equal: a state, a key more, an entry more.
  EXPECT_FALSE(same_for_the_server(a, parts(1000 * kMiB, "loading", 4000 * kMiB)));
  json more = a;
  more["resources"]["llama"] = {{"build", "b1"}};
  EXPECT_FALSE(same_for_the_server(a, more));
  more = a;
  more["instances"].push_back({{"id", "i2"}, {"state", "starting"}});
  EXPECT_FALSE(same_for_the_server(a, more));
  // A tolerance belongs to its key only: a port is not "used".
  json port = a;
  port["instances"][0]["port"] = 9001;
  EXPECT_FALSE(same_for_the_server(a, port));
}

TEST(HeartbeatDelta, SendsWhatChangedSinceAcknowledged) {
  HeartbeatDelta delta(std::chrono::seconds(30), 1);
  const auto t0 = Clock::now();
  const json p = parts(1000 * kMiB, "running", 4000 * kMiB);
  // The first beat carries everything.
  HeartbeatDelta::Beat beat = delta.next(p, t0);
  EXPECT_TRUE(beat.full);
  EXPECT_EQ(beat.body, p);
  // Not acknowledged (the server did not answer 200): sent again.
  EXPECT_EQ(delta.next(p, t0 + std::chrono::seconds(2)).body, p);
  delta.acknowledged(beat, t0);
  // Nothing changed for the server: "{}".
  beat = delta.next(parts(1010 * kMiB, "running", 4001 * kMiB), t0 + std::chrono::seconds(2));
  EXPECT_FALSE(beat.full);
  EXPECT_EQ(beat.body, json::object());
  // A state changed: the instances alone, until acknowledged.
  const json loading = parts(1000 * kMiB, "loading", 4000 * kMiB);
  beat = delta.next(loading, t0 + std::chrono::seconds(4));
  EXPECT_EQ(beat.body, json({{"instances", loading["instances"]}}));
  EXPECT_EQ(delta.next(loading, t0 + std::chrono::seconds(6)).body, beat.body);
  delta.acknowledged(beat, t0 + std::chrono::seconds(6));
  EXPECT_EQ(delta.next(loading, t0 + std::chrono::seconds(8)).body, json::object());
  // Small moves pile up: they are measured against what the server knows, not the last beat.
  EXPECT_EQ(
      delta.next(parts(1050 * kMiB, "loading", 4000 * kMiB), t0 + std::chrono::seconds(8)).body,
      json::object());
  EXPECT_TRUE(delta.next(parts(1070 * kMiB, "loading", 4000 * kMiB), t0 + std::chrono::seconds(8))
                  .body.contains("resources"));
  // Asked for one part, or for all.
  delta.forget("instances");
  EXPECT_EQ(delta.next(loading, t0 + std::chrono::seconds(8)).body,
            json({{"instances", loading["instances"]}}));
  delta.forget();
  beat = delta.next(loading, t0 + std::chrono::seconds(8));
  EXPECT_TRUE(beat.full);
  EXPECT_EQ(beat.body, loading);
}

TEST(HeartbeatDelta, EveryPartGoesOncePerPeriodDrawnAroundFullEvery) {
  const json p = parts(1000 * kMiB, "running", 4000 * kMiB);
  const auto t0 = Clock::now();
  std::set<Clock::duration::rep> periods;
  for (std::uint32_t seed = 1; seed <= 20; ++seed) {
    HeartbeatDelta delta(std::chrono::seconds(30), seed);
    delta.acknowledged(delta.next(p, t0), t0);
    const auto due = delta.full_due();
    EXPECT_GE(due, t0 + std::chrono::seconds(15));
    EXPECT_LT(due, t0 + std::chrono::seconds(45));
    periods.insert((due - t0).count());
    // Nothing before it, every part from then on, and the next period counts from the full
    // report acknowledged.
    EXPECT_EQ(delta.next(p, due - std::chrono::milliseconds(1)).body, json::object());
    const HeartbeatDelta::Beat full = delta.next(p, due);
    EXPECT_TRUE(full.full);
    EXPECT_EQ(full.body, p);
    delta.acknowledged(full, due + std::chrono::seconds(1));
    EXPECT_GE(delta.full_due(), due + std::chrono::seconds(16));
    EXPECT_EQ(delta.next(p, due + std::chrono::seconds(2)).body, json::object());
  }
  // Workers started together spread their full reports.
  EXPECT_GT(periods.size(), 15u);
}

TEST(HeartbeatDelta, ARegistrationCarriedTheResources) {
  HeartbeatDelta delta(std::chrono::seconds(30), 3);
  const auto t0 = Clock::now();
  const json p = parts(1000 * kMiB, "running", 4000 * kMiB);
  delta.registered(p["resources"], t0);
  // The reports follow; the resources only when they move.
  HeartbeatDelta::Beat beat = delta.next(p, t0 + std::chrono::seconds(1));
  EXPECT_FALSE(beat.full);
  EXPECT_EQ(beat.body, json({{"instances", p["instances"]}, {"memory", p["memory"]}}));
  delta.acknowledged(beat, t0 + std::chrono::seconds(1));
  EXPECT_EQ(delta.next(p, t0 + std::chrono::seconds(3)).body, json::object());
  // Registered again (another server): what the earlier one acknowledged no longer counts.
  delta.registered(p["resources"], t0 + std::chrono::seconds(5));
  EXPECT_EQ(delta.next(p, t0 + std::chrono::seconds(6)).body.size(), 2u);
  // A worker with nothing running has nothing to tell after registering: `{}`, until it has.
  json idle = p;
  idle["instances"] = json::array();
  idle["memory"] = json::array();
  HeartbeatDelta fresh(std::chrono::seconds(30), 4);
  fresh.registered(p["resources"], t0);
  EXPECT_EQ(fresh.next(idle, t0 + std::chrono::seconds(1)).body, json::object());
  EXPECT_EQ(fresh.next(p, t0 + std::chrono::seconds(1)).body.size(), 2u);
}

}  // namespace
}  // namespace ggfleet::worker
