// The fleet of the end-to-end tests: a `ggfleet server` and three `ggfleet worker`s (declared
// GPUs served by llama.cpp's CPU build) as real processes. Each worker is a machine of its own: a
// network namespace with its own address where `ip netns` works (root), else a process on
// 127.0.0.1. A test may ask for more machines than workers (for a file server of its own) and
// add to the server's and the workers' command lines and environment.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../server/server_fixture.h"
#include "e2e_util.h"
#include "test_net.h"
#include "worker/process.h"

namespace ggfleet::test {

class FleetFixture : public ::testing::Test {
 protected:
  static constexpr const char* kAdmin = "e2e-admin";
  static constexpr const char* kJoin = "e2e-join";
  static constexpr int kWorkers = 3;

  explicit FleetFixture(int machines = kWorkers) : net_(machines) {}

  // Hooks for a test's own fleet.
  virtual std::map<std::string, std::string> server_env() { return {}; }
  virtual std::vector<std::string> server_args() { return {}; }
  virtual std::vector<std::string> worker_args(int /*i*/) { return {}; }

  void SetUp() override {
    llama_ = llama_cpp_dir() + "/bin";
    GGFLEET_REQUIRE_PATH(llama_ + "/llama-server");
    GGFLEET_REQUIRE_PATH(llama_ + "/ggml-rpc-server");
    std::cout << (net_.available()
                      ? "[ machines ] one network namespace per worker, "
                      : "[ machines ] processes on 127.0.0.1 (" + net_.why_not() + "), ")
              << "server at " << net_.host_address() << "\n";
    std::vector<std::string> argv = {
        GGFLEET_BINARY, "server", "--data-dir", dir_.file("server"), "--listen",
        net_.host_address() + ":0", "--admin-key", kAdmin, "--join-token", kJoin,
        "--heartbeat-timeout", "3000", "--replan-grace", "2000",
        // ports apart from other tests' (ggfleet start uses the defaults)
        "--instance-ports", "29200", "--rpc-ports", "29300"};
    for (const std::string& a : server_args()) argv.push_back(a);
    server_.start(argv, server_env(), dir_.file("server.log"));
    port_ = listening_port(dir_.file("server.log"));  // the server picked a free port
    ASSERT_GT(port_, 0) << worker::tail_file(dir_.file("server.log"));
    api_ = std::make_unique<Api>(port_, net_.host_address());
    ASSERT_TRUE(wait_for([&] { return api_->get("/healthz", "").status == 200; }, 20))
        << worker::tail_file(dir_.file("server.log"));
    for (int i = 0; i < kWorkers; ++i) start_worker(i);
    ASSERT_TRUE(wait_for(
        [&] {
          return api_->get("/v1/workers", kAdmin)
                     .body.value("workers", nlohmann::json::array())
                     .size() == kWorkers;
        },
        30));
  }
  void TearDown() override {
    for (auto& w : workers_) {
      if (w) w->stop(20);
    }
    server_.stop();
  }
  // Starts worker i (again, after a stop: the same name and data directory).
  void start_worker(int i) {
    const auto at = static_cast<std::size_t>(i);
    if (workers_.size() <= at) workers_.resize(at + 1);
    workers_[at] = std::make_unique<worker::Process>();
    const std::string name = "w" + std::to_string(i);
    std::vector<std::string> argv = {
        GGFLEET_BINARY,   "worker",
        "--server",       "http://" + net_.host_address() + ":" + std::to_string(port_),
        "--join-token",   kJoin,
        "--name",         name,
        "--address",      net_.address_of(i),
        "--declare-gpu",  "NVIDIA GeForce RTX 4090:700MiB",
        "--llama",        llama_,
        "--data-dir",     dir_.file(name),
        "--heartbeat-ms", "500",
        "--max-restarts", "50"};
    for (const std::string& a : worker_args(i)) argv.push_back(a);
    workers_[at]->start(net_.inside(i, argv), {}, dir_.file(name + ".log"), 10u << 20);
  }
  // The first instance of `deployment` (null when none).
  nlohmann::json instance(const std::string& deployment) {
    const Reply r = api_->get("/v1/instances?deployment=" + deployment, kAdmin);
    return r.body.value("instances", nlohmann::json::array()).empty() ? nlohmann::json()
                                                                      : r.body["instances"][0];
  }
  bool running(const std::string& deployment) {
    const nlohmann::json i = instance(deployment);
    return !i.is_null() && i["state"] == "running";
  }
  Reply chat(const std::string& deployment, bool stream = false) {
    return api_->post("/v1/chat/completions", kAdmin,
                      {{"model", deployment},
                       {"messages", {{{"role", "user"}, {"content", "Hello there"}}}},
                       {"max_tokens", 6},
                       {"stream", stream}});
  }
  std::string logs(const std::string& deployment) {
    std::string out = "events:\n";
    for (const nlohmann::json& e :
         api_->get("/v1/events?limit=100", kAdmin).body.value("events", nlohmann::json::array())) {
      out += "  " + e.value("kind", "") + " " + e.value("subject", "") + ": " +
             e.value("message", "") + "\n";
    }
    out += "listening:\n" + run_command("ss -ltnp | grep -E 'llama|rpc'").output;
    const nlohmann::json now = instance(deployment);
    if (!now.is_null()) {
      const nlohmann::json full =
          api_->get("/v1/instances/" + now["id"].get<std::string>(), kAdmin).body;
      for (const nlohmann::json& c : full["assignment"].value("commands", nlohmann::json::array()))
        out += "  command: " + c.value("line", "") + "\n";
    }
    out += "processes:\n" +
           run_command("ps -eo pid,ppid,args | grep -E '[l]lama-server|[g]gml-rpc-server'").output;
    out += "server:\n" + worker::tail_file(dir_.file("server.log"), 20);
    for (int i = 0; i < kWorkers; ++i)
      out += "w" + std::to_string(i) + ":\n" +
             worker::tail_file(dir_.file("w" + std::to_string(i) + ".log"), 20);
    return out;
  }

  TestNet net_;  // first member: torn down last, after every process in it stopped
  TempDir dir_;
  std::string llama_;
  int port_ = 0;
  worker::Process server_;
  std::vector<std::unique_ptr<worker::Process>> workers_;
  std::unique_ptr<Api> api_;
};

}  // namespace ggfleet::test
