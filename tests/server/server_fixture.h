// A real ggfleet server in the test process (own port, own SQLite file or PostgreSQL schema),
// an HTTP client for it, and simulated workers (registered over the API, heartbeating with
// declared GPUs). Shared by the API, scheduling and consistency tests.
#pragma once

#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "../store/test_db.h"
#include "model/synth.h"
#include "server/server.h"
#include "test_util.h"

namespace ggfleet::test {

struct Reply {
  int status = 0;
  nlohmann::json body;
};

class Api {
 public:
  explicit Api(int port, const std::string& host = "127.0.0.1") : client_(host, port) {
    client_.set_connection_timeout(5);
    client_.set_read_timeout(60);
    client_.set_tcp_nodelay(true);
  }
  Reply send(const std::string& method, const std::string& path, const std::string& key,
             const std::string& raw_body = "") {
    httplib::Headers headers;
    if (!key.empty()) headers.emplace("Authorization", "Bearer " + key);
    httplib::Result r = method == "GET"      ? client_.Get(path.c_str(), headers)
                        : method == "DELETE" ? client_.Delete(path.c_str(), headers)
                        : method == "PATCH"
                            ? client_.Patch(path.c_str(), headers, raw_body, "application/json")
                            : client_.Post(path.c_str(), headers, raw_body, "application/json");
    Reply out;
    if (!r) {
      out.status = -1;
      return out;
    }
    out.status = r->status;
    out.body = nlohmann::json::parse(r->body, nullptr, false);
    return out;
  }
  Reply get(const std::string& path, const std::string& key) { return send("GET", path, key); }
  Reply post(const std::string& path, const std::string& key, const nlohmann::json& body) {
    return send("POST", path, key, body.dump());
  }

 private:
  httplib::Client client_;
};

// Sends `request` as it is on a new connection and returns everything the server sent until it
// closed the connection (or 10 s passed): for requests no HTTP client library would send.
inline std::string raw_exchange(int port, const std::string& request) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    char buf[4096];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
      out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

inline nlohmann::json gpus(int n, const std::string& name = "NVIDIA GeForce RTX 4090") {
  nlohmann::json list = nlohmann::json::array();
  for (int i = 0; i < n; ++i) list.push_back({{"name", name}});
  return list;
}

inline nlohmann::json resources(int n_gpus, std::uint64_t ram = 64ull << 30,
                                const std::string& gpu = "NVIDIA GeForce RTX 4090") {
  return {{"cpu", {{"cores", 16}, {"memory_bandwidth", 100e9}}},
          {"ram", {{"total", ram}, {"used", 0}}},
          {"gpus", gpus(n_gpus, gpu)},
          {"simulated", true}};
}

class ServerFixture {
 public:
  static constexpr const char* kAdmin = "admin-key-for-tests";
  static constexpr const char* kJoin = "join-token-for-tests";

  // `tweak` may change the server's configuration before it starts.
  explicit ServerFixture(const std::string& backend = "sqlite", server::SchedulerConfig sched = {},
                         const std::function<void(server::ServerConfig&)>& tweak = {})
      : db_(backend) {
    server::ServerConfig c;
    c.data_dir = dir_.file("data");
    c.db = backend == "sqlite" ? "" : db_.target();
    c.port = 0;
    c.admin_key = kAdmin;
    c.join_token = kJoin;
    c.scheduler = sched;
    c.schedule_interval_ms = 100;
    if (tweak) tweak(c);
    db_target_ = backend == "sqlite" ? c.data_dir + "/ggfleet.db" : db_.target();
    server_ = std::make_unique<server::Server>(c);
    port_ = server_->start();
    api_ = std::make_unique<Api>(port_);
  }
  bool available() const { return db_.available(); }
  // Where the server keeps its state (for a second store connection in checks).
  std::string db_target() const { return db_target_; }
  Api& api() { return *api_; }
  server::Server& server() { return *server_; }
  int port() const { return port_; }

  // Registers a simulated worker; returns its key.
  std::string add_worker(const std::string& name, const nlohmann::json& res) {
    const Reply r = api_->post("/v1/workers/register", kJoin, {{"name", name}, {"resources", res}});
    EXPECT_EQ(r.status, 201) << r.body.dump();
    return r.status == 201 ? r.body["key"].get<std::string>() : "";
  }

  // A synthetic model file the server can read (sparse, cached per preset).
  std::string model(const std::string& preset = "llama3-8b-q4_0") {
    return ggfleet::model::synth(preset, dir_.file("models-" + preset), {}).front();
  }

  // Waits until `pred` holds (checked every 50 ms) or `seconds` pass.
  template <typename Pred>
  bool eventually(Pred pred, double seconds = 10) {
    for (int i = 0; i < static_cast<int>(seconds * 20); ++i) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return pred();
  }

 private:
  TempDir dir_;
  TestDb db_;
  std::unique_ptr<server::Server> server_;
  std::unique_ptr<Api> api_;
  int port_ = 0;
  std::string db_target_;
};

// Simulated workers: each registered over the API and heartbeating every `period` from one
// thread until destroyed. Heartbeats to a server that is down are retried on the next beat.
class SimulatedWorkers {
 public:
  SimulatedWorkers(int port, int count, std::chrono::milliseconds period,
                   const std::function<nlohmann::json(int)>& res)
      : port_(port), period_(period) {
    Api api(port);
    for (int i = 0; i < count; ++i) {
      const std::string name = "sim" + std::to_string(i);
      const Reply r = api.post("/v1/workers/register", ServerFixture::kJoin,
                               {{"name", name}, {"resources", res(i)}});
      EXPECT_EQ(r.status, 201) << r.body.dump();
      workers_.push_back({name, r.status == 201 ? r.body["key"].get<std::string>() : ""});
    }
    thread_ = std::thread([this] {
      Api beat(port_);
      while (!stop_) {
        for (const auto& [name, key] : workers_)
          beat.post("/v1/workers/" + name + "/heartbeat", key, nlohmann::json::object());
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, period_, [this] { return stop_.load(); });
      }
    });
  }
  ~SimulatedWorkers() {
    stop_ = true;
    cv_.notify_all();
    thread_.join();
  }

 private:
  int port_;
  std::chrono::milliseconds period_;
  std::vector<std::pair<std::string, std::string>> workers_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread thread_;
};

}  // namespace ggfleet::test
