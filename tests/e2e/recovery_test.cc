// Faults of the serving path with real processes (LevelDB's recovery_test is the model): a
// `ggfleet server` and `ggfleet worker`s on 127.0.0.1 running llama.cpp's CPU build, a 2-block
// synthetic model. Each test injects one fault by name:
//   SigtermStopsChildrenWithACleanMask    children start unblocked and stop on SIGTERM in 2 s
//   WorkerKilledThenRestarted             kill -9 of the worker: no orphan, the instance is back
//   TakenPortIsSkipped                    another program holds the planned llama-server port
//   CrashLoopIsReplannedElsewhere         restarts reset when healthy; exhausted → other worker
//   OverloadIsQueuedNeverDown             200 concurrent streams on a one-slot CPU instance
//   InstancePortRefusesDirectAccess       a client on the workers' network skips ggfleet's keys
//   LearnedFactorChangesTheNextPlan       a declared GPU far slower than its catalog numbers
// and, on the same live fleet, OfficialOpenAiSdkForNode: the official SDK as a user's program.
// Not a fault, on the same kind of fleet: ExpertsStayInHostRamAsPlanned, a MoE model larger than
// its worker's GPU deployed with part of its experts in the main's RAM, as the plan said.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "../server/server_fixture.h"
#include "e2e_util.h"
#include "estimate/estimate.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"
#include "worker/process.h"

namespace ggfleet::test {
namespace {

using nlohmann::json;
using worker::tail_file;
constexpr const char* kAdmin = "recovery-admin";
constexpr const char* kJoin = "recovery-join";

// A /proc/PID/status field that is a hex mask (SigBlk, SigIgn); all ones if unreadable.
std::uint64_t status_mask(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(field + ":", 0) == 0)
      return std::stoull(line.substr(field.size() + 1), nullptr, 16);
  }
  return ~0ull;
}

class Recovery : public ::testing::Test {
 protected:
  // Ports apart from every other test's: each test of this file takes its own block.
  void start(int port_block, int workers, const std::vector<std::string>& worker_flags = {}) {
    llama_ = llama_cpp_dir() + "/bin";
    GGFLEET_REQUIRE_PATH(llama_ + "/llama-server");
    ports_ = port_block;
    start_server();
    worker_flags_ = worker_flags;
    for (int i = 0; i < workers; ++i) {
      workers_.push_back(std::make_unique<worker::Process>());
      start_worker(i);
    }
    ASSERT_TRUE(wait_for(
        [&] {
          return api_->get("/v1/workers", kAdmin).body.value("workers", json::array()).size() ==
                 static_cast<std::size_t>(workers);
        },
        30))
        << logs();
    model::SynthOptions o;
    o.blocks = 2;
    o.vocab = 32000;
    model_ = model::synth("llama3-8b-q4_0", dir_.file("models"), o).front();
  }
  // The server on the data directory of this test (again after a stop: the same state).
  void start_server(const std::string& log = "server.log") {
    server_.start({GGFLEET_BINARY, "server", "--data-dir", dir_.file("server"), "--listen",
                   "127.0.0.1:0", "--admin-key", kAdmin, "--join-token", kJoin,
                   "--heartbeat-timeout", "3000", "--replan-grace", "2000", "--instance-ports",
                   std::to_string(ports_), "--rpc-ports", std::to_string(ports_ + 500)},
                  {}, dir_.file(log));
    port_ = listening_port(dir_.file(log));
    ASSERT_GT(port_, 0) << tail_file(dir_.file(log));
    api_ = std::make_unique<Api>(port_);
  }
  void start_worker(int i) {
    const std::string name = "w" + std::to_string(i);
    const std::string gpu = static_cast<std::size_t>(i) < declared_.size()
                                ? declared_[static_cast<std::size_t>(i)]
                                : "NVIDIA GeForce RTX 4090:2GiB";
    std::vector<std::string> argv = {
        GGFLEET_BINARY,   "worker",    "--server",      "http://127.0.0.1:" + std::to_string(port_),
        "--join-token",   kJoin,       "--name",        name,
        "--address",      "127.0.0.1", "--declare-gpu", gpu,
        "--llama",        llama_,      "--data-dir",    dir_.file(name),
        "--heartbeat-ms", "500"};
    argv.insert(argv.end(), worker_flags_.begin(), worker_flags_.end());
    workers_[static_cast<std::size_t>(i)]->start(argv, {}, dir_.file(name + ".log"));
  }
  void TearDown() override {
    for (auto& w : workers_) w->stop(20);
    server_.stop();
  }
  void deploy(const json& options = {{"context", 1024}}) {
    const Reply r = api_->post("/v1/deployments", kAdmin,
                               {{"name", "chat"}, {"model", model_}, {"options", options}});
    ASSERT_EQ(r.status, 201) << r.body.dump();
    ASSERT_TRUE(wait_for([&] { return instance().value("state", "") == "running"; }, 180))
        << logs();
  }
  json instance() {
    const Reply r = api_->get("/v1/instances?deployment=chat", kAdmin);
    if (r.body.value("instances", json::array()).empty()) return json::object();
    return api_->get("/v1/instances/" + r.body["instances"][0]["id"].get<std::string>(), kAdmin)
        .body;
  }
  int listen_port() {
    const json a = instance()["assignment"];
    return a.value("listen_port", a.value("server_port", 0));
  }
  Reply chat() {
    return api_->post("/v1/chat/completions", kAdmin,
                      {{"model", "chat"},
                       {"messages", {{{"role", "user"}, {"content", "Hello"}}}},
                       {"max_tokens", 4}});
  }
  std::vector<std::string> event_kinds(const std::string& subject = "") {
    std::vector<std::string> out;
    for (const json& e :
         api_->get("/v1/events?limit=1000" + (subject.empty() ? "" : "&subject=" + subject), kAdmin)
             .body.value("events", json::array()))
      out.push_back(e.value("kind", "") + ": " + e.value("message", ""));
    return out;
  }
  bool has_event(const std::string& prefix, const std::string& subject = "") {
    for (const std::string& e : event_kinds(subject)) {
      if (e.rfind(prefix, 0) == 0) return true;
    }
    return false;
  }
  std::string logs() {
    std::string out = "events:\n";
    for (const std::string& e : event_kinds()) out += "  " + e + "\n";
    out += "instance: " + instance().dump() + "\n";
    out += "processes:\n" +
           run_command("ps -eo pid,ppid,args | grep -E '[l]lama-server|[g]gml-rpc-server'").output;
    out += "server:\n" + tail_file(dir_.file("server.log"), 20);
    for (std::size_t i = 0; i < workers_.size(); ++i)
      out += "w" + std::to_string(i) + ":\n" +
             tail_file(dir_.file("w" + std::to_string(i) + ".log"), 30);
    return out;
  }

  TempDir dir_;
  std::string llama_, model_;
  int port_ = 0, ports_ = 0;
  worker::Process server_;
  std::vector<std::unique_ptr<worker::Process>> workers_;
  std::vector<std::string> worker_flags_;
  std::vector<std::string> declared_;  // per worker; default: an RTX 4090 of 2 GiB
  std::unique_ptr<Api> api_;
};

TEST_F(Recovery, SigtermStopsChildrenWithACleanMask) {
  start(23000, 1);
  deploy();
  // The worker's children: its llama-server and the rpc-server of its (simulated) GPU.
  const std::vector<pid_t> children = children_of(workers_[0]->pid());
  ASSERT_EQ(children.size(), 2u) << logs();
  for (pid_t pid : children) {
    EXPECT_EQ(status_mask(pid, "SigBlk"), 0u) << "pid " << pid << " starts with signals blocked";
    EXPECT_EQ(status_mask(pid, "SigIgn") & (1u << (SIGTERM - 1)), 0u);
  }
  // SIGTERM to the worker: it stops its children (SIGTERM, SIGKILL after 2 s) and exits.
  const auto t0 = std::chrono::steady_clock::now();
  kill(workers_[0]->pid(), SIGTERM);
  EXPECT_TRUE(wait_for([&] { return !workers_[0]->running(); }, 10)) << logs();
  EXPECT_TRUE(wait_for([&] { return !alive(children[0]) && !alive(children[1]); }, 1));
  const double stop_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // llama-server and rpc-server honour SIGTERM: no 2 s SIGKILL wait per process.
  EXPECT_LT(stop_s, 4.0) << logs();
  EXPECT_EQ(workers_[0]->exit_code(), 0) << logs();
}

// A client that reaches a worker's address talks to llama-server directly, past ggfleet's keys:
// each instance has its own key, which only the server's proxy (and the worker that starts it)
// holds, given through the environment, never in argv or the API.
TEST_F(Recovery, InstancePortRefusesDirectAccess) {
  start(25000, 1);
  deploy();
  const int port = listen_port();
  ASSERT_GT(port, 0);
  httplib::Client direct("127.0.0.1", port);
  direct.set_read_timeout(10);
  for (const char* path : {"/v1/models", "/metrics", "/slots", "/props"}) {
    const httplib::Result r = direct.Get(path);
    ASSERT_TRUE(r) << path;
    EXPECT_EQ(r->status, 401) << path << " " << r->body;
  }
  const httplib::Result post = direct.Post(
      "/v1/chat/completions", R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":2})",
      "application/json");
  ASSERT_TRUE(post);
  EXPECT_EQ(post->status, 401);
  // With a ggfleet key, through ggfleet: served.
  const Reply ok = chat();
  EXPECT_EQ(ok.status, 200) << ok.body.dump();
  // The key is nowhere a user or another local account could read it.
  EXPECT_FALSE(instance()["assignment"].contains("instance_key"));
  for (pid_t pid : children_of(workers_[0]->pid())) {
    const std::string cmdline = read_file("/proc/" + std::to_string(pid) + "/cmdline");
    EXPECT_EQ(cmdline.find("ggi_"), std::string::npos) << cmdline;
  }
}

// OpenAI conformance, judged by the official SDK for Node (tests/e2e/openai_sdk.mjs): models
// list and retrieve, chat and completions with and without streaming, include_usage, the
// exceptions a wrong key, an unknown model, a bad field and an upstream rejection raise, and an
// aborted stream followed by a served request. The SDK comes from the npm registry.
TEST_F(Recovery, OfficialOpenAiSdkForNode) {
  if (run_command("command -v node").exit_code != 0) GTEST_SKIP() << "no node";
  const std::string sdk = std::string(GGFLEET_BINARY_DIR) + "/openai-node";
  const CommandResult installed =
      run_command("mkdir -p " + sdk + " && cd " + sdk +
                  " && (test -d node_modules/openai || npm install --no-audit --no-fund --silent "
                  "openai@4.104.0) 2>&1");
  ASSERT_EQ(installed.exit_code, 0) << installed.output;
  start(25100, 1);
  deploy();
  const CommandResult r =
      run_command("cp " + std::string(GGFLEET_SOURCE_DIR) + "/tests/e2e/openai_sdk.mjs " + sdk +
                  "/ && cd " + sdk + " && BASE_URL=http://127.0.0.1:" + std::to_string(port_) +
                  "/v1 API_KEY=" + kAdmin + " MODEL=chat timeout 300 node openai_sdk.mjs 2>&1");
  EXPECT_EQ(r.exit_code, 0) << r.output << logs();
  EXPECT_EQ(r.output.find("FAIL"), std::string::npos) << r.output;
  // Usage is counted per key: a new user key's one request shows under its id and name with the
  // tokens its answer reported; the SDK's requests stay under the admin key.
  const Reply key = api_->post("/v1/keys", kAdmin, {{"name", "team-a"}, {"role", "user"}});
  ASSERT_EQ(key.status, 201) << key.body.dump();
  const Reply answer = api_->post("/v1/chat/completions", key.body["key"].get<std::string>(),
                                  {{"model", "chat"},
                                   {"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                   {"max_tokens", 3}});
  ASSERT_EQ(answer.status, 200) << answer.body.dump();
  httplib::Client scrape("127.0.0.1", port_);
  scrape.set_bearer_token_auth(kAdmin);
  const httplib::Result metrics = scrape.Get("/metrics");
  ASSERT_TRUE(metrics);
  const std::string labels = "{key=\"" + key.body["id"].get<std::string>() + "\",name=\"team-a\"";
  for (const std::string& line :
       {"ggfleet_key_requests_total" + labels + "} 1",
        "ggfleet_key_tokens_total" + labels + ",kind=\"prompt\"} " +
            std::to_string(answer.body["usage"]["prompt_tokens"].get<int>()),
        "ggfleet_key_tokens_total" + labels + ",kind=\"completion\"} " +
            std::to_string(answer.body["usage"]["completion_tokens"].get<int>())}) {
    EXPECT_NE(metrics->body.find("\n" + line + "\n"), std::string::npos) << line << "\n"
                                                                         << metrics->body;
  }
}

// The truth loop's first half: every answered request's llama-server timings are kept per
// instance and shown next to the prediction. The worker declares an H100 that it is not (its GPU
// is llama.cpp's CPU backend), so the measured speed stays far from the predicted one and the
// deviation event fires after 20 single-stream requests.
TEST_F(Recovery, MeasuredSpeedIsShownNextToThePrediction) {
  start(26000, 1, {"--declare-gpu", "NVIDIA H100 SXM:80GiB"});
  deploy();
  const std::string id = instance()["id"];
  // Until 20 requests generated at least 2 tokens each (a random model may stop after one).
  int sent = 0;
  for (; sent < 60; ++sent) {
    const json m = instance()["measured"];
    if (m.is_object() && m.value("generation_samples", 0) >= 20) break;
    ASSERT_EQ(chat().status, 200) << logs();
    if (sent >= 19) std::this_thread::sleep_for(std::chrono::milliseconds(300));  // (a flush)
  }
  // One streamed request with a longer prompt: a prompt sample, and timings from the stream.
  std::string prompt;
  for (int k = 0; k < 40; ++k) prompt += "word" + std::to_string(k) + " ";
  httplib::Client raw("127.0.0.1", port_);
  raw.set_bearer_token_auth(kAdmin);
  const json streamed = {{"model", "chat"},
                         {"messages", {{{"role", "user"}, {"content", prompt}}}},
                         {"max_tokens", 4},
                         {"stream", true}};
  const httplib::Result s = raw.Post("/v1/chat/completions", streamed.dump(), "application/json");
  ASSERT_TRUE(s && s->status == 200) << (s ? s->body : "no answer");
  ASSERT_TRUE(wait_for(
      [&] {
        const json m = instance()["measured"];
        return m.is_object() && m.value("samples", 0) >= sent + 1;
      },
      30))
      << instance().dump() << logs();
  const json i = instance();
  const json& measured = i["measured"];
  EXPECT_EQ(measured["samples"].get<int>(), sent + 1) << i.dump();  // one request at a time
  EXPECT_EQ(measured["concurrent"]["samples"].get<int>(), 0) << i.dump();
  EXPECT_GE(measured["generation_samples"].get<int>(), 20) << i.dump();
  EXPECT_GE(measured["prompt_samples"].get<int>(), 1) << i.dump();
  EXPECT_GT(measured["generation_tokens_per_s"].get<double>(), 0) << i.dump();
  EXPECT_GT(measured["prompt_tokens_per_s"].get<double>(), 0) << i.dump();
  const double predicted = i["predicted"]["generation_tokens_per_s"].get<double>();
  EXPECT_GT(predicted, 0) << i.dump();
  EXPECT_GT(i["predicted"]["prompt_tokens_per_s"].get<double>(), 0) << i.dump();
  // The deviation: H100 speed predicted, a CPU's measured.
  EXPECT_LT(measured["recent_generation_tokens_per_s"].get<double>(), 0.75 * predicted) << i.dump();
  EXPECT_TRUE(wait_for([&] { return has_event("instance.speed_deviation", id); }, 10)) << logs();
  // Memory per device next to its estimate: the (CPU-backed) GPU's rpc-server and the main's
  // llama-server, as the worker measured them.
  json memory;
  EXPECT_TRUE(wait_for(
      [&] {
        memory = instance()["memory"];
        if (!memory.is_array() || memory.empty()) return false;
        for (const json& d : memory) {
          if (!d["measured_bytes"].is_number() || d["measured_bytes"].get<double>() <= 0)
            return false;
        }
        return true;
      },
      10))
      << memory.dump() << logs();
  bool host = false;
  for (const json& d : memory) {
    EXPECT_GT(d["estimated_bytes"].get<double>(), 0) << memory.dump();
    host = host || d["device"] == "host";
  }
  EXPECT_TRUE(host) << memory.dump();
  std::cout << "[figures] memory " << memory.dump() << std::endl;
  // Prometheus: both gauges of the running instance.
  const httplib::Result metrics = raw.Get("/metrics");
  ASSERT_TRUE(metrics);
  for (const char* gauge : {"ggfleet_instance_predicted_tokens_per_second",
                            "ggfleet_instance_measured_tokens_per_second"}) {
    EXPECT_NE(metrics->body.find(std::string(gauge) + "{instance=\"" + id +
                                 "\",deployment=\"chat\",kind=\"generation\"} "),
              std::string::npos)
        << gauge << "\n"
        << metrics->body;
  }
  // ... and the CLI's list.
  const CommandResult ls =
      run_command(std::string(GGFLEET_BINARY) + " ls instances --server http://127.0.0.1:" +
                  std::to_string(port_) + " --key " + kAdmin + " 2>&1");
  EXPECT_NE(ls.output.find("PREDICTED"), std::string::npos) << ls.output;
  EXPECT_NE(ls.output.find("MEASURED"), std::string::npos) << ls.output;
  EXPECT_NE(ls.output.find("(" + std::to_string(sent + 1) + ")"), std::string::npos)
      << ls.output;  // the samples
}

// The truth loop closed: w0 declares an H100, w1 an L4, both served by this machine's CPU. The
// planner puts the instance on w0 (the H100 on paper); its measured speed is far below the
// prediction, the fleet learns the H100's factor, stores it, and the next plan for the model
// chooses w1 with both predictions in its explanation — and the running instance gets a
// suggestion (never a move).
TEST_F(Recovery, LearnedFactorChangesTheNextPlan) {
  declared_ = {"NVIDIA H100 SXM:2GiB", "NVIDIA L4:2GiB"};
  start(27000, 2);
  deploy();
  const json first = instance();
  const std::string id = first["id"];
  ASSERT_EQ(first.value("main_worker", ""), "w0") << first.dump();
  int enough = 0;
  for (int sent = 0; sent < 80 && enough < 25; ++sent) {
    ASSERT_EQ(chat().status, 200) << logs();
    const json m = instance()["measured"];
    enough = m.is_object() ? m.value("generation_samples", 0) : 0;
  }
  ASSERT_GE(enough, 25) << instance().dump();
  // Measured next to predicted, and far from it.
  const json i = instance();
  const double predicted = i["predicted"]["generation_tokens_per_s"].get<double>();
  const double measured = i["measured"]["generation_tokens_per_s"].get<double>();
  EXPECT_LT(measured, 0.75 * predicted) << i.dump();
  EXPECT_TRUE(wait_for([&] { return has_event("instance.speed_deviation", id); }, 10)) << logs();
  // The factor is learned and stored: the H100 is slower than its catalog numbers; the L4, never
  // measured, keeps them.
  json calibration;
  ASSERT_TRUE(wait_for(
      [&] {
        calibration = api_->get("/v1/calibration", kAdmin).body;
        for (const json& f : calibration["calibration"].value("factors", json::array())) {
          if (f.value("key", "") == "gpu:NVIDIA H100 SXM" && f.value("kind", "") == "generation")
            return true;
        }
        return false;
      },
      15))
      << calibration.dump() << logs();
  for (const json& f : calibration["calibration"]["factors"]) {
    EXPECT_NE(f["key"], "gpu:NVIDIA L4") << calibration.dump();
    if (f["key"] == "gpu:NVIDIA H100 SXM" && f["kind"] == "generation") {
      EXPECT_GT(f["value"].get<double>(), 1.5) << calibration.dump();
    }
  }
  EXPECT_TRUE(has_event("calibration.updated")) << logs();
  // The next plan for the same model chooses the other worker and says both predictions.
  const Reply next =
      api_->post("/v1/plan", kAdmin, {{"model", model_}, {"options", {{"context", 1024}}}});
  ASSERT_EQ(next.status, 200) << next.body.dump();
  EXPECT_EQ(next.body["layout"].value("main_worker", ""), "w1") << next.body.dump();
  const json& note = next.body["calibration"];
  EXPECT_EQ(note["model_alone"].value("main_worker", ""), "w0") << note.dump();
  EXPECT_LT(note["model_alone"]["corrected_generation_tokens_per_s"].get<double>(),
            note["generation_tokens_per_s"].get<double>())
      << note.dump();
  EXPECT_NE(note.value("explanation", "").find("alone would choose main w0"), std::string::npos)
      << note.dump();
  std::cout << "[figures] predicted " << predicted << " tokens/s, measured " << measured
            << "; factors " << calibration["explanation"].dump() << "; next plan "
            << note.value("explanation", "") << std::endl;
  // The running instance is told, not moved.
  EXPECT_TRUE(wait_for([&] { return has_event("instance.replan_suggested", id); }, 10)) << logs();
  EXPECT_EQ(instance().value("main_worker", ""), "w0");
  // Exported, the factors plan the same offline.
  const std::string file = dir_.file("calibration.json");
  const CommandResult exported =
      run_command(std::string(GGFLEET_BINARY) + " calibration export --server http://127.0.0.1:" +
                  std::to_string(port_) + " --key " + kAdmin + " -o " + file + " 2>&1");
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  {
    std::ofstream cluster(dir_.file("cluster.yaml"));
    cluster << "workers:\n"
               "  - {name: w0, cpu: {cores: 2}, gpus: [{name: NVIDIA H100 SXM, vram: 2GiB}]}\n"
               "  - {name: w1, cpu: {cores: 2}, gpus: [{name: NVIDIA L4, vram: 2GiB}]}\n";
  }
  const std::string plan_cmd = std::string(GGFLEET_BINARY) + " plan " + model_ + " --cluster " +
                               dir_.file("cluster.yaml") + " -c 1024 --json";
  const CommandResult alone = run_command(plan_cmd + " 2>&1");
  const CommandResult learned = run_command(plan_cmd + " --calibration " + file + " 2>&1");
  ASSERT_EQ(alone.exit_code, 0) << alone.output;
  ASSERT_EQ(learned.exit_code, 0) << learned.output;
  EXPECT_EQ(json::parse(alone.output)["layout"].value("main_worker", ""), "w0") << alone.output;
  EXPECT_EQ(json::parse(learned.output)["layout"].value("main_worker", ""), "w1") << learned.output;
  // Stored: a restarted server plans with what was learned before.
  server_.stop();
  start_server("server2.log");
  ASSERT_TRUE(wait_for(
      [&] {
        const Reply again =
            api_->post("/v1/plan", kAdmin, {{"model", model_}, {"options", {{"context", 1024}}}});
        return again.status == 200 &&
               again.body.value("layout", json::object()).value("main_worker", "") == "w1";
      },
      15))
      << api_->get("/v1/calibration", kAdmin).body.dump() << tail_file(dir_.file("server2.log"));
}

TEST_F(Recovery, WorkerKilledThenRestartedLeavesNoOrphan) {
  start(23100, 1);
  deploy();
  const std::vector<pid_t> children = children_of(workers_[0]->pid());
  ASSERT_EQ(children.size(), 2u) << logs();  // llama-server and its rpc-server
  kill(workers_[0]->pid(), SIGKILL);
  workers_[0]->running();
  // Its children die with it (PR_SET_PDEATHSIG): nothing serves the port without ggfleet.
  EXPECT_TRUE(wait_for([&] { return !alive(children[0]) && !alive(children[1]); }, 5)) << logs();
  // Restarted with its data directory: same name accepted (its saved credentials), instance back.
  start_worker(0);
  EXPECT_TRUE(wait_for(
      [&] {
        return instance().value("state", "") == "running" &&
               pids_matching("llama-server.*--port " + std::to_string(listen_port())).size() == 1;
      },
      120))
      << logs();
  EXPECT_TRUE(wait_for([&] { return chat().status == 200; }, 30)) << logs();
  EXPECT_FALSE(has_event("worker.registered: registered from 127.0.0.1 (replacing")) << logs();
}

// Holds a TCP port: another program listening where ggfleet planned llama-server.
struct Squatter {
  explicit Squatter(int port) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(fd, 8) == 0;
  }
  ~Squatter() { ::close(fd); }
  int fd = -1;
  bool ok = false;
};

TEST_F(Recovery, TakenPortIsSkipped) {
  // The first placement gets base + 1 (the counter starts at 1).
  Squatter squatter(23201);
  ASSERT_TRUE(squatter.ok);
  start(23200, 1);
  deploy();
  const json i = instance();
  EXPECT_EQ(i["assignment"]["server_port"], 23201);
  EXPECT_EQ(i["assignment"]["listen_port"], 23202) << logs();
  EXPECT_EQ(i["restarts"], 0) << logs();
  EXPECT_EQ(chat().status, 200) << logs();
}

TEST_F(Recovery, CrashLoopIsReplannedElsewhere) {
  start(23300, 2, {"--max-restarts", "2", "--healthy-reset", "3"});
  deploy();
  const std::string first = instance()["main_worker"];
  auto crash = [&] {
    const std::vector<pid_t> p =
        pids_matching("llama-server.*--port " + std::to_string(listen_port()));
    for (pid_t pid : p) kill(pid, SIGKILL);
    return !p.empty();
  };
  // One crash, then healthy for longer than --healthy-reset: the count goes back to 0.
  ASSERT_TRUE(crash()) << logs();
  ASSERT_TRUE(wait_for([&] { return instance().value("restarts", 0) == 1; }, 30)) << logs();
  EXPECT_TRUE(wait_for(
      [&] { return instance().value("state", "") == "running" && instance()["restarts"] == 0; },
      60))
      << logs();
  // Three crashes in a row (more than --max-restarts 2): given up there, placed on the other.
  for (int k = 0; k < 3; ++k) {
    ASSERT_TRUE(wait_for([&] { return instance().value("state", "") == "running"; }, 60)) << logs();
    ASSERT_TRUE(crash()) << logs();
    ASSERT_TRUE(wait_for([&] { return instance().value("state", "") != "running"; }, 30)) << logs();
  }
  EXPECT_TRUE(wait_for(
      [&] {
        const json i = instance();
        return i.value("state", "") == "running" && i.value("main_worker", "") != first;
      },
      120))
      << logs();
  EXPECT_TRUE(has_event("instance.replanned: llama-server failed")) << logs();
  EXPECT_EQ(chat().status, 200) << logs();
}

TEST_F(Recovery, OverloadIsQueuedNeverDown) {
  start(23400, 1);
  deploy();
  const std::vector<pid_t> before =
      pids_matching("llama-server.*--port " + std::to_string(listen_port()));
  ASSERT_EQ(before.size(), 1u);
  std::atomic<bool> done{false};
  std::atomic<int> loading_seen{0};
  std::thread watch([&] {  // the instance must never look "loading" while it is busy
    Api api(port_);
    while (!done) {
      const json list = api.get("/v1/instances", kAdmin).body.value("instances", json::array());
      if (!list.empty() && list[0].value("state", "") != "running") ++loading_seen;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  });
  constexpr int kClients = 200;
  std::vector<int> status(kClients, 0);
  std::vector<bool> has_retry_after(kClients, false), has_done(kClients, false);
  std::vector<std::thread> clients;
  for (int k = 0; k < kClients; ++k) {
    clients.emplace_back([&, k] {
      httplib::Client c("127.0.0.1", port_);
      c.set_read_timeout(300);
      c.set_bearer_token_auth(kAdmin);
      const auto r = c.Post("/v1/chat/completions",
                            json{{"model", "chat"},
                                 {"messages", {{{"role", "user"}, {"content", "Hi"}}}},
                                 {"max_tokens", 8},
                                 {"stream", true}}
                                .dump(),
                            "application/json");
      status[static_cast<std::size_t>(k)] = r ? r->status : -1;
      if (r) {
        has_retry_after[static_cast<std::size_t>(k)] = r->has_header("Retry-After");
        has_done[static_cast<std::size_t>(k)] = r->body.find("[DONE]") != std::string::npos;
      }
    });
  }
  for (std::thread& t : clients) t.join();
  done = true;
  watch.join();
  int served = 0, busy = 0;
  for (std::size_t k = 0; k < status.size(); ++k) {
    EXPECT_TRUE(status[k] == 200 || status[k] == 429) << "request " << k << ": " << status[k];
    if (status[k] == 200) {
      ++served;
      EXPECT_TRUE(has_done[k]) << "stream " << k << " cut short";
    }
    if (status[k] == 429) {
      ++busy;
      EXPECT_TRUE(has_retry_after[k]);
    }
  }
  std::cout << "[ overload ] " << served << " served, " << busy << " answered 429\n";
  EXPECT_GT(served, 0);
  EXPECT_EQ(loading_seen.load(), 0) << logs();
  EXPECT_FALSE(has_event("worker.unreachable")) << logs();
  EXPECT_FALSE(has_event("instance.replanned")) << logs();
  EXPECT_EQ(pids_matching("llama-server.*--port " + std::to_string(listen_port())), before)
      << "llama-server was restarted";
}

}  // namespace
}  // namespace ggfleet::test

namespace ggfleet::test {
namespace {

// A qwen3-MoE-shaped model whose blocks fit the declared GPU only with half of their experts
// elsewhere: the plan keeps every block on the GPU (an rpc-server of the CPU build) and the
// experts of some blocks in llama-server's RAM; the worker starts llama-server with the plan's
// --n-cpu-moe / -ot, the rpc-server is sent no more than the GPU holds, and it serves.
TEST_F(Recovery, ExpertsStayInHostRamAsPlanned) {
  test::TempDir models;
  model::SynthOptions o;
  o.blocks = 4;
  o.embedding = 512;
  o.vocab = 32000;
  const std::string moe = model::synth("qwen3-30b-a3b-q4_k_m", models.file("moe"), o).front();
  const gguf::Model file = gguf::Model::open(moe);
  const estimate::ModelMemory m = estimate::ModelMemory::from(file, model::profile(file));
  estimate::Layout all;
  all.devices = {{"RPC0", estimate::Backend::kCuda, true, 64ull << 30, 0}};
  all.context.context_tokens = 1024;
  const std::uint64_t all_bytes = estimate::estimate(m, all).devices[0].total_bytes;
  std::uint64_t expert_bytes = 0;
  for (std::uint32_t b = 0; b < m.blocks(); ++b) expert_bytes += m.layers[b].expert_cuda_bytes;
  ASSERT_GT(expert_bytes, all_bytes / 2);
  const std::uint64_t gpu_bytes = all_bytes - expert_bytes / 2;
  declared_ = {"NVIDIA GeForce RTX 4090:" + std::to_string(gpu_bytes >> 20) + "MiB"};
  start(23500, 1);
  model_ = moe;
  deploy();
  const json i = instance();
  const json& layout = i["assignment"]["plan"]["layout"];
  std::string line;
  for (const json& c : i["assignment"]["commands"])
    if (c.value("role", "") == "llama-server") line = c.value("line", "");
  std::cout << "[figures] " << line << "\n";
  EXPECT_EQ(layout.value("cpu_layers", -1), 0) << i.dump();
  EXPECT_GT(layout["host_expert_blocks"].size(), 0u) << i.dump();
  EXPECT_TRUE(line.find(" --n-cpu-moe ") != std::string::npos ||
              line.find(" -ot ") != std::string::npos)
      << line;
  EXPECT_EQ(chat().status, 200) << logs();
  // What the rpc-server holds, as the worker measured it: within the declared GPU, not the model.
  json memory;
  ASSERT_TRUE(wait_for(
      [&] {
        memory = instance()["memory"];
        for (const json& d : memory.is_array() ? memory : json::array()) {
          if (d["device"] != "host" && d["measured_bytes"].is_number()) return true;
        }
        return false;
      },
      15))
      << memory.dump() << logs();
  for (const json& d : memory) {
    if (d["device"] == "host" || !d["measured_bytes"].is_number()) continue;
    EXPECT_LT(d["measured_bytes"].get<double>(), static_cast<double>(gpu_bytes)) << memory.dump();
  }
  std::cout << "[figures] memory " << memory.dump() << " declared " << gpu_bytes << " all-on-GPU "
            << all_bytes << std::endl;
}

}  // namespace
}  // namespace ggfleet::test
