// The API over real HTTP: every route, auth failures (no key, wrong key, a worker speaking for
// another, a join token listing) as 401/403 JSON, and malformed requests as 4xx JSON, never 5xx.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <sstream>
#include <thread>

#include "server_fixture.h"

namespace ggfleet::test {
namespace {

using nlohmann::json;
constexpr const char* kAdmin = ServerFixture::kAdmin;

TEST(Api, EveryRouteWorks) {
  ServerFixture f;
  Api& api = f.api();
  EXPECT_EQ(api.get("/healthz", "").status, 200);
  const std::string w1 = f.add_worker("w1", resources(2));
  const std::string w2 = f.add_worker("w2", resources(1));
  ASSERT_FALSE(w1.empty());
  // Workers.
  Reply r = api.get("/v1/workers", kAdmin);
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.body["workers"].size(), 2u);
  EXPECT_EQ(api.get("/v1/workers/w1", w1).body["name"], "w1");
  EXPECT_EQ(api.post("/v1/workers/w1/heartbeat", w1, {{"resources", resources(2)}}).status, 200);
  // Keys: a user key for the rest.
  r = api.post("/v1/keys", kAdmin, {{"name", "alice"}, {"role", "user"}});
  ASSERT_EQ(r.status, 201);
  const std::string user = r.body["key"];
  EXPECT_EQ(api.get("/v1/keys", kAdmin).status, 200);
  // Deployments and their instances.
  const std::string model = f.model();
  r = api.post(
      "/v1/deployments", user,
      {{"name", "chat"}, {"model", model}, {"replicas", 2}, {"options", {{"context", 2048}}}});
  ASSERT_EQ(r.status, 201) << r.body.dump();
  EXPECT_EQ(api.post("/v1/deployments", user, {{"name", "chat"}, {"model", model}}).status, 409);
  ASSERT_TRUE(f.eventually([&] {
    const Reply i = api.get("/v1/instances?deployment=chat", user);
    int assigned = 0;
    for (const json& x : i.body["instances"]) assigned += x["state"] == "assigned";
    return assigned == 2;
  }));
  r = api.get("/v1/instances", user);
  ASSERT_EQ(r.body["instances"].size(), 2u);
  const std::string id = r.body["instances"][0]["id"];
  r = api.get("/v1/instances/" + id, user);
  ASSERT_EQ(r.status, 200);
  EXPECT_TRUE(r.body["assignment"].contains("commands"));
  EXPECT_EQ(api.get("/v1/instances/" + id + "/logs", user).status, 200);
  EXPECT_EQ(api.get("/v1/deployments", user).body["deployments"].size(), 1u);
  EXPECT_EQ(api.get("/v1/deployments/chat", user).body["instance_list"].size(), 2u);
  // The main worker learns its assignment and reports it running.
  const std::string main = api.get("/v1/instances/" + id, user).body["main_worker"];
  const std::string main_key = main == "w1" ? w1 : w2;
  // An answer without waiting comes from the last published board, which the leader publishes
  // just after its pass: the store may say assigned a moment before the board does.
  ASSERT_TRUE(f.eventually([&] {
    r = api.get("/v1/workers/" + main + "/assignments?since=0", main_key);
    return r.status == 200 && !r.body["instances"].empty();
  })) << r.body.dump();
  EXPECT_EQ(r.body["instances"][0]["role"], "main");
  EXPECT_EQ(r.body["instances"][0]["server"]["model"], model);
  EXPECT_EQ(api.post("/v1/workers/" + main + "/heartbeat", main_key,
                     {{"instances",
                       json::array({{{"id", id}, {"state", "running"}, {"log_tail", "ready"}}})}})
                .status,
            200);
  EXPECT_EQ(api.get("/v1/instances/" + id, user).body["state"], "running");
  // A long poll returns when this worker's assignments change, and only then.
  const std::int64_t version =
      api.get("/v1/workers/" + main + "/assignments", main_key).body["version"];
  const std::string idle = main == "w1" ? "w2" : "w1";
  const std::string idle_key = main == "w1" ? w2 : w1;
  std::thread scale([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    Api other(f.port());
    other.send("PATCH", "/v1/deployments/chat", user, R"({"replicas": 0})");
  });
  const auto t0 = std::chrono::steady_clock::now();
  r = api.get("/v1/workers/" + main + "/assignments?since=" + std::to_string(version) + "&wait=20",
              main_key);
  scale.join();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  EXPECT_GT(r.body["version"].get<std::int64_t>(), version);
  EXPECT_TRUE(r.body["instances"].empty()) << r.body.dump();
  {
    // Both workers are empty now; a deployment placed on the main changes nothing for the
    // other one: its poll waits out its time.
    const std::int64_t now = r.body["version"];
    Api other(f.port());
    std::thread noise([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      other.post("/v1/deployments", user,
                 {{"name", "other"}, {"model", model}, {"options", {{"gpus", {main + ":0"}}}}});
    });
    const auto t1 = std::chrono::steady_clock::now();
    r = api.get("/v1/workers/" + idle + "/assignments?since=" + std::to_string(now) + "&wait=2",
                idle_key);
    noise.join();
    EXPECT_GE(std::chrono::steady_clock::now() - t1, std::chrono::milliseconds(1900));
    EXPECT_TRUE(r.body["instances"].empty()) << r.body.dump();
    // ... while the main's did change in that time.
    EXPECT_EQ(api.get("/v1/workers/" + main + "/assignments", main_key).body["instances"].size(),
              1u);
    EXPECT_EQ(api.send("DELETE", "/v1/deployments/other", user).status, 200);
  }
  // Plan dry run, events, metrics.
  r = api.post("/v1/plan", user, {{"model", model}, {"options", {{"context", 2048}}}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_TRUE(r.body["feasible"].get<bool>());
  EXPECT_TRUE(r.body["layout"].contains("main_worker"));
  r = api.get("/v1/events", user);
  EXPECT_FALSE(r.body["events"].empty());
  httplib::Client raw("127.0.0.1", f.port());
  raw.set_bearer_token_auth(kAdmin);
  const auto metrics = raw.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("ggfleet_workers{state=\"ready\"} 2"), std::string::npos)
      << metrics->body;
  EXPECT_NE(metrics->body.find("ggfleet_api_request_duration_seconds_bucket"), std::string::npos);
  EXPECT_NE(metrics->body.find("ggfleet_scheduling_duration_seconds_count"), std::string::npos);
  // "chat" and "other" were placed, each after some time in the planner.
  auto counter = [&](const std::string& name) {
    const std::size_t at = metrics->body.find("\n" + name + " ");
    return at == std::string::npos ? -1.0 : std::stod(metrics->body.substr(at + name.size() + 2));
  };
  EXPECT_GE(counter("ggfleet_placements_total"), 2) << metrics->body;
  EXPECT_GT(counter("ggfleet_planning_seconds_total"), 0) << metrics->body;
  // Drain, remove, delete.
  EXPECT_EQ(api.post("/v1/workers/w2/drain", user, json::object()).body["status"], "draining");
  EXPECT_EQ(api.send("DELETE", "/v1/workers/w2", kAdmin).status, 200);
  EXPECT_EQ(api.send("DELETE", "/v1/deployments/chat", user).status, 200);
  EXPECT_EQ(api.get("/v1/deployments/chat", user).status, 404);
  EXPECT_TRUE(api.get("/v1/instances", user).body["instances"].empty());
  const std::string key_id = api.get("/v1/keys", kAdmin).body["keys"].back()["id"];
  EXPECT_EQ(api.send("DELETE", "/v1/keys/" + key_id, kAdmin).status, 200);
}

TEST(Api, AuthFailuresAre401And403Json) {
  ServerFixture f;
  Api& api = f.api();
  const std::string w1 = f.add_worker("w1", resources(1));
  f.add_worker("w2", resources(1));
  const Reply user_key = api.post("/v1/keys", kAdmin, {{"name", "bob"}});
  const std::string user = user_key.body["key"];
  struct Case {
    std::string method, path, key, body;
    int status;
  };
  const std::vector<Case> cases = {
      {"GET", "/v1/workers", "", "", 401},
      {"GET", "/metrics", "", "", 401},
      {"GET", "/v1/deployments", "wrong", "", 401},
      {"GET", "/v1/events", "Basic abc", "", 401},
      {"POST", "/v1/workers/w2/heartbeat", w1, "{}", 403},  // a worker speaking for another
      {"GET", "/v1/workers/w2/assignments", w1, "", 403},
      {"GET", "/v1/workers", w1, "", 403},  // a worker listing the fleet
      {"GET", "/v1/deployments", ServerFixture::kJoin, "",
       403},                                               // a join token is only for joining
      {"POST", "/v1/keys", user, R"({"name":"x"})", 403},  // users do not make keys
      {"DELETE", "/v1/workers/w1", user, "", 403},
      {"POST", "/v1/workers/w1/heartbeat", user, "{}", 403},
  };
  for (const Case& c : cases) {
    const Reply r = api.send(c.method, c.path, c.key == "Basic abc" ? "" : c.key, c.body);
    EXPECT_EQ(r.status, c.status) << c.method << " " << c.path;
    ASSERT_TRUE(r.body.is_object()) << c.method << " " << c.path;
    EXPECT_TRUE(r.body.contains("error")) << c.method << " " << c.path;
  }
}

TEST(Api, MalformedRequestsAre4xxJson) {
  ServerFixture f;
  Api& api = f.api();
  f.add_worker("w1", resources(1));
  const std::string model = f.model();
  const std::string big(2 << 20, 'x');
  struct Case {
    std::string method, path, body;
    int status;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"POST", "/v1/deployments", "{not json", 400, "not valid JSON"},
      {"POST", "/v1/deployments", "[1,2]", 400, "must be a JSON object"},
      {"POST", "/v1/deployments", "", 400, "body is required"},
      {"POST", "/v1/deployments", R"({"name":"a","model":")" + model + R"(","replicas":"two"})",
       400, "'replicas' must be an integer"},
      {"POST", "/v1/deployments", R"({"name":"a","model":")" + model + R"(","colour":"red"})", 400,
       "unknown field 'colour'"},
      {"POST", "/v1/deployments", R"({"name":"A B","model":")" + model + R"("})", 400,
       "'name' must match"},
      {"POST", "/v1/deployments", R"({"name":"a","model":"/no/such.gguf"})", 400,
       "cannot read the model"},
      {"POST", "/v1/deployments",
       R"({"name":"a","model":")" + model + R"(","options":{"context":-5}})", 400,
       "context must be"},
      {"POST", "/v1/deployments", R"({"name":"a","model":")" + model + R"(","options":{"warp":9}})",
       400, "unknown option 'warp'"},
      {"POST", "/v1/deployments",
       R"({"name":"a","model":")" + model + R"(","options":{"expert_offload":"no"}})", 400,
       "expert_offload must be true or false"},
      {"POST", "/v1/deployments",
       R"({"name":"a","model":")" + model + R"(","options":{"gpus":["w1"]}})", 400,
       "is not \"worker:index\""},
      {"POST", "/v1/deployments", R"({"name":"a","model":")" + model + R"(","replicas":100000})",
       400, "from 0 to 1000"},
      {"POST", "/v1/deployments", R"({"name":"a","model":")" + big + R"("})", 413, "too large"},
      {"PATCH", "/v1/deployments/nope", R"({"replicas":1})", 404, "no deployment"},
      // An empty PATCH reached the control plane without its "Content-Length: 0" and waited
      // there for a body until httplib's read timeout (found by fuzz/http_api_fuzz).
      {"PATCH", "/v1/deployments/nope", "", 400, "body is required"},
      {"POST", "/v1/workers/register",
       R"({"name":"w9","resources":{"gpus":[{"name":"Mystery GPU"}]}})", 400, "not in the catalog"},
      {"POST", "/v1/workers/register", R"({"name":"w9","resources":{"cpu":"fast"}})", 400,
       "cpu must be a mapping"},
      {"POST", "/v1/workers/w1/heartbeat", R"({"instances":[{"id":"x","state":"dancing"}]})", 400,
       "unknown instance state"},
      {"POST", "/v1/plan", R"({"model":")" + model + R"(","options":{"ngl":999}})", 400,
       "larger than the model"},
      {"GET", "/v1/events?after=abc", "", 400, "must be integers"},
      {"GET", "/v1/nothing", "", 404, "no such route"},
  };
  for (const Case& c : cases) {
    const Reply r = api.send(c.method, c.path, kAdmin, c.body);
    EXPECT_EQ(r.status, c.status) << c.method << " " << c.path << " " << c.body.substr(0, 80)
                                  << "\n"
                                  << r.body.dump();
    ASSERT_TRUE(r.body.is_object()) << c.path;
    EXPECT_NE(r.body.value("error", "").find(c.message), std::string::npos)
        << c.method << " " << c.path << ": " << r.body.dump();
  }
  // Nothing half-written: no deployment named "a" was created by any of those.
  EXPECT_EQ(api.get("/v1/deployments/a", kAdmin).status, 404);
  EXPECT_EQ(api.get("/healthz", "").status, 200);
}

// HEAD is answered with the GET's headers and no body, and the connection stays usable: the
// gateway used to wait for the body the answer's Content-Length announced (found by
// fuzz/http_api_fuzz), so the next request on the connection got nothing until a timeout.
TEST(Api, HeadAnswersHeadersOnlyAndTheConnectionGoesOn) {
  ServerFixture f;
  httplib::Client client("127.0.0.1", f.port());
  client.set_keep_alive(true);
  client.set_read_timeout(10);
  const httplib::Headers auth = {{"Authorization", std::string("Bearer ") + kAdmin}};
  for (int round = 0; round < 3; ++round) {
    const httplib::Result head = client.Head("/v1/deployments", auth);
    ASSERT_TRUE(head) << "round " << round << ": " << httplib::to_string(head.error());
    EXPECT_EQ(head->status, 200);
    EXPECT_TRUE(head->body.empty());
    const httplib::Result get = client.Get("/v1/deployments", auth);
    ASSERT_TRUE(get) << "round " << round << ": " << httplib::to_string(get.error());
    EXPECT_EQ(get->status, 200);
    EXPECT_EQ(json::parse(get->body)["deployments"], json::array());
  }
}

// Requests Beast cannot parse (a byte no target may hold, a bad method, a broken header line or
// chunk) get a 400 JSON answer and the connection closes: the gateway used to close it without a
// word (found by fuzz/http_api_fuzz).
// Requests Beast cannot parse (a byte no target may hold, a bad method, a broken header line or
// chunk) get a 400 JSON answer and the connection closes: the gateway used to close it without a
// word (found by fuzz/http_api_fuzz).
// A GET or HEAD with a body, then another request on the same connection: both answered as
// themselves. The body used to reach the control plane, which took it for the start of the next
// request on the gateway's kept-alive connection and answered that one with a 400.
TEST(Api, BodiesOnGetAndHeadDoNotLeakIntoTheNextRequest) {
  ServerFixture f;
  const std::string auth = std::string("Authorization: Bearer ") + kAdmin + "\r\n";
  for (const char* method : {"GET", "HEAD"}) {
    const std::string answer = raw_exchange(
        f.port(), std::string(method) + " /v1/deployments HTTP/1.1\r\nHost: x\r\n" + auth +
                      "Content-Length: 4\r\n\r\nnull"
                      "GET /v1/deployments HTTP/1.1\r\nHost: x\r\n" +
                      auth + "Connection: close\r\n\r\n");
    std::size_t ok = 0;
    for (std::size_t at = answer.find("HTTP/1.1 200 "); at != std::string::npos;
         at = answer.find("HTTP/1.1 200 ", at + 1))
      ++ok;
    EXPECT_EQ(ok, 2u) << method << "\n" << answer;
    EXPECT_EQ(answer.find("HTTP/1.1 4"), std::string::npos) << method << "\n" << answer;
  }
}

TEST(Api, UnparseableRequestsGet400) {
  ServerFixture f;
  const std::string end = "Host: x\r\nConnection: close\r\n\r\n";
  for (const std::string& request :
       {"PATCH /v1/\x8a\x17 HTTP/1.1\r\n" + end, "GET /v1/a\x01b HTTP/1.1\r\n" + end,
        "G(T /v1/deployments HTTP/1.1\r\n" + end,
        "GET /v1/deployments HTTP/1.1\r\nBad Header\r\n" + end,
        std::string("POST /v1/deployments HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "zz\r\n{}\r\n0\r\n\r\n")}) {
    const std::string answer = raw_exchange(f.port(), request);
    EXPECT_EQ(answer.rfind("HTTP/1.1 400 ", 0), 0u) << request << "\n=> " << answer;
    const std::size_t body = answer.find("\r\n\r\n");
    ASSERT_NE(body, std::string::npos) << request;
    const json error = json::parse(answer.substr(body + 4), nullptr, false);
    ASSERT_TRUE(error.is_object() && error["error"].is_string()) << answer;
    EXPECT_NE(error["error"].get<std::string>().find("malformed"), std::string::npos) << answer;
  }
  EXPECT_EQ(f.api().get("/healthz", "").status, 200);
}

TEST(Api, UnplaceableInstancesStayPendingWithTheReason) {
  ServerFixture f;
  f.add_worker("tiny", resources(0, 8ull << 30));
  const std::string model = f.model("llama3-70b-q4_k_m");
  ASSERT_EQ(f.api().post("/v1/deployments", kAdmin, {{"name", "big"}, {"model", model}}).status,
            201);
  ASSERT_TRUE(f.eventually([&] {
    const Reply r = f.api().get("/v1/instances", kAdmin);
    return !r.body["instances"].empty() &&
           r.body["instances"][0]["reason"].get<std::string>().find("does not fit") == 0;
  })) << f.api().get("/v1/instances", kAdmin).body.dump();
  const Reply e = f.api().get("/v1/events?subject=big-1", kAdmin);
  bool pending_event = false;
  for (const json& x : e.body["events"]) pending_event |= x["kind"] == "instance.pending";
  EXPECT_TRUE(pending_event);
}

TEST(Api, InstancesOfASilentWorkerAreReplanned) {
  server::SchedulerConfig sched;
  sched.heartbeat_timeout_ms = 600;
  sched.replan_grace_ms = 600;
  ServerFixture f("sqlite", sched);
  const std::string a = f.add_worker("a", resources(1));
  const std::string b = f.add_worker("b", resources(1));
  ASSERT_EQ(
      f.api().post("/v1/deployments", kAdmin, {{"name", "chat"}, {"model", f.model()}}).status,
      201);
  std::string main;
  // Both heartbeat until the instance is placed (a slow build may take longer than the 600 ms
  // timeout to place it, and would then find both workers silent).
  ASSERT_TRUE(f.eventually([&] {
    f.api().post("/v1/workers/a/heartbeat", a, json::object());
    f.api().post("/v1/workers/b/heartbeat", b, json::object());
    const Reply r = f.api().get("/v1/instances", kAdmin);
    if (r.body["instances"].empty() || r.body["instances"][0]["state"] != "assigned") return false;
    main = r.body["instances"][0]["main_worker"];
    return true;
  }));
  const std::string other = main == "a" ? "b" : "a";
  const std::string other_key = main == "a" ? b : a;
  // Only the other worker keeps heartbeating.
  ASSERT_TRUE(f.eventually(
      [&] {
        f.api().post("/v1/workers/" + other + "/heartbeat", other_key, json::object());
        const Reply r = f.api().get("/v1/instances", kAdmin);
        return r.body["instances"][0]["main_worker"] == other &&
               r.body["instances"][0]["state"] == "assigned";
      },
      15));
  EXPECT_EQ(f.api().get("/v1/workers/" + main, kAdmin).body["status"], "unreachable");
}

// A poll the gateway cannot park (here: it claims a version newer than the published board)
// waits on a control thread; with no long-poll slot free it is answered at once and told when to
// ask again, so waiting polls can never take every HTTP thread.
TEST(Api, LongPollsBeyondTheSlotsAreToldToRetry) {
  ServerFixture f("sqlite", {}, [](server::ServerConfig& c) { c.long_poll_slots = 0; });
  const std::string key = f.add_worker("w1", resources(1));
  const std::int64_t ahead =
      f.api().get("/v1/workers/w1/assignments", key).body.value("version", std::int64_t{-1}) + 1000;
  ASSERT_TRUE(f.eventually([&] {
    const auto t0 = std::chrono::steady_clock::now();
    const Reply r =
        f.api().get("/v1/workers/w1/assignments?since=" + std::to_string(ahead) + "&wait=5", key);
    return r.status == 200 && r.body.value("retry_after_ms", 0) == 2000 &&
           std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2);
  }));
}

// The gauge `name` in the server's /metrics, or -1.
double metric(int port, const std::string& name) {
  httplib::Client c("127.0.0.1", port);
  const auto r =
      c.Get("/metrics", {{"Authorization", std::string("Bearer ") + ServerFixture::kAdmin}});
  if (!r || r->status != 200) return -1;
  std::istringstream lines(r->body);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(name + " ", 0) == 0) return std::stod(line.substr(name.size() + 1));
  }
  return -1;
}

// Long polls wait on the gateway's event loop, not on control threads: far more polls than the
// server has threads (and with no thread slot for polls at all) each wait their whole time, and
// the API answers meanwhile. Before polls were parked, every one of them was told to retry.
TEST(Api, LongPollsParkWithoutHoldingThreads) {
  ServerFixture f("sqlite", {}, [](server::ServerConfig& c) {
    c.threads = 4;
    c.long_poll_slots = 0;
  });
  const std::string key = f.add_worker("w1", resources(1));
  const std::int64_t version =
      f.api().get("/v1/workers/w1/assignments", key).body.value("version", std::int64_t{-1});
  const std::string poll = "/v1/workers/w1/assignments?since=" + std::to_string(version) + "&wait=";
  // Until a poll waits a whole second: the gateway has parked it, so the first board is
  // published and the key is cached (publishing the first board forgets the keys a server knew;
  // before it, the control plane answers a poll at once, with nothing to wait on).
  ASSERT_TRUE(f.eventually([&] {
    const auto t0 = std::chrono::steady_clock::now();
    const Reply r = f.api().get(poll + "1", key);
    return r.status == 200 && !r.body.contains("retry_after_ms") &&
           std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(900);
  }));
  constexpr int kPolls = 40;
  std::atomic<int> waited{0}, early{0};
  std::mutex early_mu;
  std::vector<std::string> early_answers;  // what each early poll got, said on failure
  std::vector<std::thread> polls;
  for (int i = 0; i < kPolls; ++i) {
    polls.emplace_back([&] {
      Api own(f.port());
      const auto t0 = std::chrono::steady_clock::now();
      const Reply r = own.get(poll + "4", key);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (r.status == 200 && !r.body.contains("retry_after_ms") && s >= 3.5) {
        ++waited;
        return;
      }
      ++early;
      std::lock_guard<std::mutex> lock(early_mu);
      early_answers.push_back(std::to_string(r.status) + " after " + std::to_string(s) +
                              " s: " + r.body.dump());
    });
  }
  EXPECT_TRUE(
      f.eventually([&] { return metric(f.port(), "ggfleet_parked_long_polls") == kPolls; }, 3));
  EXPECT_EQ(f.api().get("/v1/workers", ServerFixture::kAdmin).status, 200);
  for (std::thread& t : polls) t.join();
  EXPECT_EQ(waited.load(), kPolls);
  EXPECT_EQ(early.load(), 0) << ::testing::PrintToString(early_answers);
  EXPECT_EQ(metric(f.port(), "ggfleet_parked_long_polls"), 0);
}

// The proxy reads where instances listen from a cache; a state change reported by a heartbeat
// reaches it at once (the next request), not after a timeout. The instance's llama-server is
// stood in for by a small HTTP server on its assigned port (the e2e test runs real ones).
TEST(Api, ProxyFollowsInstanceStatesAtOnce) {
  server::SchedulerConfig sched;
  sched.instance_port_base = 28700;  // apart from the ports other tests use
  ServerFixture f("sqlite", sched);
  const std::string key =
      f.api()
          .post("/v1/workers/register", ServerFixture::kJoin,
                {{"name", "w1"}, {"address", "127.0.0.1"}, {"resources", resources(1)}})
          .body.value("key", "");
  ASSERT_FALSE(key.empty());
  ASSERT_EQ(
      f.api().post("/v1/deployments", kAdmin, {{"name", "chat"}, {"model", f.model()}}).status,
      201);
  std::string id;
  int port = 0;
  ASSERT_TRUE(f.eventually([&] {
    const Reply r = f.api().get("/v1/instances", kAdmin);
    if (r.body["instances"].empty() || r.body["instances"][0]["state"] != "assigned") return false;
    id = r.body["instances"][0]["id"];
    port = f.api().get("/v1/instances/" + id, kAdmin).body["assignment"]["server_port"];
    return true;
  }));
  httplib::Server upstream;
  upstream.Post("/v1/chat/completions", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})",
                    "application/json");
  });
  upstream.set_keep_alive_timeout(1);  // the proxy keeps its connection: stop() waits for it
  ASSERT_TRUE(upstream.bind_to_port("127.0.0.1", port));
  std::thread serving([&] { upstream.listen_after_bind(); });
  const json chat = {{"model", "chat"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  auto report = [&](const std::string& state) {
    return f.api()
        .post("/v1/workers/w1/heartbeat", key,
              {{"instances",
                json::array({{{"id", id}, {"state", state}, {"reason", state}, {"port", port}}})}})
        .status;
  };
  Reply r = f.api().post("/v1/chat/completions", kAdmin, chat);  // cached: not ready
  EXPECT_EQ(r.status, 503) << r.body.dump();
  ASSERT_EQ(report("running"), 200);
  r = f.api().post("/v1/chat/completions", kAdmin, chat);
  EXPECT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["usage"]["completion_tokens"], 2);
  ASSERT_EQ(report("error"), 200);
  r = f.api().post("/v1/chat/completions", kAdmin, chat);
  EXPECT_EQ(r.status, 503) << r.body.dump();
  // OpenAI's error shape on OpenAI routes.
  ASSERT_TRUE(r.body["error"].is_object()) << r.body.dump();
  EXPECT_EQ(r.body["error"].value("type", ""), "server_error");
  EXPECT_NE(r.body["error"].value("message", "").find("is error"), std::string::npos)
      << r.body.dump();
  ASSERT_EQ(report("running"), 200);
  EXPECT_EQ(f.api().post("/v1/chat/completions", kAdmin, chat).status, 200);
  // The deployment deleted: gone at once as well.
  ASSERT_EQ(f.api().send("DELETE", "/v1/deployments/chat", kAdmin).status, 200);
  EXPECT_EQ(f.api().post("/v1/chat/completions", kAdmin, chat).status, 404);
  upstream.stop();
  serving.join();
}

}  // namespace
}  // namespace ggfleet::test

namespace ggfleet::test {
namespace {

// The client verbs against a real server: deploy, ls, scale, events, rm, with --json and tables.
TEST(ClientVerbs, DeployListScaleEventsRemove) {
  ServerFixture f;
  f.add_worker("w1", resources(1));
  auto run = [&](const std::string& verb, const std::string& args) {
    return run_command(std::string(GGFLEET_BINARY) + " " + verb + " --server http://127.0.0.1:" +
                       std::to_string(f.port()) + " --key " + ServerFixture::kAdmin + " " + args);
  };
  CommandResult r = run("deploy", f.model() + " --name chat --replicas 2 --ctx 2048");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("deployment chat created"), std::string::npos) << r.output;
  ASSERT_TRUE(f.eventually(
      [&] { return run("ls", "instances").output.find("assigned") != std::string::npos; }));
  r = run("ls", "deployments");
  EXPECT_NE(r.output.find("NAME"), std::string::npos);
  EXPECT_NE(r.output.find("chat"), std::string::npos) << r.output;
  r = run("ls", "workers --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(r.output)["workers"][0]["name"], "w1");
  EXPECT_EQ(run("scale", "chat 1").exit_code, 0);
  EXPECT_EQ(Api(f.port()).get("/v1/deployments/chat", ServerFixture::kAdmin).body["replicas"], 1);
  r = run("events", "--subject chat");
  EXPECT_NE(r.output.find("deployment.created"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("TIME (UTC)"), std::string::npos) << r.output;
  // Newest first, a page at a time; --after pages forward from an id, oldest first.
  r = run("events", "--limit 2 --json");
  const json newest = json::parse(r.output.substr(r.output.find('{')));
  ASSERT_EQ(newest["events"].size(), 2u) << r.output;
  EXPECT_GT(newest["events"][0]["id"].get<int>(), newest["events"][1]["id"].get<int>());
  r = run("events", "--after 1 --limit 1 --json");
  EXPECT_EQ(json::parse(r.output.substr(r.output.find('{')))["events"][0]["id"], 2) << r.output;
  // Names are sent encoded: a space or a slash cannot reach another route.
  r = run("rm", "'a b/../../v1/keys'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("404"), std::string::npos) << r.output;
  EXPECT_EQ(run("events", "--limit 0").exit_code, 105) << "CLI11 refuses an out-of-range limit";
  EXPECT_EQ(run("rm", "chat").exit_code, 0);
  r = run("rm", "chat");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("404: no deployment named chat"), std::string::npos) << r.output;
  r = run_command(std::string(GGFLEET_BINARY) + " ls deployments --server http://127.0.0.1:" +
                  std::to_string(f.port()) + " --key wrong");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("401: invalid API key"), std::string::npos) << r.output;
  // Malformed ports and numbers name the flag instead of "stoi".
  for (const std::string& args :
       {std::string("server --listen 127.0.0.1:abc"), std::string("server --listen 0.0.0.0:70000"),
        std::string("start --listen localhost:"), std::string("probe --serve 127.0.0.1:99999")}) {
    r = run_command(std::string(GGFLEET_BINARY) + " " + args + " 2>&1");
    EXPECT_NE(r.exit_code, 0) << args;
    EXPECT_NE(r.output.find("--"), std::string::npos) << args << ": " << r.output;
    EXPECT_EQ(r.output.find("stoi"), std::string::npos) << args << ": " << r.output;
    EXPECT_NE(r.output.find("port"), std::string::npos) << args << ": " << r.output;
  }
  r = run_command(std::string(GGFLEET_BINARY) + " worker --heartbeat-ms 0 2>&1");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("heartbeat-ms"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace ggfleet::test
