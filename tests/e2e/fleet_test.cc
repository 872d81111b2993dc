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

#include "fleet_fixture.h"
#include "model/synth.h"
#include "worker/process.h"

namespace ggfleet::test {
namespace {

using nlohmann::json;
using worker::tail_file;

class Fleet : public FleetFixture {
 protected:
  void SetUp() override {
    FleetFixture::SetUp();
    if (HasFatalFailure() || IsSkipped()) return;
    model::SynthOptions o;
    o.blocks = 6;
    o.vocab = 32000;
    model_ = model::synth("llama3-8b-q4_0", dir_.file("models"), o).front();
  }
  json instance() { return FleetFixture::instance("split"); }
  bool running() { return FleetFixture::running("split"); }
  Reply chat(bool stream) { return FleetFixture::chat("split", stream); }
  std::string logs() { return FleetFixture::logs("split"); }

  std::string model_;
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
