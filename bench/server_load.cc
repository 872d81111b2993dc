// Load on a real `ggfleet server` process: N simulated workers heartbeating every 2 s while
// clients deploy, scale and list; prints API latency percentiles and the server's CPU use. With
// --long-poll 1 every worker also keeps a long poll for its assignments open, as the real agent
// does (GET .../assignments?since=V&wait=5, again at once when it returns; all of them driven by
// one thread of this process).
//
//   build/release/bench/server_load [--workers 1000] [--seconds 30] [--clients 4] [--db URL]
//                                   [--long-poll 0|1] [--pending N [--preset P] [--hetero 1]]
//                                   [--servers N] [--warmup S] [--full-every S]
//
// Each worker heartbeats from its registration on, as an agent does (registering 3,000 one after
// another takes tens of seconds); the window opens after the last registration and --warmup S
// seconds of the whole load. The p99 of every 5 s of the window is printed too.
//
// --full-every S: each worker's heartbeats are what the real agent sends (worker::HeartbeatDelta):
// `{}` while nothing changed (its registration carried the resources; it runs no instance and
// holds no memory), and every part, resources included, taking the store's path, once per
// period drawn between 0.5 and 1.5 S (default 30 s, the agent's). 0: every heartbeat is `{}`.
//
// Workers register on the public port and then heartbeat and long-poll on the worker port the
// registration names, as the real agent does.
//
// --servers N (with --db postgres://...): N server processes share the database; worker w
// registers, heartbeats and long-polls with server w % N (a worker's list starting at its own
// server), client t calls server t % N. Prints each server's CPU and the most store connections
// it had lent at once (its /metrics).
//
// --pending N: at the start of the load, N deployments of one replica each are created at once
// (model --preset, default llama3-8b-q4_0); prints how long until the scheduler has placed
// every instance (none pending), measured from the first POST. --hetero 1 gives the workers
// heterogeneous resources (five GPU models, used memory drawn per GPU, a few fast CPUs).
//
// The server runs as a child process (SQLite in a temp dir unless --db), so its CPU time is its
// own (/proc/PID/stat); the load generators run in this process.
#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>
#include <tuple>
#include <vector>

#include "model/synth.h"
#include "worker/heartbeat.h"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
constexpr const char* kAdmin = "bench-admin";
constexpr const char* kJoin = "bench-join";

double cpu_seconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  std::istringstream fields(text.substr(text.rfind(')') + 2));
  std::string f;
  double ticks = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14 || i == 15) ticks += std::stod(f);
  }
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

struct Latencies {
  static constexpr double kWindowS = 5;  // p99 per window of this many seconds of the run
  std::mutex mu;
  std::vector<double> ms;
  std::map<int, std::vector<double>> by_window;  // window -> latencies of requests started in it
  int errors = 0;
  void add(double v, bool ok, double started_s) {
    std::lock_guard<std::mutex> lock(mu);
    ms.push_back(v);
    by_window[static_cast<int>(started_s / kWindowS)].push_back(v);
    errors += ok ? 0 : 1;
  }
  // p99 of each window, on one line: a tail at the start only (registration) reads apart from
  // one all along (contention).
  void print_windows(const char* what) {
    std::printf("%-12s p99 per %.0f s:", what, kWindowS);
    for (auto& [w, list] : by_window) {
      std::sort(list.begin(), list.end());
      const auto at = std::min(list.size() - 1,
                               static_cast<std::size_t>(0.99 * static_cast<double>(list.size())));
      std::printf(" %.0f", list[at]);
    }
    std::printf(" ms\n");
  }
  void print(const char* what) {
    std::sort(ms.begin(), ms.end());
    auto pct = [&](double p) {
      return ms.empty()
                 ? 0.0
                 : ms[std::min(ms.size() - 1,
                               static_cast<std::size_t>(p * static_cast<double>(ms.size())))];
    };
    std::printf("%-12s %8zu requests  p50 %7.2f ms  p99 %7.2f ms  max %7.2f ms  errors %d\n", what,
                ms.size(), pct(0.5), pct(0.99), ms.empty() ? 0.0 : ms.back(), errors);
  }
};

// Every worker's long poll, from one thread (epoll, non-blocking sockets): a poll per worker is
// always open, as the real agents keep them, without 3,000 threads of this process competing with
// the servers for the machine's cores. Each poll is a new connection (as the agent does), answered
// and closed by the server; a poll answered early without news waits retry_after_ms.
void run_long_polls(const std::vector<std::pair<std::string, std::string>>& fleet,
                    const std::vector<int>& worker_ports, Clock::time_point until,
                    std::atomic<long>& polls, std::atomic<long>& quick_polls) {
  struct Poll {
    int fd = -1;
    std::string out, in;
    std::size_t sent = 0;
    long version = 0;
    Clock::time_point started, next;  // next: when to open the next poll (fd < 0)
  };
  std::vector<Poll> all(fleet.size());
  const int ep = epoll_create1(EPOLL_CLOEXEC);
  auto open_poll = [&](std::size_t w) {
    Poll& p = all[w];
    p.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(static_cast<std::uint16_t>(worker_ports[w % worker_ports.size()]));
    ::connect(p.fd, reinterpret_cast<sockaddr*>(&a), sizeof a);  // (EINPROGRESS)
    p.out = "GET /v1/workers/" + fleet[w].first +
            "/assignments?since=" + std::to_string(p.version) +
            "&wait=5 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + fleet[w].second +
            "\r\nConnection: close\r\n\r\n";
    p.sent = 0;
    p.in.clear();
    p.started = Clock::now();
    epoll_event e{};
    e.events = EPOLLOUT | EPOLLIN;
    e.data.u64 = w;
    epoll_ctl(ep, EPOLL_CTL_ADD, p.fd, &e);
  };
  auto close_poll = [&](std::size_t w, std::chrono::milliseconds pause) {
    Poll& p = all[w];
    epoll_ctl(ep, EPOLL_CTL_DEL, p.fd, nullptr);
    ::close(p.fd);
    p.fd = -1;
    p.next = Clock::now() + pause;
  };
  for (std::size_t w = 0; w < all.size(); ++w) open_poll(w);
  std::vector<epoll_event> events(1024);
  char buf[16384];
  auto scanned = Clock::now();
  while (Clock::now() < until) {
    const int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 20);
    for (int k = 0; k < n; ++k) {
      const std::size_t w = events[static_cast<std::size_t>(k)].data.u64;
      Poll& p = all[w];
      if (p.fd < 0) continue;
      if (p.sent < p.out.size()) {
        const ssize_t m = ::send(p.fd, p.out.data() + p.sent, p.out.size() - p.sent, MSG_NOSIGNAL);
        if (m > 0) p.sent += static_cast<std::size_t>(m);
        if (m < 0 && errno != EAGAIN) close_poll(w, std::chrono::seconds(1));
        if (p.fd < 0 || p.sent < p.out.size()) continue;
        epoll_event e{};
        e.events = EPOLLIN;
        e.data.u64 = w;
        epoll_ctl(ep, EPOLL_CTL_MOD, p.fd, &e);
      }
      ssize_t m = 0;
      while ((m = ::recv(p.fd, buf, sizeof buf, 0)) > 0)
        p.in.append(buf, static_cast<std::size_t>(m));
      if (m < 0 && errno == EAGAIN) continue;
      // The server closed the connection: the answer is whole (or there was none).
      ++polls;
      const std::size_t body = p.in.find("\r\n\r\n");
      const json j =
          body == std::string::npos ? json() : json::parse(p.in.substr(body + 4), nullptr, false);
      if (!j.is_object() || p.in.rfind("HTTP/1.1 200", 0) != 0) {
        close_poll(w, std::chrono::seconds(1));
        continue;
      }
      const long now = j.value("version", 0L);
      auto pause = std::chrono::milliseconds(0);
      if (now == p.version && Clock::now() - p.started < std::chrono::seconds(4)) {
        ++quick_polls;  // back early without news: no slot; it says when to ask again
        pause = std::chrono::milliseconds(j.value("retry_after_ms", 1000));
      }
      p.version = now;
      close_poll(w, pause);
    }
    const auto now = Clock::now();
    if (now - scanned < std::chrono::milliseconds(20)) continue;  // (a scan costs 3,000 checks)
    scanned = now;
    for (std::size_t w = 0; w < all.size(); ++w) {
      if (all[w].fd < 0 && all[w].next <= now) open_poll(w);
      // A poll unanswered for a minute: given up, asked again.
      if (all[w].fd >= 0 && now - all[w].started > std::chrono::seconds(60))
        close_poll(w, std::chrono::milliseconds(0));
    }
  }
  for (Poll& p : all) {
    if (p.fd >= 0) ::close(p.fd);
  }
  ::close(ep);
}

}  // namespace

int main(int argc, char** argv) {
  int workers = 1000, seconds = 30, clients = 4, long_poll = 0, pending = 0, hetero = 0,
      n_servers = 1;
  double warmup_s = 0;
  double full_every_s = 30;
  std::string db, preset = "llama3-8b-q4_0";
  CLI::App app{"API latency and server CPU under heartbeating (and long-polling) workers"};
  app.add_option("--workers", workers, "simulated workers, each heartbeating every 2 s");
  app.add_option("--seconds", seconds, "length of the load");
  app.add_option("--full-every", full_every_s,
                 "seconds between a worker's full heartbeats (the agent's 30; 0: only {})");
  app.add_option("--warmup", warmup_s,
                 "seconds of load before the measured window (2: one round of heartbeats)");
  app.add_option("--clients", clients, "API clients deploying, scaling and listing");
  app.add_option("--long-poll", long_poll, "1: every worker also long-polls its assignments");
  app.add_option("--db", db, "postgres:// URL (default: SQLite in a temp dir)");
  app.add_option("--pending", pending, "deployments created at once; time until all are placed");
  app.add_option("--preset", preset, "their model (a synth preset)");
  app.add_option("--hetero", hetero, "1: heterogeneous workers (used memory per GPU, 5 models)");
  app.add_option("--servers", n_servers, "server processes sharing --db (PostgreSQL)")
      ->check(CLI::Range(1, 16));
  CLI11_PARSE(app, argc, argv);
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("ggfleet-load-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string model =
      ggfleet::model::synth("llama3-8b-q4_0", (dir / "models").string(), {}).front();
  const std::string pending_model =
      pending > 0 ? ggfleet::model::synth(preset, (dir / "models").string(), {}).front() : "";
  if (n_servers > 1 && db.empty()) {
    std::fprintf(stderr, "--servers needs --db postgres://... (SQLite is single-server)\n");
    return 2;
  }
  // Below the ephemeral range (32768-).
  const int base_port = 30000 + static_cast<int>(getpid() % 200) * 10;
  std::vector<pid_t> servers;
  std::vector<int> ports;
  for (int k = 0; k < n_servers; ++k) {
    ports.push_back(base_port + k);
    const pid_t pid = fork();
    if (pid == 0) {
      const std::string listen = "127.0.0.1:" + std::to_string(base_port + k);
      std::vector<std::string> args = {
          GGFLEET_BINARY, "server", "--data-dir",  (dir / ("data" + std::to_string(k))).string(),
          "--listen",     listen,   "--admin-key", kAdmin,
          "--join-token", kJoin};
      if (!db.empty()) args.insert(args.end(), {"--db", db});
      std::vector<char*> cargs;
      for (std::string& a : args) cargs.push_back(a.data());
      cargs.push_back(nullptr);
      freopen("/dev/null", "w", stdout);
      execv(GGFLEET_BINARY, cargs.data());
      _exit(127);
    }
    servers.push_back(pid);
  }
  const int port = ports.front();
  auto port_of = [&](std::size_t i) { return ports[i % ports.size()]; };
  for (const int p : ports) {
    httplib::Client up("127.0.0.1", p);
    for (int i = 0; i < 100 && !up.Get("/healthz"); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::vector<std::unique_ptr<httplib::Client>> probes;
  for (const int p : ports) probes.push_back(std::make_unique<httplib::Client>("127.0.0.1", p));
  auto stop_servers = [&](int sig) {
    for (const pid_t pid : servers) kill(pid, sig);
    for (const pid_t pid : servers) waitpid(pid, nullptr, 0);
  };
  // Register the workers (1-8 GPUs of a few kinds each).
  const char* kinds[] = {"NVIDIA GeForce RTX 4090", "NVIDIA L40S", "NVIDIA A100 80GB",
                         "NVIDIA H100 SXM", "NVIDIA GeForce RTX 3090"};
  std::vector<std::pair<std::string, std::string>> fleet;
  // Per worker, as the agent: every part it has, and what its heartbeat carries of them.
  std::vector<json> parts;
  std::vector<ggfleet::worker::HeartbeatDelta> deltas;
  std::vector<int> worker_ports(ports.size(), -1);
  std::mt19937 draw(7);
  const auto registering = Clock::now();
  // Registering 3,000 takes tens of seconds: the registered ones heartbeat meanwhile, as real
  // agents do from their registration on (else the scheduler would judge the early ones silent and
  // the window would open on their return). The heartbeat threads start once every server's worker
  // port is known; the window opens after the last registration and the warm-up.
  fleet.resize(static_cast<std::size_t>(workers));
  parts.resize(static_cast<std::size_t>(workers));
  deltas.reserve(static_cast<std::size_t>(workers));
  for (int i = 0; i < workers; ++i)
    deltas.emplace_back(std::chrono::milliseconds(static_cast<long>(full_every_s * 1000)),
                        static_cast<std::uint32_t>(i + 1));
  std::atomic<std::size_t> registered{0};  // workers 0..registered-1 may heartbeat
  constexpr Clock::rep kNever = Clock::time_point::max().time_since_epoch().count();
  std::atomic<Clock::rep> opens{kNever}, closes{kNever};  // the measured window
  auto at = [](const std::atomic<Clock::rep>& t) {
    return Clock::time_point(Clock::duration(t.load()));
  };
  Latencies beats, api;
  std::vector<std::thread> threads;
  const int beat_threads = 16;
  auto start_heartbeats = [&] {
    for (int t = 0; t < beat_threads; ++t) {
      threads.emplace_back([&, t] {
        std::vector<std::unique_ptr<httplib::Client>> to;  // one kept-alive client per server
        for (const int p : worker_ports) {
          to.push_back(std::make_unique<httplib::Client>("127.0.0.1", p));
          to.back()->set_keep_alive(true);
          to.back()->set_tcp_nodelay(true);
        }
        std::size_t k = static_cast<std::size_t>(t);
        const auto mine =
            (fleet.size() + beat_threads - 1 - static_cast<std::size_t>(t)) / beat_threads;
        const auto gap = std::chrono::microseconds(
            2000000 / std::max<std::size_t>(1, mine));  // each worker every 2 s
        auto next = Clock::now();
        while (Clock::now() < at(closes)) {
          if (k < registered.load(std::memory_order_acquire)) {
            const auto& [name, key] = fleet[k];
            httplib::Headers h{{"Authorization", "Bearer " + key}};
            const auto s = Clock::now();
            // (worker k is this thread's alone)
            const auto beat = full_every_s > 0
                                  ? deltas[k].next(parts[k], s)
                                  : ggfleet::worker::HeartbeatDelta::Beat{json::object()};
            const auto r = to[k % to.size()]->Post(("/v1/workers/" + name + "/heartbeat").c_str(),
                                                   h, beat.body.dump(), "application/json");
            if (r && r->status == 200) deltas[k].acknowledged(beat, s);
            const auto t0 = at(opens);
            if (s >= t0)
              beats.add(std::chrono::duration<double, std::milli>(Clock::now() - s).count(),
                        r && r->status == 200, std::chrono::duration<double>(s - t0).count());
          }
          k += beat_threads;
          if (k >= fleet.size()) k = static_cast<std::size_t>(t);
          next += gap;
          std::this_thread::sleep_until(next);
        }
      });
    }
  };
  for (int i = 0; i < workers; ++i) {
    json gpus = json::array();
    json cpu = {{"cores", 32}};
    if (hetero) {
      // One GPU model per worker, 1/2/4/8 of them, 0-78 GiB used each (idle with p = 0.3).
      const int n = 1 << (draw() % 4);
      const std::uint64_t vram_gib[] = {24, 48, 80, 80, 24};
      const std::size_t k = draw() % 5;
      for (int g = 0; g < n; ++g) {
        const std::uint64_t most = std::min<std::uint64_t>(78, vram_gib[k]) << 30;
        const std::uint64_t used = draw() % 10 < 3 ? 0 : draw() % most;
        gpus.push_back({{"name", kinds[k]}, {"used", used}});
      }
      cpu = draw() % 20 == 0
                ? json{{"cores", 64}, {"memory_bandwidth", 400e9}}
                : json{{"cores", 8 + 8 * (draw() % 2)},
                       {"memory_bandwidth", 40e9 + 1e9 * static_cast<double>(draw() % 40)}};
    } else {
      for (int g = 0; g < 1 + i % 8; ++g) gpus.push_back({{"name", kinds[(i + g) % 4]}});
    }
    const json body = {
        {"name", "w" + std::to_string(i)},
        {"resources", {{"cpu", cpu}, {"ram", {{"total", 256ull << 30}}}, {"gpus", gpus}}}};
    httplib::Headers h{{"Authorization", std::string("Bearer ") + kJoin}};
    const auto r = probes[static_cast<std::size_t>(i) % probes.size()]->Post(
        "/v1/workers/register", h, body.dump(), "application/json");
    if (!r || r->status != 201) {
      std::fprintf(stderr, "registration failed\n");
      closes = Clock::now().time_since_epoch().count();
      for (std::thread& th : threads) th.join();
      stop_servers(SIGKILL);
      return 1;
    }
    const json answer = json::parse(r->body);
    const auto w = static_cast<std::size_t>(i);
    fleet[w] = {"w" + std::to_string(i), answer["key"].get<std::string>()};
    parts[w] = json{
        {"resources", body["resources"]}, {"instances", json::array()}, {"memory", json::array()}};
    deltas[w].registered(body["resources"], Clock::now());
    registered.store(w + 1, std::memory_order_release);
    if (w < ports.size()) {
      // Heartbeats and polls go where the real agent sends them: the server's worker port.
      worker_ports[w] = answer.value("worker_port", -1);
      if (worker_ports[w] <= 0) worker_ports[w] = ports[w];  // (a server without one)
      if (w + 1 == ports.size()) start_heartbeats();
    }
  }
  if (static_cast<std::size_t>(workers) < ports.size()) start_heartbeats();
  std::printf("%d workers registered in %.1f s\n", workers,
              std::chrono::duration<double>(Clock::now() - registering).count());
  // The load starts now; what is measured starts after the warm-up (a round of heartbeats at
  // their pace brings every worker to the state a running fleet is in: heard from recently).
  const auto t0 = Clock::now() + std::chrono::milliseconds(static_cast<int>(warmup_s * 1000));
  const auto until = t0 + std::chrono::seconds(seconds);
  closes = until.time_since_epoch().count();
  opens = t0.time_since_epoch().count();
  std::atomic<long> polls{0}, quick_polls{0};
  if (long_poll) {
    threads.emplace_back([&] { run_long_polls(fleet, worker_ports, until, polls, quick_polls); });
  }
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      httplib::Client c("127.0.0.1", port_of(static_cast<std::size_t>(t)));
      c.set_keep_alive(true);
      c.set_tcp_nodelay(true);
      httplib::Headers h{{"Authorization", std::string("Bearer ") + kAdmin}};
      std::mt19937 rng(static_cast<std::uint32_t>(t));
      int n = 0;
      while (Clock::now() < until) {
        const int op = static_cast<int>(rng() % 4);
        const auto s = Clock::now();
        const std::string name = "d" + std::to_string(t) + "-" + std::to_string(n % 20);
        if (op == 0) ++n;
        const httplib::Result r =
            op == 0
                ? c.Post("/v1/deployments", h,
                         json{{"name", name}, {"model", model}, {"replicas", 1 + rng() % 3}}.dump(),
                         "application/json")
            : op == 1 ? c.Patch(("/v1/deployments/" + name).c_str(), h,
                                json{{"replicas", rng() % 4}}.dump(), "application/json")
            : op == 2 ? c.Get("/v1/deployments", h)
                      : c.Get("/v1/instances", h);
        if (s >= t0)
          api.add(std::chrono::duration<double, std::milli>(Clock::now() - s).count(),
                  r && r->status < 500, std::chrono::duration<double>(s - t0).count());
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
  }
  double placed_after_s = -1, created_after_s = 0;
  double planning_s = 0, placements = 0;  // the scheduler's own counters (/metrics)
  if (pending > 0) {
    threads.emplace_back([&] {
      httplib::Client c("127.0.0.1", port);
      c.set_keep_alive(true);
      c.set_read_timeout(120);
      httplib::Headers h{{"Authorization", std::string("Bearer ") + kAdmin}};
      const auto s = Clock::now();
      for (int i = 0; i < pending; ++i) {
        const json body = {{"name", "p" + std::to_string(i)}, {"model", pending_model}};
        const auto r = c.Post("/v1/deployments", h, body.dump(), "application/json");
        if (!r || r->status != 201)
          std::fprintf(stderr, "deployment p%d: %s\n", i, r ? r->body.c_str() : "no answer");
      }
      created_after_s = std::chrono::duration<double>(Clock::now() - s).count();
      long polls_made = 0;  // (progress every 5 s with SERVER_LOAD_VERBOSE)
      while (Clock::now() - s < std::chrono::seconds(600)) {
        const auto r = c.Get("/v1/instances", h);
        if (r && r->status == 200) {
          int ours = 0, waiting = 0;
          std::map<std::string, int> states;
          const json listed = json::parse(r->body);  // (kept alive for the loop below)
          for (const json& i : listed["instances"]) {
            if (i.value("deployment", "").rfind("p", 0) != 0) continue;
            ++ours;
            waiting += i.value("state", "") == "pending";
            ++states[i.value("state", "") +
                     (i.contains("reason") ? " (" + i.value("reason", "") + ")" : "")];
          }
          if (std::getenv("SERVER_LOAD_VERBOSE") && ++polls_made % 50 == 0) {
            std::fprintf(stderr,
                         "%.1f s:", std::chrono::duration<double>(Clock::now() - s).count());
            for (const auto& [state, n] : states) std::fprintf(stderr, " %d %s;", n, state.c_str());
            std::fprintf(stderr, "\n");
          }
          if (ours >= pending && waiting == 0) {
            placed_after_s = std::chrono::duration<double>(Clock::now() - s).count();
            if (const auto m = c.Get("/metrics", h); m && m->status == 200) {
              std::istringstream lines(m->body);
              for (std::string line; std::getline(lines, line);) {
                std::istringstream f(line);
                std::string metric;
                double value = 0;
                f >> metric >> value;
                if (metric == "ggfleet_planning_seconds_total") planning_s = value;
                if (metric == "ggfleet_placements_total") placements = value;
              }
            }
            return;
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
  }
  // The server's CPU over the measured window only (long polls still open at its end drain
  // after).
  std::this_thread::sleep_until(t0);
  std::vector<double> cpu0;
  for (const pid_t pid : servers) cpu0.push_back(cpu_seconds(pid));
  std::this_thread::sleep_until(until);
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> cpu;
  for (std::size_t k = 0; k < servers.size(); ++k) cpu.push_back(cpu_seconds(servers[k]) - cpu0[k]);
  for (std::thread& th : threads) th.join();
  std::printf("(all load threads ended %.1f s after the window)\n",
              std::chrono::duration<double>(Clock::now() - until).count());
  std::printf(
      "%d workers heartbeating every 2 s (%s), %d clients, %.0f s measured "
      "after %.0f s of warm-up, store %s, %d server(s)\n",
      workers,
      full_every_s > 0
          ? ("every part about every " + std::to_string(std::lround(full_every_s)) + " s, else {}")
                .c_str()
          : "only {}",
      clients, wall, warmup_s, db.empty() ? "sqlite" : "postgres", n_servers);
  beats.print("heartbeat");
  beats.print_windows("heartbeat");
  if (long_poll)
    std::printf("long polls: %ld answered, %ld of them early without news\n", polls.load(),
                quick_polls.load());
  api.print("client API");
  if (pending > 0)
    std::printf(
        "%d deployments of %s (one instance each) created in %.1f s; all placed %.1f s "
        "after the first POST%s\n",
        pending, preset.c_str(), created_after_s, placed_after_s,
        placed_after_s < 0 ? " (NOT all placed within 600 s)" : "");
  if (placements > 0)
    std::printf("scheduler: %.0f placements, %.2f s in the planner (%.1f ms each)\n", placements,
                planning_s, 1000 * planning_s / placements);
  for (std::size_t k = 0; k < servers.size(); ++k) {
    // The store connections it had lent at once, at most (its /metrics).
    std::string peak = "?", bound = "?";
    httplib::Headers h{{"Authorization", std::string("Bearer ") + kAdmin}};
    if (const auto m = probes[k]->Get("/metrics", h); m && m->status == 200) {
      std::istringstream lines(m->body);
      for (std::string line; std::getline(lines, line);) {
        std::istringstream f(line);
        std::string metric, value;
        f >> metric >> value;
        if (metric == "ggfleet_store_connections{state=\"peak\"}") peak = value;
        if (metric == "ggfleet_store_connections{state=\"max\"}") bound = value;
      }
    }
    std::printf(
        "server %zu CPU: %.1f s in %.1f s = %.0f%% of one core; store connections: %s "
        "at most of %s\n",
        k, cpu[k], wall, 100 * cpu[k] / wall, peak.c_str(), bound.c_str());
  }
  stop_servers(SIGTERM);
  std::filesystem::remove_all(dir);
  return 0;
}
