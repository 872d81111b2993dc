// End to end with real processes: a `ggfleet server` and three `ggfleet worker`s (declared GPUs
// served by llama.cpp's CPU build), a synthetic model that must be split across two workers. Each
// worker is a machine of its own: a network namespace with its own address where `ip netns` works
// (root), else a process on 127.0.0.1.
// Deploy → llama-server on the main worker with --rpc to another worker's rpc-server → chat
// completions through the server (plain and streamed). Then: kill the rpc-server → the instance
// reports the error and comes back; stop a worker → the instance is re-planned on the others;
// delete the deployment → none of its processes is left.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "../server/server_fixture.h"
#include "e2e_util.h"
#include "model/synth.h"
#include "test_net.h"
#include "worker/process.h"

namespace ggfleet::test {
namespace {

using nlohmann::json;
using worker::tail_file;
constexpr const char* kAdmin = "e2e-admin";
constexpr const char* kJoin = "e2e-join";

class Fleet : public ::testing::Test {
 protected:
  void SetUp() override {
    llama_ = llama_cpp_dir() + "/bin";
    GGFLEET_REQUIRE_PATH(llama_ + "/llama-server");
    GGFLEET_REQUIRE_PATH(llama_ + "/ggml-rpc-server");
    std::cout << (net_.available()
                      ? "[ machines ] one network namespace per worker, "
                      : "[ machines ] processes on 127.0.0.1 (" + net_.why_not() + "), ")
              << "server at " << net_.host_address() << "\n";
    server_.start({GGFLEET_BINARY, "server", "--data-dir", dir_.file("server"), "--listen",
                   net_.host_address() + ":0", "--admin-key", kAdmin, "--join-token", kJoin,
                   "--heartbeat-timeout", "3000", "--replan-grace", "2000",
                   // ports apart from other tests' (ggfleet start uses the defaults)
                   "--instance-ports", "29200", "--rpc-ports", "29300"},
                  {}, dir_.file("server.log"));
    port_ = listening_port(dir_.file("server.log"));  // the server picked a free port
    ASSERT_GT(port_, 0) << tail_file(dir_.file("server.log"));
    api_ = std::make_unique<Api>(port_, net_.host_address());
    ASSERT_TRUE(wait_for([&] { return api_->get("/healthz", "").status == 200; }, 20))
        << tail_file(dir_.file("server.log"));
    for (int i = 0; i < 3; ++i) start_worker(i);
    ASSERT_TRUE(wait_for(
        [&] {
          return api_->get("/v1/workers", kAdmin).body.value("workers", json::array()).size() == 3;
        },
        30));
    model::SynthOptions o;
    o.blocks = 6;
    o.vocab = 32000;
    model_ = model::synth("llama3-8b-q4_0", dir_.file("models"), o).front();
  }
  void TearDown() override {
    for (auto& w : workers_) w->stop(20);
    server_.stop();
  }
  void start_worker(int i) {
    workers_.push_back(std::make_unique<worker::Process>());
    const std::string name = "w" + std::to_string(i);
    workers_.back()->start(
        net_.inside(
            i, {GGFLEET_BINARY,   "worker",
                "--server",       "http://" + net_.host_address() + ":" + std::to_string(port_),
                "--join-token",   kJoin,
                "--name",         name,
                "--address",      net_.address_of(i),
                "--declare-gpu",  "NVIDIA GeForce RTX 4090:700MiB",
                "--llama",        llama_,
                "--data-dir",     dir_.file(name),
                "--heartbeat-ms", "500",
                "--max-restarts", "50"}),
        {}, dir_.file(name + ".log"));
  }
  json instance() {
    const Reply r = api_->get("/v1/instances?deployment=split", kAdmin);
    return r.body.value("instances", json::array()).empty() ? json() : r.body["instances"][0];
  }
  bool running() {
    const json i = instance();
    return !i.is_null() && i["state"] == "running";
  }
  Reply chat(bool stream) {
    return api_->post("/v1/chat/completions", kAdmin,
                      {{"model", "split"},
                       {"messages", {{{"role", "user"}, {"content", "Hello there"}}}},
                       {"max_tokens", 6},
                       {"stream", stream}});
  }
  std::string logs() {
    std::string out = "events:\n";
    for (const json& e :
         api_->get("/v1/events?limit=100", kAdmin).body.value("events", json::array())) {
      out += "  " + e.value("kind", "") + " " + e.value("subject", "") + ": " +
             e.value("message", "") + "\n";
    }
    out += "listening:\n" + run_command("ss -ltnp | grep -E 'llama|rpc'").output;
    const json now = instance();
    if (!now.is_null()) {
      const json full = api_->get("/v1/instances/" + now["id"].get<std::string>(), kAdmin).body;
      for (const json& c : full["assignment"].value("commands", json::array()))
        out += "  command: " + c.value("line", "") + "\n";
    }
    out += "processes:\n" +
           run_command("ps -eo pid,ppid,args | grep -E '[l]lama-server|[g]gml-rpc-server'").output;
    out += "server:\n" + tail_file(dir_.file("server.log"), 20);
    for (int i = 0; i < 3; ++i)
      out += "w" + std::to_string(i) + ":\n" +
             tail_file(dir_.file("w" + std::to_string(i) + ".log"), 20);
    return out;
  }

  TestNet net_{3};  // first member: torn down last, after every process in it stopped
  TempDir dir_;
  std::string llama_, model_;
  int port_ = 0;
  worker::Process server_;
  std::vector<std::unique_ptr<worker::Process>> workers_;
  std::unique_ptr<Api> api_;
};

TEST_F(Fleet, DeployServeRecoverReplanDelete) {
  Reply r = api_->post("/v1/deployments", kAdmin,
                       {{"name", "split"},
                        {"model", model_},
                        {"options", {{"context", 1024}, {"allow_cpu_offload", false}}}});
  ASSERT_EQ(r.status, 201) << r.body.dump();
  ASSERT_TRUE(wait_for([&] { return running(); }, 180)) << instance().dump() << "\n" << logs();
  json i = api_->get("/v1/instances/" + instance()["id"].get<std::string>(), kAdmin).body;
  const json devices = i["assignment"]["plan"]["layout"]["devices"];
  ASSERT_EQ(devices.size(), 2u) << i.dump();
  EXPECT_NE(devices[0]["worker"], devices[1]["worker"]);  // split across two workers
  std::string rpc_line, server_line, lender;
  for (const json& c : i["assignment"]["commands"]) {
    if (c["role"] == "rpc-server") {
      rpc_line = c["line"];
      lender = c["worker"];
    } else {
      server_line = c["line"];
    }
  }
  ASSERT_FALSE(lender.empty());
  const int lender_index = lender[1] - '0';
  const std::string lender_address = net_.address_of(lender_index);
  EXPECT_NE(server_line.find("--rpc " + lender_address + ":"), std::string::npos) << server_line;

  // Completions through the server, plain and streamed.
  r = chat(false);
  ASSERT_EQ(r.status, 200) << r.body.dump() << logs();
  EXPECT_GT(r.body["usage"]["completion_tokens"].get<int>(), 0);
  EXPECT_TRUE(r.body["choices"][0]["message"].contains("content"));
  httplib::Client raw(net_.host_address(), port_);
  raw.set_bearer_token_auth(kAdmin);
  raw.set_read_timeout(120);
  const auto streamed = raw.Post("/v1/chat/completions",
                                 json{{"model", "split"},
                                      {"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                      {"max_tokens", 6},
                                      {"stream", true}}
                                     .dump(),
                                 "application/json");
  ASSERT_TRUE(streamed);
  EXPECT_EQ(streamed->status, 200);
  EXPECT_NE(streamed->body.find("data: "), std::string::npos);
  EXPECT_NE(streamed->body.find("[DONE]"), std::string::npos) << streamed->body;

  // Kill the rpc-server: the instance reports the error, then comes back.
  const std::string rpc_port = rpc_line.substr(rpc_line.find(" -p ") + 4, 5);
  const std::string rpc_pattern = "ggml-rpc-server -H " + lender_address + " -p " + rpc_port;
  ASSERT_TRUE(process_matching(rpc_pattern));
  run_command("pkill -9 -f -- '" + bracketed(rpc_pattern) + "'");
  chat(false);  // the main finds out on its next use of the RPC device
  const std::string id = instance()["id"];
  EXPECT_TRUE(wait_for(
      [&] {
        const Reply events = api_->get("/v1/events?subject=" + id, kAdmin);
        for (const json& e : events.body["events"]) {
          if (e["kind"] == "instance.error") return true;
        }
        return false;
      },
      60))
      << logs();
  ASSERT_TRUE(wait_for([&] { return running() && chat(false).status == 200; }, 120))
      << instance().dump() << logs();

  // Stop the lending worker: the instance is re-planned on the two others.
  workers_[static_cast<std::size_t>(lender_index)]->stop(20);
  ASSERT_TRUE(wait_for(
      [&] {
        const json now = api_->get("/v1/instances/" + id, kAdmin).body;
        if (now["state"] != "running") return false;
        for (const json& d : now["assignment"]["plan"]["layout"]["devices"]) {
          if (d["worker"] == lender) return false;
        }
        return true;
      },
      180))
      << instance().dump() << logs();
  EXPECT_EQ(chat(false).status, 200) << logs();

  // Delete: no process of it is left.
  i = api_->get("/v1/instances/" + id, kAdmin).body;
  const std::string port = std::to_string(i["assignment"]["server_port"].get<int>());
  EXPECT_TRUE(process_matching("llama-server.*--port " + port));
  ASSERT_EQ(api_->send("DELETE", "/v1/deployments/split", kAdmin).status, 200);
  EXPECT_TRUE(wait_for(
      [&] {
        return !process_matching("llama-server.*--port " + port) && !process_matching(rpc_pattern);
      },
      30))
      << logs();
  EXPECT_EQ(chat(false).status, 404);
}

}  // namespace
}  // namespace ggfleet::test

namespace ggfleet::test {
namespace {

// The README's main job: `ggfleet start --once` serves a generated model and answers.
TEST(Start, OnceServesACompletion) {
  GGFLEET_REQUIRE_PATH(llama_cpp_dir() + "/bin/llama-server");
  TempDir dir;
  // Port 0: the server picks a free one and prints the endpoint with it.
  const CommandResult r =
      run_command(std::string(GGFLEET_BINARY) + " start --once --llama " + llama_cpp_dir() +
                  "/bin --listen 127.0.0.1:0 --data-dir " + dir.file("data"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("ggfleet is serving local-model at http://127.0.0.1:"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("completion: {"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("\"completion_tokens\""), std::string::npos) << r.output;
}

}  // namespace
}  // namespace ggfleet::test
