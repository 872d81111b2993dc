// Holes an attacker with a user key (or none) would use, one test each, against a real server
// (in-process, real HTTP on loopback): argument injection into llama-server, model paths outside
// the roots, FIFOs, file contents in errors, URL models that reach the server's own network,
// remote headers that never end, strings that are not UTF-8, JSON nested without end, worker
// addresses that break command lines. The instance's own key (direct access to llama-server's
// port refused) is tested with real llama.cpp in tests/e2e/recovery_test.cc.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

#include "../server/server_fixture.h"
#include "gguf/reader.h"
#include "gguf/remote.h"
#include "model/synth.h"

namespace ggfleet::test {
namespace {

using nlohmann::json;
constexpr const char* kAdmin = ServerFixture::kAdmin;

std::string user_key(ServerFixture& f) {
  const Reply r = f.api().post("/v1/keys", kAdmin, {{"name", "mallory"}, {"role", "user"}});
  EXPECT_EQ(r.status, 201);
  return r.body.value("key", "");
}

// A small model file (1 block, narrow, short vocabulary): served over HTTP and copied whole.
std::string small_model(const std::string& dir) {
  model::SynthOptions o;
  o.blocks = 1;
  o.embedding = 256;
  o.vocab = 1000;
  return model::synth("llama3-8b-q4_0", dir, o).front();
}

// The id of an instance once the scheduler has assigned it ("" after 10 s without one).
std::string assigned_instance(ServerFixture& f) {
  std::string id;
  f.eventually([&] {
    const Reply r = f.api().get("/v1/instances", kAdmin);
    for (const json& i : r.body.value("instances", json::array())) {
      if (i.value("state", "") == "assigned") id = i.value("id", "");
    }
    return !id.empty();
  });
  return id;
}

Reply deploy(ServerFixture& f, const std::string& key, const std::string& model,
             const json& options = json::object(), const std::string& name = "chat") {
  return f.api().post("/v1/deployments", key,
                      {{"name", name}, {"model", model}, {"options", options}});
}

TEST(Security, UserKeyCannotInjectLlamaServerArguments) {
  ServerFixture f;
  f.add_worker("w1", resources(1));
  const std::string user = user_key(f);
  const std::string model = f.model();
  // Writing files, moving the listener, loading another model: refused for a user (403).
  for (const json& args :
       {json{"--log-file", "/tmp/pwned"}, json{"--host", "0.0.0.0"}, json{"--port", "1"},
        json{"-m", "/etc/shadow"}, json{"--temp", "0.7", "--slot-save-path", "/tmp"}}) {
    const Reply r = deploy(f, user, model, {{"extra_args", args}});
    EXPECT_EQ(r.status, 403) << args.dump() << " " << r.body.dump();
  }
  // Sampling defaults are a user's to set.
  EXPECT_EQ(deploy(f, user, model, {{"extra_args", {"--temp", "0.7", "--jinja"}}}).status, 201);
  // An admin may pass other flags, but never those that change where it listens or what it
  // loads or writes, in either form.
  for (const json& args : {json{"--log-file=/tmp/x"}, json{"--api-key", "k"}, json{"-hf", "a/b"},
                           json{"--rpc", "1.2.3.4:5"}}) {
    const Reply r = deploy(f, kAdmin, model, {{"extra_args", args}}, "admin-chat");
    EXPECT_EQ(r.status, 400) << args.dump() << " " << r.body.dump();
  }
  EXPECT_EQ(deploy(f, kAdmin, model, {{"extra_args", {"--no-webui-x"}}}, "ok").status, 201);
}

class Roots : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = roots_.file("models");
    std::filesystem::create_directories(root_);
    f_ = std::make_unique<ServerFixture>(
        "sqlite", server::SchedulerConfig{},
        [this](server::ServerConfig& c) { c.model_roots = {root_}; });
    f_->add_worker("w1", resources(1));
    user_ = user_key(*f_);
  }
  TempDir roots_;
  std::string root_;
  std::unique_ptr<ServerFixture> f_;
  std::string user_;
};

TEST_F(Roots, ModelPathOutsideTheRootsIsRefused) {
  const std::string inside = small_model(root_);
  EXPECT_EQ(deploy(*f_, user_, inside).status, 201);
  write_file(roots_.file("outside.gguf"), read_file(inside));
  for (const std::string& path :
       {std::string("/etc/passwd"), roots_.file("outside.gguf"), root_ + "/../outside.gguf",
        std::string("relative/../../etc/passwd")}) {
    const Reply r = deploy(*f_, user_, path, json::object(), "x");
    EXPECT_EQ(r.status, 403) << path << " " << r.body.dump();
  }
  // A link inside the roots that points out of them.
  std::filesystem::create_symlink(roots_.file("outside.gguf"), root_ + "/link.gguf");
  EXPECT_EQ(deploy(*f_, user_, root_ + "/link.gguf", json::object(), "y").status, 403);
  // The planner's dry run obeys the same rule.
  EXPECT_EQ(f_->api().post("/v1/plan", user_, {{"model", "/etc/passwd"}}).status, 403);
}

TEST_F(Roots, FifoIsRefusedWithoutBlocking) {
  const std::string fifo = root_ + "/pipe.gguf";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const auto t0 = std::chrono::steady_clock::now();
  const Reply r = deploy(*f_, user_, fifo);
  EXPECT_EQ(r.status, 400) << r.body.dump();
  EXPECT_NE(r.body.value("error", "").find("not a regular file"), std::string::npos)
      << r.body.dump();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  // The server still answers (no HTTP thread stuck in open()).
  EXPECT_EQ(f_->api().get("/healthz", "").status, 200);
}

TEST_F(Roots, ErrorsNeverEchoFileContent) {
  write_file(root_ + "/secret.gguf", "root:x:0:0:root:/root:/bin/bash\n");
  const Reply r = deploy(*f_, user_, root_ + "/secret.gguf");
  EXPECT_EQ(r.status, 400);
  const std::string error = r.body.value("error", "");
  EXPECT_NE(error.find("not a GGUF file"), std::string::npos) << error;
  EXPECT_EQ(error.find("root:"), std::string::npos) << error;
  EXPECT_EQ(error.find("root'"), std::string::npos) << error;
}

// A local HTTP server that serves a GGUF file with ranges (loopback: private by the policy).
class TinyHttp {
 public:
  explicit TinyHttp(std::string body) : body_(std::move(body)) {
    server_.Get("/m.gguf", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(body_, "application/octet-stream");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ~TinyHttp() {
    server_.stop();
    thread_.join();
  }
  int port() const { return port_; }

 private:
  std::string body_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

TEST(Security, UrlModelsCannotReachTheServersOwnNetwork) {
  ServerFixture f;
  f.add_worker("w1", resources(1));
  const std::string user = user_key(f);
  TempDir dir;
  TinyHttp http(read_file(small_model(dir.file("m"))));
  for (const std::string& url :
       {"http://127.0.0.1:" + std::to_string(http.port()) + "/m.gguf",
        "http://localhost:" + std::to_string(http.port()) + "/m.gguf",
        std::string("http://169.254.169.254/latest/meta-data.gguf"),
        std::string("http://10.1.2.3/m.gguf"), std::string("http://[::1]:1/m.gguf"),
        std::string("http://0.0.0.0:1/m.gguf")}) {
    const auto t0 = std::chrono::steady_clock::now();
    const Reply r = deploy(f, user, url);
    EXPECT_EQ(r.status, 400) << url << " " << r.body.dump();
    EXPECT_NE(r.body.value("error", "").find("refused"), std::string::npos) << r.body.dump();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5)) << url;
  }
  EXPECT_EQ(deploy(f, user, "file:///etc/passwd").status, 400);
  EXPECT_EQ(deploy(f, user, "gopher://127.0.0.1/x").status, 400);
}

TEST(Security, UrlModelsOnThePrivateNetworkWhenTheAdminAllowsThem) {
  ServerFixture f("sqlite", {}, [](server::ServerConfig& c) { c.allow_private_urls = true; });
  f.add_worker("w1", resources(1));
  TempDir dir;
  TinyHttp http(read_file(small_model(dir.file("m"))));
  const Reply r = deploy(f, kAdmin, "http://127.0.0.1:" + std::to_string(http.port()) + "/m.gguf");
  EXPECT_EQ(r.status, 201) << r.body.dump();
}

TEST(Security, AddressClassification) {
  for (const char* ip : {"127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
                         "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "::", "fe80::1", "fd00::1",
                         "::ffff:127.0.0.1", "::ffff:10.0.0.1", "not-an-ip"})
    EXPECT_TRUE(gguf::is_private_address(ip)) << ip;
  for (const char* ip : {"8.8.8.8", "1.1.1.1", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"})
    EXPECT_FALSE(gguf::is_private_address(ip)) << ip;
}

// A raw TCP server that answers every connection with `answer` (written slowly or endlessly).
class RawServer {
 public:
  explicit RawServer(std::function<void(int)> answer) : answer_(std::move(answer)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    socklen_t n = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &n);
    port_ = ntohs(a.sin_port);
    ::listen(fd_, 4);
    thread_ = std::thread([this] {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c >= 0) {
        answer_(c);
        ::close(c);
      }
    });
  }
  ~RawServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  int port() const { return port_; }
  std::atomic<bool> stop_{false};

 private:
  std::function<void(int)> answer_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

TEST(Security, RemoteHeadersThatNeverEndOrTrickleAreCut) {
  gguf::RemotePolicy saved = gguf::remote_policy();
  gguf::RemotePolicy p = saved;
  p.allow_private_addresses = true;
  p.request_timeout_s = 3;
  gguf::set_remote_policy(p);
  {
    RawServer endless([](int c) {
      const std::string head = "HTTP/1.1 206 Partial Content\r\n";
      (void)!::write(c, head.data(), head.size());
      const std::string line = "X-Filler: " + std::string(1000, 'a') + "\r\n";
      for (int i = 0; i < 1000; ++i) {
        if (::send(c, line.data(), line.size(), MSG_NOSIGNAL) < 0) break;
      }
    });
    try {
      gguf::RemoteFile f("http://127.0.0.1:" + std::to_string(endless.port()) + "/m.gguf");
      FAIL() << "endless headers were accepted";
    } catch (const gguf::Error& e) {
      EXPECT_NE(std::string(e.what()).find("headers passed"), std::string::npos) << e.what();
    }
  }
  {
    RawServer trickle([](int c) {
      const std::string head = "HTTP/1.1 206 Partial Content\r\nX-Slow: ";
      (void)!::write(c, head.data(), head.size());
      for (int i = 0; i < 20; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        if (::send(c, "a", 1, MSG_NOSIGNAL) < 0) break;
      }
    });
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_THROW(gguf::RemoteFile("http://127.0.0.1:" + std::to_string(trickle.port()) + "/m.gguf"),
                 gguf::Error);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(6));
  }
  gguf::set_remote_policy(saved);
}

TEST(Security, HeartbeatReasonCutInsideACharacterBreaksNothing) {
  ServerFixture f;
  const std::string w1 = f.add_worker("w1", resources(1));
  ASSERT_EQ(deploy(f, kAdmin, f.model()).status, 201);
  const std::string id = assigned_instance(f);
  ASSERT_FALSE(id.empty());
  // 4095 ASCII bytes then a 2-byte character: a byte cut at 4096 would split it.
  const std::string reason = std::string(4095, 'x') + "\xC3\xA9";
  const Reply hb = f.api().post(
      "/v1/workers/w1/heartbeat", w1,
      {{"instances", json::array({{{"id", id}, {"state", "error"}, {"reason", reason}}})}});
  EXPECT_EQ(hb.status, 200) << hb.body.dump();
  EXPECT_EQ(f.api().get("/v1/instances", kAdmin).status, 200);
  EXPECT_EQ(f.api().get("/v1/events", kAdmin).status, 200);
  const Reply one = f.api().get("/v1/instances/" + id, kAdmin);
  ASSERT_EQ(one.status, 200);
  EXPECT_EQ(one.body.value("reason", "").size(), 4095u);
}

// The instance's own key reaches the worker that starts it and nobody else: not the instance
// routes, not the assignments route read with an admin or user key.
TEST(Security, InstanceKeyReachesOnlyItsWorker) {
  ServerFixture f;
  const std::string w1 = f.add_worker("w1", resources(1));
  const std::string user = user_key(f);
  ASSERT_EQ(deploy(f, kAdmin, f.model()).status, 201);
  const std::string id = assigned_instance(f);
  ASSERT_FALSE(id.empty());
  // (the board the answer comes from is published just after the store says assigned)
  Reply mine;
  ASSERT_TRUE(f.eventually([&] {
    mine = f.api().get("/v1/workers/w1/assignments?since=0", w1);
    return mine.status == 200 && mine.body["instances"].size() == 1u;
  })) << mine.body.dump();
  const std::string key = mine.body["instances"][0].value("instance_key", "");
  EXPECT_EQ(key.rfind("ggi_", 0), 0u) << mine.body.dump();
  for (const std::string& who : {std::string(kAdmin), user}) {
    for (const std::string& path : {std::string("/v1/workers/w1/assignments?since=0"),
                                    "/v1/instances/" + id, std::string("/v1/instances")}) {
      const Reply r = f.api().get(path, who);
      EXPECT_EQ(r.status, 200) << path;
      EXPECT_EQ(r.body.dump().find(key), std::string::npos) << path;
    }
  }
}

TEST(Security, DeepJsonIsRefusedAtParseTime) {
  ServerFixture f;
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const Reply r = f.api().send("POST", "/v1/deployments", kAdmin, deep);
  EXPECT_EQ(r.status, 400) << r.body.dump();
  const std::string nested_options =
      R"({"name":"x","model":"m","options":)" + std::string(200, '[') + std::string(200, ']') + "}";
  EXPECT_EQ(f.api().send("POST", "/v1/deployments", kAdmin, nested_options).status, 400);
  EXPECT_EQ(f.api().get("/healthz", "").status, 200);
}

TEST(Security, WorkerAddressesAreHostsOrIpLiterals) {
  ServerFixture f;
  for (const char* bad : {"a,b", "host:80", "", "-rf", "a b", "x/y", "[::1"}) {
    const Reply r = f.api().post("/v1/workers/register", ServerFixture::kJoin,
                                 {{"name", "w1"}, {"address", bad}, {"resources", resources(1)}});
    EXPECT_EQ(r.status, 400) << bad << " " << r.body.dump();
  }
  Reply r = f.api().post("/v1/workers/register", ServerFixture::kJoin,
                         {{"name", "w6"}, {"address", "[::1]"}, {"resources", resources(1)}});
  EXPECT_EQ(r.status, 201) << r.body.dump();
  EXPECT_EQ(f.api().get("/v1/workers/w6", kAdmin).body.value("address", ""), "::1");
  r = f.api().post("/v1/workers/register", ServerFixture::kJoin,
                   {{"name", "w7"}, {"address", "gpu-7.example.org"}, {"resources", resources(1)}});
  EXPECT_EQ(r.status, 201) << r.body.dump();
}

// llama.cpp's RPC protocol holds between equal builds only (and had remote-code-execution bugs
// across versions): a worker whose build differs from the main's never lends it a GPU.
TEST(Security, RpcBuildMismatchIsExcludedByThePlanner) {
  ServerFixture f;
  auto with_build = [](const std::string& build) {
    json r = resources(1);
    r["llama"] = {{"build", build}};
    return r;
  };
  f.add_worker("w1", with_build("0.5.0-dev (build 1, commit aaaaaaa)"));
  f.add_worker("w2", with_build("0.5.0-dev (build 1, commit bbbbbbb)"));
  const std::string model = f.model("llama3-70b-q4_k_m");  // 40 GB: one 24 GB GPU is not enough
  Reply r = f.api().post("/v1/plan", kAdmin, {{"model", model}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["layout"]["devices"].size(), 1u) << r.body.dump();
  ASSERT_EQ(r.body["rejected"].size(), 1u) << r.body.dump();
  EXPECT_NE(r.body["rejected"][0].value("reason", "").find("llama.cpp build"), std::string::npos)
      << r.body.dump();
  // The same build on both: the main borrows the other's GPU.
  ServerFixture g;
  g.add_worker("w1", with_build("0.5.0-dev (build 1, commit aaaaaaa)"));
  g.add_worker("w2", with_build("0.5.0-dev (build 1, commit aaaaaaa)"));
  r = g.api().post("/v1/plan", kAdmin, {{"model", g.model("llama3-70b-q4_k_m")}});
  ASSERT_EQ(r.status, 200) << r.body.dump();
  EXPECT_EQ(r.body["layout"]["devices"].size(), 2u) << r.body.dump();
}

}  // namespace
}  // namespace ggfleet::test
