// 50 concurrent clients creating, scaling and deleting deployments against a fleet of simulated
// workers (GGFLEET_CONSISTENCY_SECONDS, default 60), on SQLite and on PostgreSQL; and the same
// load with the server process killed (-9) in the middle and started again on the same data.
// Afterwards no GPU is over-claimed, no instance is lost or duplicated, and every deployment has
// its replica count of instances, placed or pending with a reason.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>

#include "consistency.h"
#include "server_fixture.h"

namespace ggfleet::test {
namespace {

using nlohmann::json;

double load_seconds() {
  const char* v = std::getenv("GGFLEET_CONSISTENCY_SECONDS");
  return v ? std::atof(v) : 60.0;
}

json fleet_resources(int i) {
  return resources(1 + i % 4, 128ull << 30);
}

// Runs `clients` threads of random operations until `until`; returns the number of 5xx replies.
int run_clients(int port, int clients, const std::string& model,
                std::chrono::steady_clock::time_point until, std::atomic<int>* ops) {
  std::atomic<int> server_errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      Api api(port);
      std::mt19937 rng(static_cast<std::uint32_t>(t));
      std::vector<std::string> mine;
      int next = 0;
      while (std::chrono::steady_clock::now() < until) {
        const int op = static_cast<int>(rng() % 10);
        Reply r;
        if (op < 4 && mine.size() < 3) {
          const std::string name = "c" + std::to_string(t) + "-" + std::to_string(next++);
          r = api.post("/v1/deployments", ServerFixture::kAdmin,
                       {{"name", name},
                        {"model", model},
                        {"replicas", 1 + rng() % 3},
                        {"options", {{"context", 2048}}}});
          if (r.status == 201) mine.push_back(name);
        } else if (op < 7 && !mine.empty()) {
          r = api.send("PATCH", "/v1/deployments/" + mine[rng() % mine.size()],
                       ServerFixture::kAdmin, json{{"replicas", rng() % 5}}.dump());
        } else if (op < 9 && !mine.empty()) {
          const std::size_t k = rng() % mine.size();
          r = api.send("DELETE", "/v1/deployments/" + mine[k], ServerFixture::kAdmin);
          if (r.status == 200 || r.status == 404)
            mine.erase(mine.begin() + static_cast<std::ptrdiff_t>(k));
        } else {
          r = api.get("/v1/instances", ServerFixture::kAdmin);
        }
        if (r.status >= 500) ++server_errors;
        if (ops) ++*ops;
        std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 40));
      }
    });
  }
  for (std::thread& th : threads) th.join();
  return server_errors;
}

class Consistency : public ::testing::TestWithParam<std::string> {};

TEST_P(Consistency, FiftyClientsForAMinute) {
  ServerFixture f(GetParam());
  if (!f.available()) GTEST_SKIP() << "no PostgreSQL (set GGFLEET_TEST_PG_URL)";
  SimulatedWorkers workers(f.port(), 12, std::chrono::milliseconds(1000), fleet_resources);
  const std::string model = f.model();
  std::atomic<int> ops{0};
  std::atomic<bool> done{false};
  std::vector<std::string> during;
  std::thread checker([&] {  // the safety invariants hold all along, not only at the end
    store::Store s(f.db_target());
    while (!done) {
      // Read as one snapshot: a problem seen here is a state the server committed.
      for (const std::string& p : consistency_problems(s, false)) {
        std::printf("during the load: %s\n", p.c_str());
        during.push_back(p);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  });
  const int errors =
      run_clients(f.port(), 50, model,
                  std::chrono::steady_clock::now() +
                      std::chrono::milliseconds(static_cast<int>(load_seconds() * 1000)),
                  &ops);
  done = true;
  checker.join();
  EXPECT_EQ(errors, 0);
  EXPECT_GT(ops.load(), 500);
  EXPECT_TRUE(during.empty()) << during.front();
  const std::vector<std::string> problems = settle(f.db_target());
  EXPECT_TRUE(problems.empty()) << problems.front();
  store::Store s(f.db_target());
  std::printf("%d operations; %zu deployments, %zu instances at the end\n", ops.load(),
              s.deployments().size(), s.instances().size());
}

INSTANTIATE_TEST_SUITE_P(Backends, Consistency, ::testing::ValuesIn(store_backends()),
                         [](const auto& p) { return p.param; });

// A `ggfleet server` child process.
pid_t start_server(const std::string& data_dir, int port) {
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string listen = "127.0.0.1:" + std::to_string(port);
    execl(GGFLEET_BINARY, GGFLEET_BINARY, "server", "--data-dir", data_dir.c_str(), "--listen",
          listen.c_str(), "--admin-key", ServerFixture::kAdmin, "--join-token",
          ServerFixture::kJoin, static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

bool wait_healthy(int port, double seconds = 20) {
  for (int i = 0; i < static_cast<int>(seconds * 10); ++i) {
    Api api(port);
    if (api.get("/healthz", "").status == 200) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

TEST(Restart, KillMinusNineMidLoadThenRecover) {
  TempDir dir;
  const std::string data = dir.file("data");
  // Below the ephemeral range (32768+) and apart from the instance port ranges.
  const int port = 31000 + static_cast<int>(getpid() % 700);
  pid_t pid = start_server(data, port);
  ASSERT_TRUE(wait_healthy(port));
  const std::string model = ggfleet::model::synth("llama3-8b-q4_0", dir.file("models"), {}).front();
  const double seconds = std::max(8.0, load_seconds() / 4);
  std::atomic<int> ops{0};
  {
    SimulatedWorkers workers(port, 8, std::chrono::milliseconds(500), fleet_resources);
    std::thread killer([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int>(seconds * 500)));
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      pid = start_server(data, port);
    });
    run_clients(port, 20, model,
                std::chrono::steady_clock::now() +
                    std::chrono::milliseconds(static_cast<int>(seconds * 1000)),
                &ops);
    killer.join();
    ASSERT_TRUE(wait_healthy(port));
    const std::vector<std::string> problems = settle(data + "/ggfleet.db");
    EXPECT_TRUE(problems.empty()) << problems.front();
  }
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  EXPECT_GT(ops.load(), 100);
}

}  // namespace
}  // namespace ggfleet::test
