// Faults the server must survive, each injected by name against a real server over real HTTP:
// overload (more requests than slots), slow clients without a key, a duplicate worker name, a
// PATCH that changes nothing, and a server that was down longer than the heartbeat timeout.
// Instances are stand-ins (an HTTP server on the planned port) so that the proxy, not
// llama.cpp, is what is tested; tests/e2e/recovery_test.cc does the same with real processes.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "server_fixture.h"

namespace ggfleet::test {
namespace {

using nlohmann::json;
constexpr const char* kAdmin = ServerFixture::kAdmin;

// Deploys `name` on a registered worker "w1" and waits for its placement; returns
// (instance id, planned llama-server port).
std::pair<std::string, int> deploy_and_place(ServerFixture& f, const std::string& name,
                                             const json& options = json::object()) {
  EXPECT_EQ(f.api()
                .post("/v1/deployments", kAdmin,
                      {{"name", name}, {"model", f.model()}, {"options", options}})
                .status,
            201);
  std::string id;
  int port = 0;
  EXPECT_TRUE(f.eventually([&] {
    const Reply r = f.api().get("/v1/instances?deployment=" + name, kAdmin);
    if (r.body["instances"].empty() || r.body["instances"][0]["state"] != "assigned") return false;
    id = r.body["instances"][0]["id"];
    port = f.api().get("/v1/instances/" + id, kAdmin).body["assignment"]["server_port"];
    return true;
  }));
  return {id, port};
}

Reply report(Api& api, const std::string& worker, const std::string& key, const std::string& id,
             int port, const std::string& state) {
  return api.post("/v1/workers/" + worker + "/heartbeat", key,
                  {{"instances", json::array({{{"id", id}, {"state", state}, {"port", port}}})}});
}

// A stand-in instance: answers chat completions after `delay`, counting how many it serves at
// once.
struct SlowInstance {
  SlowInstance(int port, std::chrono::milliseconds delay) {
    server.new_task_queue = [] { return new httplib::ThreadPool(64); };
    server.Post("/v1/chat/completions", [this, delay](const httplib::Request&,
                                                      httplib::Response& res) {
      const int now = ++active;
      for (int seen = most.load(); now > seen && !most.compare_exchange_weak(seen, now);) {
      }
      std::this_thread::sleep_for(delay);
      --active;
      res.set_content(R"({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}})",
                      "application/json");
    });
    server.set_keep_alive_timeout(1);
    EXPECT_TRUE(server.bind_to_port("127.0.0.1", port));
    thread = std::thread([this] { server.listen_after_bind(); });
  }
  ~SlowInstance() {
    server.stop();
    thread.join();
  }
  httplib::Server server;
  std::thread thread;
  std::atomic<int> active{0}, most{0};
};

TEST(FaultInjection, OverloadIsQueuedThenAnswered429WithRetryAfter) {
  server::SchedulerConfig sched;
  sched.instance_port_base = 28800;
  sched.heartbeat_timeout_ms = 2000;
  ServerFixture f("sqlite", sched, [](server::ServerConfig& c) {
    c.front.queue_per_deployment = 8;
    c.front.queue_timeout_s = 3;
  });
  const std::string key =
      f.api()
          .post("/v1/workers/register", ServerFixture::kJoin,
                {{"name", "w1"}, {"address", "127.0.0.1"}, {"resources", resources(1)}})
          .body.value("key", "");
  const auto [id, port] = deploy_and_place(f, "chat");
  ASSERT_GT(port, 0);
  SlowInstance instance(port, std::chrono::milliseconds(150));
  ASSERT_EQ(report(f.api(), "w1", key, id, port, "running").status, 200);

  // 60 clients at once against one slot: 1 forwarded at a time, 8 wait, the rest get 429 at once;
  // a waiter whose 3 s pass gets 429 too. Never a 5xx. Heartbeats go on meanwhile.
  std::atomic<bool> done{false};
  std::atomic<int> heartbeats_failed{0}, heartbeats{0};
  std::thread beat([&] {
    Api api(f.port());
    while (!done) {
      ++heartbeats;
      if (report(api, "w1", key, id, port, "running").status != 200) ++heartbeats_failed;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  std::vector<int> status(60, 0);
  std::vector<std::string> retry_after(60);
  std::vector<std::thread> clients;
  for (std::size_t k = 0; k < status.size(); ++k) {
    clients.emplace_back([&, k] {
      httplib::Client c("127.0.0.1", f.port());
      c.set_read_timeout(30);
      c.set_bearer_token_auth(kAdmin);
      const auto r = c.Post("/v1/chat/completions", R"({"model": "chat", "messages": []})",
                            "application/json");
      status[k] = r ? r->status : -1;
      if (r) retry_after[k] = r->get_header_value("Retry-After");
    });
  }
  for (std::thread& t : clients) t.join();
  done = true;
  beat.join();
  int served = 0, busy = 0;
  for (std::size_t k = 0; k < status.size(); ++k) {
    EXPECT_TRUE(status[k] == 200 || status[k] == 429) << "request " << k << ": " << status[k];
    served += status[k] == 200;
    if (status[k] == 429) {
      ++busy;
      EXPECT_FALSE(retry_after[k].empty()) << "a 429 without Retry-After";
    }
  }
  EXPECT_GE(served, 9);  // the slot plus the whole queue
  EXPECT_GT(busy, 0);
  EXPECT_EQ(instance.most.load(), 1) << "the instance has one slot";
  httplib::Client scrape("127.0.0.1", f.port());
  scrape.set_bearer_token_auth(kAdmin);
  const auto metrics = scrape.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("ggfleet_busy_rejections_total " + std::to_string(busy) + "\n"),
            std::string::npos)
      << metrics->body;
  EXPECT_NE(metrics->body.find("ggfleet_proxy_in_flight 0\n"), std::string::npos);
  EXPECT_EQ(heartbeats_failed.load(), 0) << "of " << heartbeats.load();
  EXPECT_EQ(f.api().get("/v1/workers/w1", kAdmin).body["status"], "ready");
  EXPECT_EQ(f.api().get("/v1/instances/" + id, kAdmin).body["state"], "running");
}

// Opens a TCP connection and sends the start of a request, never its end.
int half_open(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  const char partial[] = "POST /v1/deployments HTTP/1.1\r\nHost: x\r\nContent-Le";
  (void)!::write(fd, partial, sizeof partial - 1);
  return fd;
}

TEST(FaultInjection, SlowClientsWithoutAKeyDoNotStarveHeartbeats) {
  server::SchedulerConfig sched;
  sched.heartbeat_timeout_ms = 2000;
  ServerFixture f("sqlite", sched);
  const std::string key = f.add_worker("w1", resources(1));
  std::vector<int> fds;
  for (int k = 0; k < 500; ++k) fds.push_back(half_open(f.port()));
  EXPECT_EQ(std::count(fds.begin(), fds.end(), -1), 0);
  // For 6 s (three heartbeat timeouts), heartbeats and a user's calls all answer.
  Api api(f.port());
  int failures = 0, calls = 0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(6);
  while (std::chrono::steady_clock::now() < until) {
    failures += api.post("/v1/workers/w1/heartbeat", key, json::object()).status != 200;
    failures += api.get("/v1/deployments", kAdmin).status != 200;
    calls += 2;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(failures, 0) << "of " << calls;
  EXPECT_EQ(api.get("/v1/workers/w1", kAdmin).body["status"], "ready");
  const Reply events = api.get("/v1/events?subject=w1", kAdmin);
  for (const json& e : events.body["events"]) EXPECT_NE(e["kind"], "worker.unreachable");
  for (int fd : fds) {
    if (fd >= 0) ::close(fd);
  }
}

TEST(FaultInjection, DuplicateWorkerNameIsRefusedUnlessItHoldsTheCredentials) {
  ServerFixture f;
  const std::string key = f.add_worker("w1", resources(1));
  ASSERT_FALSE(key.empty());
  // A second machine that picked the same name: 409, and the first keeps working.
  Reply r = f.api().post("/v1/workers/register", ServerFixture::kJoin,
                         {{"name", "w1"}, {"address", "10.0.0.9"}, {"resources", resources(2)}});
  EXPECT_EQ(r.status, 409) << r.body.dump();
  EXPECT_NE(r.body.value("error", "").find("another --name"), std::string::npos) << r.body.dump();
  EXPECT_EQ(f.api().post("/v1/workers/w1/heartbeat", key, json::object()).status, 200);
  r = f.api().post(
      "/v1/workers/register", ServerFixture::kJoin,
      {{"name", "w1"}, {"worker_key", "ggw_not-its-key"}, {"resources", resources(2)}});
  EXPECT_EQ(r.status, 409) << r.body.dump();
  // The same worker restarted (it saved its key): registered again, with a new key.
  r = f.api().post("/v1/workers/register", ServerFixture::kJoin,
                   {{"name", "w1"}, {"worker_key", key}, {"resources", resources(1)}});
  ASSERT_EQ(r.status, 201) << r.body.dump();
  const std::string fresh = r.body["key"];
  EXPECT_EQ(f.api().post("/v1/workers/w1/heartbeat", fresh, json::object()).status, 200);
  EXPECT_EQ(f.api().post("/v1/workers/w1/heartbeat", key, json::object()).status, 401);
}

TEST(FaultInjection, PatchWithoutChangeKeepsEveryInstanceAndAChangeRolls) {
  server::SchedulerConfig sched;
  sched.instance_port_base = 28900;
  ServerFixture f("sqlite", sched);
  const std::string key = f.add_worker("w1", resources(1));
  const json options = {{"context", 2048}};
  const auto [id, port] = deploy_and_place(f, "chat", options);
  ASSERT_EQ(report(f.api(), "w1", key, id, port, "running").status, 200);
  const std::string before = f.api().get("/v1/instances/" + id, kAdmin).body.dump();
  Reply r = f.api().send("PATCH", "/v1/deployments/chat", kAdmin,
                         json{{"options", options}, {"replicas", 1}}.dump());
  EXPECT_EQ(r.status, 200) << r.body.dump();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // a few scheduling passes
  EXPECT_EQ(f.api().get("/v1/instances/" + id, kAdmin).body.dump(), before);
  // A real change rolls: the new instance is placed while the old one keeps serving...
  r = f.api().send("PATCH", "/v1/deployments/chat", kAdmin,
                   json{{"options", {{"context", 4096}}}}.dump());
  EXPECT_EQ(r.status, 200) << r.body.dump();
  std::string fresh;
  int fresh_port = 0;
  ASSERT_TRUE(f.eventually([&] {
    const Reply list = f.api().get("/v1/instances?deployment=chat", kAdmin);
    for (const json& i : list.body["instances"]) {
      if (i["id"] != id && i["state"] == "assigned") fresh = i["id"];
    }
    return !fresh.empty();
  })) << f.api().get("/v1/instances", kAdmin).body.dump()
      << f.api().get("/v1/events", kAdmin).body.dump();
  fresh_port = f.api().get("/v1/instances/" + fresh, kAdmin).body["assignment"]["server_port"];
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(f.api().get("/v1/instances/" + id, kAdmin).body["state"], "running");
  // ... and goes once the new one runs.
  ASSERT_EQ(report(f.api(), "w1", key, fresh, fresh_port, "running").status, 200);
  EXPECT_TRUE(f.eventually([&] {
    const json list = f.api().get("/v1/instances?deployment=chat", kAdmin).body["instances"];
    return list.size() == 1 && list[0]["id"] == fresh;
  }));
}

TEST(FaultInjection, ServerDownLongerThanTheTimeoutTouchesNoHealthyInstance) {
  TempDir dir;
  server::ServerConfig c;
  c.data_dir = dir.file("data");
  c.port = 0;
  c.admin_key = kAdmin;
  c.join_token = ServerFixture::kJoin;
  c.schedule_interval_ms = 100;
  c.scheduler.heartbeat_timeout_ms = 1000;
  c.scheduler.replan_grace_ms = 1000;
  c.scheduler.instance_port_base = 29000;
  const std::string model = ggfleet::model::synth("llama3-8b-q4_0", dir.file("models"), {}).front();
  std::string key, id, main_worker;
  int port = 0;
  {
    server::Server first(c);
    Api api(first.start());
    const Reply r = api.post("/v1/workers/register", ServerFixture::kJoin,
                             {{"name", "w1"}, {"resources", resources(1)}});
    ASSERT_EQ(r.status, 201);
    key = r.body["key"];
    ASSERT_EQ(api.post("/v1/deployments", kAdmin, {{"name", "chat"}, {"model", model}}).status,
              201);
    for (int k = 0; k < 200 && id.empty(); ++k) {
      const json list = api.get("/v1/instances", kAdmin).body["instances"];
      if (!list.empty() && list[0]["state"] == "assigned") id = list[0]["id"];
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_FALSE(id.empty());
    port = api.get("/v1/instances/" + id, kAdmin).body["assignment"]["server_port"];
    ASSERT_EQ(report(api, "w1", key, id, port, "running").status, 200);
    first.stop();
  }
  // Down for three times timeout + grace: the worker could not heartbeat, it did not fail.
  std::this_thread::sleep_for(std::chrono::seconds(6));
  server::Server second(c);
  Api api(second.start());
  const std::int64_t last_event =
      api.get("/v1/events?limit=1000", kAdmin).body["events"].back()["id"];
  // The worker's next heartbeat comes within its period (here: 500 ms after the restart).
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  for (int k = 0; k < 6; ++k) {
    ASSERT_EQ(report(api, "w1", key, id, port, "running").status, 200);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  const json i = api.get("/v1/instances/" + id, kAdmin).body;
  EXPECT_EQ(i["state"], "running") << i.dump();
  EXPECT_EQ(i["main_worker"], "w1");
  const Reply events = api.get("/v1/events?after=" + std::to_string(last_event), kAdmin);
  for (const json& e : events.body["events"]) {
    EXPECT_NE(e["kind"], "worker.unreachable") << e.dump();
    EXPECT_NE(e["kind"], "instance.replanned") << e.dump();
  }
  second.stop();
}

}  // namespace
}  // namespace ggfleet::test

namespace ggfleet::test {
namespace {

// --tls-cert/--tls-key: the public port and the workers' port speak TLS; the rest is as without.
TEST(Tls, PublicAndWorkerPortsSpeakTls) {
  TempDir dir;
  const CommandResult made =
      run_command("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -keyout " +
                  dir.file("key.pem") + " -out " + dir.file("cert.pem") + " 2>&1");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  ServerFixture f("sqlite", {}, [&](server::ServerConfig& c) {
    c.tls_cert = dir.file("cert.pem");
    c.tls_key = dir.file("key.pem");
  });
  httplib::SSLClient tls("127.0.0.1", f.port());
  tls.enable_server_certificate_verification(false);
  tls.set_read_timeout(10);
  auto r = tls.Get("/healthz");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
  r = tls.Post("/v1/workers/register",
               {{"Authorization", std::string("Bearer ") + ServerFixture::kJoin}},
               json{{"name", "w1"}, {"resources", resources(1)}}.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 201) << r->body;
  const json reg = json::parse(r->body);
  httplib::SSLClient workers("127.0.0.1", reg["worker_port"].get<int>());
  workers.enable_server_certificate_verification(false);
  r = workers.Post("/v1/workers/w1/heartbeat",
                   {{"Authorization", "Bearer " + reg["key"].get<std::string>()}}, "{}",
                   "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200) << r->body;
  // The data plane behind TLS: a JSON answer from the proxy itself.
  r = tls.Post("/v1/chat/completions", {{"Authorization", std::string("Bearer ") + kAdmin}},
               R"({"model": "nothing", "messages": []})", "application/json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 404) << r->body;
  // Plaintext on the TLS port is not served.
  httplib::Client plain("127.0.0.1", f.port());
  plain.set_read_timeout(5);
  const auto p = plain.Get("/healthz");
  EXPECT_TRUE(!p || p->status != 200);
  // Real workers: one trusts the self-signed certificate (--ca-cert) and registers over TLS, on
  // the public port and then the workers' port; one without it refuses the certificate.
  auto worker = [&](const std::string& name, const std::string& extra) {
    return std::thread([&dir, name, extra, port = f.port()] {
      run_command("timeout 15 " + std::string(GGFLEET_BINARY) +
                  " worker --server https://127.0.0.1:" + std::to_string(port) + " --join-token " +
                  ServerFixture::kJoin + " --name " + name +
                  " --declare-gpu 'NVIDIA L40S:48GiB' --heartbeat-ms 300 --data-dir " +
                  dir.file(name) + " " + extra + " > " + dir.file(name + ".log") + " 2>&1");
    });
  };
  std::thread trusted = worker("trusting", "--ca-cert " + dir.file("cert.pem"));
  std::thread untrusted = worker("untrusting", "");
  const auto heartbeats = [&](const std::string& name) {
    const auto w = tls.Get("/v1/workers/" + name,
                           {{"Authorization", std::string("Bearer ") + ServerFixture::kAdmin}});
    return w && w->status == 200 && json::parse(w->body).value("last_heartbeat_ms", 0) > 0;
  };
  EXPECT_TRUE(f.eventually([&] { return heartbeats("trusting"); }))
      << read_file(dir.file("trusting.log"));
  EXPECT_FALSE(heartbeats("untrusting"));
  trusted.join();
  untrusted.join();
  EXPECT_FALSE(heartbeats("untrusting")) << read_file(dir.file("untrusting.log"));
  EXPECT_NE(read_file(dir.file("untrusting.log")).find("ertificate"), std::string::npos)
      << read_file(dir.file("untrusting.log"));
}

}  // namespace
}  // namespace ggfleet::test
