// The store on both backends (same tests): migrations, every entity, transactions that roll back
// whole, claims that go with their instance, and concurrent writers.
#include "store/store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <thread>

#include "test_db.h"

namespace ggfleet::store {
namespace {

class StoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    db_ = std::make_unique<test::TestDb>(GetParam());
    if (!db_->available()) GTEST_SKIP() << "no PostgreSQL (set GGFLEET_TEST_PG_URL)";
    store_ = std::make_unique<Store>(db_->target());
  }
  std::unique_ptr<test::TestDb> db_;
  std::unique_ptr<Store> store_;
};

TEST_P(StoreTest, MigratesOnceAndReopens) {
  EXPECT_EQ(store_->backend(), GetParam());
  EXPECT_EQ(store_->schema_version(), 7);
  store_->put_worker({"w1", "10.0.0.1", "{}", WorkerStatus::kReady, "{}", 5, 1});
  store_.reset();
  Store again(db_->target());  // the same data, no second migration
  EXPECT_EQ(again.schema_version(), 7);
  ASSERT_TRUE(again.worker("w1").has_value());
  EXPECT_EQ(again.worker("w1")->address, "10.0.0.1");
}

// Migration 7 keeps the measurements written before it (one row per instance) as writer ''.
TEST_P(StoreTest, MeasurementsFromBeforeWritersAreKept) {
  store_->put_worker({"w1", "a1", "{}", WorkerStatus::kReady, "{}", 10, 1});
  ASSERT_TRUE(store_->create_deployment({"chat", "/m.gguf", "{}", 1, 1, 1}));
  InstanceRow i;
  i.id = "chat-1";
  i.deployment = "chat";
  store_->put_instance(i);
  store_.reset();
  {  // the table as schema 6 had it, with a row
    const std::unique_ptr<Db> db = open_db(db_->target());
    db->exec("DROP TABLE measurements");
    db->exec(
        "CREATE TABLE measurements (instance TEXT PRIMARY KEY, body TEXT NOT NULL, updated_ms "
        "BIGINT NOT NULL)");
    db->exec("INSERT INTO measurements VALUES ('chat-1', '{\"samples\":3}', 5)");
    db->exec("DELETE FROM schema_migrations WHERE version = 7");
  }
  Store again(db_->target());
  EXPECT_EQ(again.schema_version(), 7);
  EXPECT_EQ(again.measurements(), (std::map<std::string, std::map<std::string, std::string>>{
                                      {"chat-1", {{"", R"({"samples":3})"}}}}));
}

TEST_P(StoreTest, WorkersDeploymentsInstancesClaims) {
  store_->put_worker(
      {"w1", "a1", R"({"zone":"x"})", WorkerStatus::kReady, R"({"gpus":[]})", 10, 1});
  store_->put_worker({"w1", "a2", "{}", WorkerStatus::kReady, "{}", 20, 1});  // replaces
  EXPECT_EQ(store_->workers().size(), 1u);
  EXPECT_EQ(store_->worker("w1")->address, "a2");
  EXPECT_TRUE(store_->set_worker_status("w1", WorkerStatus::kDraining));
  EXPECT_EQ(store_->worker("w1")->status, WorkerStatus::kDraining);
  EXPECT_FALSE(store_->set_worker_status("nobody", WorkerStatus::kReady));

  EXPECT_TRUE(store_->create_deployment({"chat", "/m.gguf", "{}", 2, 1, 1}));
  EXPECT_FALSE(store_->create_deployment({"chat", "/other.gguf", "{}", 1, 1, 1}));
  DeploymentRow d = *store_->deployment("chat");
  EXPECT_EQ(d.generation, 1);
  d.replicas = 3;
  d.generation = 2;
  EXPECT_TRUE(store_->update_deployment(d));
  EXPECT_EQ(store_->deployment("chat")->replicas, 3);
  EXPECT_EQ(store_->deployment("chat")->generation, 2);

  InstanceRow i;
  i.id = "chat-" + store_->next_id("instances");
  i.deployment = "chat";
  i.predicted_tokens_per_s = 12.5;
  i.generation = 2;
  store_->put_instance(i);
  store_->set_claims(i.id, {{i.id, "w1", 0, 1000, false}, {i.id, "w1", -1, 500, false}});
  i.state = InstanceState::kRunning;
  store_->put_instance(i);  // an update keeps the claims
  EXPECT_EQ(store_->claims().size(), 2u);
  EXPECT_EQ(store_->instance(i.id)->state, InstanceState::kRunning);
  EXPECT_DOUBLE_EQ(store_->instance(i.id)->predicted_tokens_per_s, 12.5);
  EXPECT_EQ(store_->instance(i.id)->generation, 2);
  EXPECT_NE(store_->next_id("instances"), store_->next_id("instances"));
  // A measurement is kept per existing instance and writer, replaced by that writer's next one.
  store_->put_measurement(i.id, "s1", R"({"samples":1})");
  store_->put_measurement(i.id, "s1", R"({"samples":2})");
  store_->put_measurement(i.id, "s2", R"({"samples":5})");
  store_->put_measurement("no-such-instance", "s1", R"({"samples":1})");
  EXPECT_EQ(store_->measurements(),
            (std::map<std::string, std::map<std::string, std::string>>{
                {i.id, {{"s1", R"({"samples":2})"}, {"s2", R"({"samples":5})"}}}}));

  // Calibration documents are named, replaced, and outlive the instances they came from.
  EXPECT_FALSE(store_->calibration("fleet").has_value());
  store_->put_calibration("fleet", R"({"v":1})");
  store_->put_calibration("fleet", R"({"v":2})");
  EXPECT_TRUE(store_->delete_deployment("chat"));  // instances, claims, measurements go with it
  EXPECT_EQ(store_->calibration("fleet").value_or(""), R"({"v":2})");
  EXPECT_TRUE(store_->instances().empty());
  EXPECT_TRUE(store_->claims().empty());
  EXPECT_TRUE(store_->measurements().empty());
  EXPECT_THROW(store_->put_instance(i), StoreError);  // no deployment any more
  // Claims exist only with their instance: the schema refuses anything else.
  EXPECT_THROW(store_->set_claims("no-such-instance", {{"no-such-instance", "w1", 0, 1, false}}),
               StoreError);
}

TEST_P(StoreTest, TransactionsRollBackWhole) {
  store_->create_deployment({"a", "/m", "{}", 1, 1, 1});
  EXPECT_THROW(store_->transaction([&] {
    store_->create_deployment({"b", "/m", "{}", 1, 1, 1});
    store_->put_worker({"w", "x", "{}", WorkerStatus::kReady, "{}", 1, 1});
    throw std::runtime_error("half way");
  }),
               std::runtime_error);
  EXPECT_FALSE(store_->deployment("b").has_value());
  EXPECT_FALSE(store_->worker("w").has_value());
  EXPECT_TRUE(store_->deployment("a").has_value());
}

TEST_P(StoreTest, SnapshotsSeeOneStateWhileOthersWrite) {
  store_->put_worker({"w1", "a1", "{}", WorkerStatus::kReady, "{}", 1, 1});
  Store writer(db_->target());
  std::size_t before = 0, after = 0;
  store_->snapshot([&] {
    before = store_->workers().size();
    writer.put_worker(
        {"w2", "a2", "{}", WorkerStatus::kReady, "{}", 1, 1});  // not blocked by the reader
    after = store_->workers().size();
  });
  EXPECT_EQ(before, 1u);
  EXPECT_EQ(after, 1u);                     // the same state all through the snapshot
  EXPECT_EQ(store_->workers().size(), 2u);  // and the write is there afterwards
}

TEST_P(StoreTest, KeysEventsAndVersions) {
  store_->put_key({"k1", "admin", "abc", "admin", "", 1});
  ASSERT_TRUE(store_->key_by_hash("abc").has_value());
  EXPECT_EQ(store_->key_by_hash("abc")->role, "admin");
  EXPECT_FALSE(store_->key_by_hash("abd").has_value());
  EXPECT_TRUE(store_->delete_key("k1"));
  EXPECT_TRUE(store_->keys().empty());

  for (int k = 0; k < 5; ++k)
    store_->event("instance.pending", k % 2 ? "x" : "y", "message " + std::to_string(k));
  const std::vector<EventRow> all = store_->events();
  ASSERT_EQ(all.size(), 5u);
  EXPECT_LT(all[0].id, all[4].id);
  EXPECT_EQ(store_->events(all[2].id).size(), 2u);
  EXPECT_EQ(store_->events(0, 200, "x").size(), 2u);

  const std::int64_t v = store_->assignment_version();
  store_->bump_assignment_version();
  EXPECT_EQ(store_->assignment_version(), v + 1);
}

TEST_P(StoreTest, ConcurrentWritersLoseNothing) {
  store_->create_deployment({"d", "/m", "{}", 1, 1, 1});
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < 25; ++k) {
        InstanceRow i;
        i.id = "d-" + store_->next_id("instances");
        i.deployment = "d";
        store_->transaction([&] {
          store_->put_instance(i);
          store_->set_claims(i.id, {{i.id, "w" + std::to_string(t), 0, 1, false}});
        });
      }
    });
  }
  for (std::thread& th : threads) th.join();
  const std::vector<InstanceRow> all = store_->instances("d");
  EXPECT_EQ(all.size(), 200u);
  std::set<std::string> ids;
  for (const InstanceRow& i : all) ids.insert(i.id);
  EXPECT_EQ(ids.size(), 200u);
  EXPECT_EQ(store_->claims().size(), 200u);
}

// Heartbeats written in one batch: the later time wins, an unreachable or unknown worker is not
// written (and not named in the answer); more rows than one statement takes.
TEST_P(StoreTest, TouchWorkersWritesLivenessInBatches) {
  store_->put_worker({"a", "x", "{}", WorkerStatus::kReady, "{}", 100, 1});
  store_->put_worker({"b", "x", "{}", WorkerStatus::kDraining, "{}", 900, 1});
  store_->put_worker({"c", "x", "{}", WorkerStatus::kUnreachable, "{}", 100, 1});
  std::map<std::string, std::int64_t> at = {{"a", 500}, {"b", 500}, {"c", 500}, {"gone", 500}};
  for (int k = 0; k < 1200; ++k) {
    const std::string name = "m" + std::to_string(k);
    store_->put_worker({name, "x", "{}", WorkerStatus::kReady, "{}", 1, 1});
    at[name] = 2;
  }
  std::vector<std::string> written = store_->touch_workers(at);
  std::sort(written.begin(), written.end());
  EXPECT_EQ(written.size(), 1202u);
  EXPECT_TRUE(std::binary_search(written.begin(), written.end(), "a"));
  EXPECT_TRUE(std::binary_search(written.begin(), written.end(), "b"));
  EXPECT_FALSE(std::binary_search(written.begin(), written.end(), "c"));
  EXPECT_EQ(store_->worker("a")->last_heartbeat_ms, 500);
  EXPECT_EQ(store_->worker("b")->last_heartbeat_ms, 900);  // its own was later
  EXPECT_EQ(store_->worker("b")->status, WorkerStatus::kDraining);
  EXPECT_EQ(store_->worker("c")->last_heartbeat_ms, 100);
  EXPECT_EQ(store_->worker("m1199")->last_heartbeat_ms, 2);
  EXPECT_FALSE(store_->worker("gone").has_value());
}

// Servers sharing PostgreSQL hear each other's assignment bumps when they commit (not before,
// not a rolled-back one); another schema's store hears nothing. SQLite serves one server: no
// listener.
TEST_P(StoreTest, AssignmentBumpsNotifyListenersOnCommit) {
  const std::unique_ptr<Db> listener = store_->listen_assignments();
  if (GetParam() == "sqlite") {
    EXPECT_EQ(listener, nullptr);
    return;
  }
  ASSERT_NE(listener, nullptr);
  Store other(db_->target());  // a second server on the same database
  test::TestDb elsewhere(GetParam());
  Store stranger(elsewhere.target());  // a cluster in another schema
  const std::unique_ptr<Db> stranger_listener = stranger.listen_assignments();
  EXPECT_FALSE(listener->await_notification(0));

  other.transaction([&] {
    other.bump_assignment_version();
    EXPECT_FALSE(listener->await_notification(200)) << "heard before the commit";
  });
  EXPECT_TRUE(listener->await_notification(5000));
  EXPECT_FALSE(listener->await_notification(200)) << "one bump, one wake";

  try {
    other.transaction([&] {
      other.bump_assignment_version();
      throw StoreError("rolled back on purpose");
    });
  } catch (const StoreError&) {
  }
  EXPECT_FALSE(listener->await_notification(300)) << "a rolled-back bump was heard";
  EXPECT_FALSE(stranger_listener->await_notification(0)) << "another schema's store was woken";
}

TEST_P(StoreTest, ModelRemovalsWaitInTheStoreUntilTaken) {
  EXPECT_FALSE(store_->ask_model_removal("nobody", "k1")) << "no such worker";
  store_->put_worker({"w1", "a1", "{}", WorkerStatus::kReady, "{}", 10, 1});
  store_->put_worker({"w2", "a2", "{}", WorkerStatus::kReady, "{}", 10, 1});
  const std::int64_t v0 = store_->assignment_version();
  EXPECT_TRUE(store_->ask_model_removal("w1", "k2"));
  EXPECT_TRUE(store_->ask_model_removal("w1", "k1"));
  EXPECT_TRUE(store_->ask_model_removal("w1", "k1"));  // asked twice: once
  EXPECT_TRUE(store_->ask_model_removal("w2", "k3"));
  const std::int64_t v1 = store_->assignment_version();
  EXPECT_GT(v1, v0) << "asking moves the version (every server republishes its board)";
  Store other(db_->target());  // what another server on the database sees
  EXPECT_EQ(other.model_removals(),
            (std::map<std::string, std::set<std::string>>{{"w1", {"k1", "k2"}}, {"w2", {"k3"}}}));
  EXPECT_EQ(other.take_model_removals("w1"), (std::vector<std::string>{"k1", "k2"}));
  EXPECT_GT(store_->assignment_version(), v1) << "taking moves it too";
  EXPECT_TRUE(store_->take_model_removals("w1").empty()) << "handed over once";
  const std::int64_t v2 = store_->assignment_version();
  EXPECT_TRUE(store_->take_model_removals("w1").empty());
  EXPECT_EQ(store_->assignment_version(), v2) << "taking nothing changes nothing";
  EXPECT_TRUE(store_->remove_worker("w2"));
  EXPECT_TRUE(store_->model_removals().empty()) << "a removed worker's requests go with it";
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, ::testing::ValuesIn(test::store_backends()),
                         [](const auto& p) { return p.param; });

}  // namespace
}  // namespace ggfleet::store
