// The scheduler on its own store: what one reconcile pass plans, and what it does not plan twice.
#include "server/scheduler.h"

#include <gtest/gtest.h>

#include <set>
#include <string>

#include "model/synth.h"
#include "server/server_fixture.h"
#include "store/store.h"
#include "test_util.h"

namespace ggfleet::test {
namespace {

store::WorkerRow worker(const std::string& name, const nlohmann::json& resources) {
  store::WorkerRow w;
  w.name = name;
  w.address = "127.0.0.1";
  w.resources_json = resources.dump();
  w.last_heartbeat_ms = w.registered_ms = store::now_ms();
  return w;
}

store::DeploymentRow deployment(const std::string& name, const std::string& model,
                                std::int64_t replicas) {
  store::DeploymentRow d;
  d.name = name;
  d.model = model;
  d.options_json = R"({"context": 2048})";
  d.replicas = replicas;
  d.created_ms = d.updated_ms = store::now_ms();
  return d;
}

std::set<std::string> pending_reasons(store::Store& s) {
  std::set<std::string> out;
  for (const store::InstanceRow& i : s.instances()) {
    if (i.state == InstanceState::kPending) out.insert(i.reason);
  }
  return out;
}

// An over-full fleet: replicas that do not fit cost one plan per pass, not one each; the answer
// is the one a plan gives, and a change of the fleet (a worker joins) plans them again.
TEST(Scheduler, ReplicasThatDoNotFitThisFleetArePlannedOncePerChange) {
  TempDir dir;
  store::Store s(dir.file("ggfleet.db"));
  const std::string model = model::synth("llama3-70b-q4_k_m", dir.file("models"), {}).front();
  s.put_worker(worker("tiny", resources(0, 8ull << 30)));
  ASSERT_TRUE(s.create_deployment(deployment("big", model, 5)));
  ASSERT_TRUE(s.create_deployment(deployment("also-big", model, 3)));
  server::Scheduler sched(s, {});

  server::ReconcileStats first = sched.reconcile();
  EXPECT_EQ(first.created, 8);
  EXPECT_EQ(first.pending, 8);
  EXPECT_EQ(first.remembered, 7) << "one plan for eight identical requests on one fleet";
  const std::set<std::string> reasons = pending_reasons(s);
  ASSERT_EQ(reasons.size(), 1u);
  EXPECT_EQ(reasons.begin()->rfind("does not fit", 0), 0u) << *reasons.begin();

  server::ReconcileStats second = sched.reconcile();
  EXPECT_EQ(second.pending, 8);
  EXPECT_EQ(second.remembered, 8) << "nothing changed: nothing planned";
  EXPECT_EQ(pending_reasons(s), reasons);

  // Another option is another request: planned on its own.
  store::DeploymentRow other = deployment("bigger-context", model, 2);
  other.options_json = R"({"context": 4096})";
  ASSERT_TRUE(s.create_deployment(other));
  server::ReconcileStats third = sched.reconcile();
  EXPECT_EQ(third.pending, 10);
  EXPECT_EQ(third.remembered, 9);

  // A worker with room for some of them joins: the fleet changed, so the requests are planned
  // again; those placed change it once more, so each request is planned again after them.
  s.put_worker(worker("roomy", resources(1, 16ull << 30, "NVIDIA H200")));
  server::ReconcileStats fourth = sched.reconcile();
  EXPECT_GT(fourth.placed, 0) << fourth.pending;
  EXPECT_GT(fourth.pending, 0);
  EXPECT_LE(fourth.remembered, fourth.pending - 2) << "both requests planned on the new fleet";
}

}  // namespace
}  // namespace ggfleet::test
