// Many concurrent streaming clients through ggfleet's gateway against an upstream that streams
// tokens at a fixed pace, so that the proxy (not llama.cpp's CPU speed) is what is measured.
//
//   build/release/bench/proxy_load [--clients 1000,5000] [--tokens 50] [--interval-ms 100]
//
// Starts `ggfleet server` as a process of its own (SQLite in a temp dir), registers a worker over
// the API (it heartbeats every 100 ms to the worker-only port it is given, as a real worker
// does), deploys a synthetic model and stands in for its llama-server with a stub that streams
// --tokens SSE events --interval-ms apart. For each client count: all clients at once straight
// to the stub, then all at once through the server. Reports per run: served / 429 / errors, time
// to first token p50/p99 direct and through the proxy (the difference is the proxy's added
// latency), the server's peak RSS and threads, and heartbeat latency p50/p99/max while the
// proxied load runs. The deployment gets --slots-multiple so that every stream is forwarded at
// once (admission control itself is tested in tests/server/fault_injection_test.cc).
#include <sys/resource.h>

#include <utility>
//
#include <httplib.h>
#include <CLI/CLI.hpp>
#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "model/synth.h"
#include "store/store.h"
#include "worker/process.h"

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kAdmin = "bench-admin";
constexpr const char* kJoin = "bench-join";

// The stand-in llama-server: each POST is answered with `tokens` SSE events `interval` apart.
awaitable<void> stub_session(tcp::socket s, int tokens, std::chrono::milliseconds interval) {
  beast::flat_buffer buf;
  beast::error_code ec;
  for (;;) {
    http::request<http::string_body> req;
    co_await http::async_read(s, buf, req, asio::redirect_error(use_awaitable, ec));
    if (ec) co_return;
    std::string head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
        "Connection: keep-alive\r\n\r\n";
    co_await asio::async_write(s, asio::buffer(head), asio::redirect_error(use_awaitable, ec));
    asio::steady_timer t(s.get_executor());
    for (int k = 0; k <= tokens && !ec; ++k) {
      const std::string event = k < tokens ? "data: {\"choices\":[{\"delta\":{\"content\":\"tok" +
                                                 std::to_string(k) + "\"}}]}\n\n"
                                           : std::string("data: [DONE]\n\n");
      char size[16];
      std::snprintf(size, sizeof size, "%zx\r\n", event.size());
      const std::string chunk = size + event + "\r\n" + (k == tokens ? "0\r\n\r\n" : "");
      co_await asio::async_write(s, asio::buffer(chunk), asio::redirect_error(use_awaitable, ec));
      if (k < tokens) {
        t.expires_after(interval);
        co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
      }
    }
    if (ec) co_return;
  }
}

awaitable<void> stub_accept(tcp::acceptor& a, int tokens, std::chrono::milliseconds interval) {
  for (;;) {
    beast::error_code ec;
    tcp::socket s = co_await a.async_accept(asio::redirect_error(use_awaitable, ec));
    if (ec) co_return;
    asio::co_spawn(a.get_executor(), stub_session(std::move(s), tokens, interval), asio::detached);
  }
}

struct Outcome {
  int status = 0;  // -1: connection or protocol error
  double ttft_ms = 0;
  bool complete = false;  // saw [DONE]
};

// `key`: the Bearer key to send ("" = none).
awaitable<void> client(std::string host, int port, std::string body, std::string key,
                       Outcome& out) {
  try {
    auto ex = co_await asio::this_coro::executor;
    beast::tcp_stream s(ex);
    tcp::endpoint at(asio::ip::make_address(host), static_cast<std::uint16_t>(port));
    const auto t0 = Clock::now();
    co_await s.async_connect(at, use_awaitable);
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::host, host);
    req.set(http::field::content_type, "application/json");
    if (!key.empty()) req.set(http::field::authorization, "Bearer " + key);
    req.body() = body;
    req.prepare_payload();
    co_await http::async_write(s, req, use_awaitable);
    beast::flat_buffer buf;
    http::response_parser<http::buffer_body> p;
    p.body_limit(std::numeric_limits<std::uint64_t>::max());
    co_await http::async_read_header(s, buf, p, use_awaitable);
    out.status = static_cast<int>(p.get().result_int());
    char data[8192];
    std::string tail;
    bool first = true;
    while (!p.is_done()) {
      p.get().body().data = data;
      p.get().body().size = sizeof data;
      beast::error_code ec;
      co_await http::async_read_some(s, buf, p, asio::redirect_error(use_awaitable, ec));
      if (ec == http::error::need_buffer) ec = {};
      if (ec) throw beast::system_error(ec);
      const std::size_t n = sizeof data - p.get().body().size;
      if (n > 0 && first) {
        out.ttft_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        first = false;
      }
      tail = (tail + std::string(data, n));
      if (tail.size() > 64) tail = tail.substr(tail.size() - 64);
    }
    out.complete = tail.find("[DONE]") != std::string::npos;
  } catch (const std::exception&) {
    out.status = -1;
  }
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

struct Run {
  int served = 0, busy = 0, errors = 0, incomplete = 0;
  std::vector<double> ttft;
  double seconds = 0;
};

Run run_clients(const std::string& host, int port, int clients, const std::string& key,
                const std::string& model = "stub", int max_tokens = 8) {
  asio::io_context io(1);
  std::vector<Outcome> outs(static_cast<std::size_t>(clients));
  const std::string body = json{
      {"model", model},
      {"messages", {{{"role", "user"}, {"content", "hi"}}}},
      {"max_tokens", max_tokens},
      {"stream", true}}.dump();
  for (int k = 0; k < clients; ++k)
    asio::co_spawn(io, client(host, port, body, key, outs[static_cast<std::size_t>(k)]),
                   asio::detached);
  const auto t0 = Clock::now();
  io.run();
  Run r;
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  for (const Outcome& o : outs) {
    if (o.status == 200) {
      ++r.served;
      r.ttft.push_back(o.ttft_ms);
      if (!o.complete) ++r.incomplete;
    } else if (o.status == 429) {
      ++r.busy;
    } else {
      ++r.errors;
    }
  }
  return r;
}

// VmRSS (KiB) and Threads of a process.
std::pair<long, long> rss_and_threads(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  long rss = 0, threads = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) rss = std::atol(line.c_str() + 6);
    if (line.rfind("Threads:", 0) == 0) threads = std::atol(line.c_str() + 8);
  }
  return {rss, threads};
}

// Starts `ggfleet server` with `extra` flags; returns its port (0 if it did not start).
int start_server(ggfleet::worker::Process& server, const std::filesystem::path& dir,
                 const std::vector<std::string>& extra) {
  std::vector<std::string> argv = {
      GGFLEET_BINARY, "server",      "--data-dir", (dir / "data").string(), "--listen",
      "127.0.0.1:0",  "--admin-key", kAdmin,       "--join-token",          kJoin};
  argv.insert(argv.end(), extra.begin(), extra.end());
  server.start(argv, {}, (dir / "server.log").string());
  for (int k = 0; k < 200; ++k) {
    std::ifstream in(dir / "server.log");
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    const auto at = text.find("listening on port ");
    if (at != std::string::npos) return std::atoi(text.c_str() + at + 18);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return 0;
}

// Deploys `name`: a synthetic 2-block Llama-3-8B shape, context 2048.
void deploy_small(httplib::Client& api, const std::filesystem::path& dir, const std::string& name) {
  ggfleet::model::SynthOptions so;
  so.blocks = 2;
  so.vocab = 32000;
  const std::string model =
      ggfleet::model::synth("llama3-8b-q4_0", (dir / "models").string(), so).front();
  api.Post("/v1/deployments", {{"Authorization", std::string("Bearer ") + kAdmin}},
           json{{"name", name}, {"model", model}, {"options", {{"context", 2048}}}}.dump(),
           "application/json");
}

// Heartbeats of a registered worker every 100 ms, timed while `measuring`.
struct Beats {
  std::atomic<bool> stop{false}, measuring{false};
  std::mutex mu;
  std::vector<double> ms;
  int errors = 0;
  std::thread thread;
  void start(int port, const std::string& worker, const std::string& key, const json& body) {
    thread = std::thread([this, port, worker, key, body] {
      httplib::Client c("127.0.0.1", port);
      c.set_read_timeout(30);
      while (!stop) {
        const auto t0 = Clock::now();
        auto r = c.Post(("/v1/workers/" + worker + "/heartbeat").c_str(),
                        {{"Authorization", "Bearer " + key}}, body.dump(), "application/json");
        const double took = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (measuring) {
          std::lock_guard<std::mutex> lock(mu);
          ms.push_back(took);
          errors += !r || r->status != 200;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
  }
  void reset() {
    std::lock_guard<std::mutex> lock(mu);
    ms.clear();
    errors = 0;
  }
  ~Beats() {
    stop = true;
    if (thread.joinable()) thread.join();
  }
};

// 200 (--real-clients) streams against a real llama-server (CPU build, one slot) through a
// server and a `ggfleet worker` process, beside a probe worker whose heartbeats are timed.
int real_run(const std::string& llama, int clients) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("proxy_load-real-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  ggfleet::worker::Process server, worker;
  const int port = start_server(server, dir, {"--instance-ports", "24100", "--rpc-ports", "24700"});
  if (port == 0) return 1;
  worker.start({GGFLEET_BINARY, "worker", "--server", "http://127.0.0.1:" + std::to_string(port),
                "--join-token", kJoin, "--name", "real", "--address", "127.0.0.1", "--declare-gpu",
                "NVIDIA GeForce RTX 4090:2GiB", "--llama", llama, "--data-dir",
                (dir / "worker").string(), "--heartbeat-ms", "500"},
               {}, (dir / "worker.log").string());
  httplib::Client api("127.0.0.1", port);
  api.set_read_timeout(60);
  const httplib::Headers admin = {{"Authorization", std::string("Bearer ") + kAdmin}};
  // The probe: a worker with no GPU and too little RAM to be chosen; its heartbeats are timed.
  const json probe_resources = {{"cpu", {{"cores", 1}}},
                                {"ram", {{"total", 1ull << 20}, {"used", 0}}},
                                {"gpus", json::array()},
                                {"simulated", true}};
  auto reg = api.Post(
      "/v1/workers/register", {{"Authorization", std::string("Bearer ") + kJoin}},
      json{{"name", "probe"}, {"address", "127.0.0.1"}, {"resources", probe_resources}}.dump(),
      "application/json");
  if (!reg || reg->status != 201) return 1;
  Beats beats;
  beats.start(json::parse(reg->body).value("worker_port", port), "probe",
              json::parse(reg->body)["key"], json::object());
  deploy_small(api, dir, "real");
  bool running = false;
  int listen_port = 0;
  std::string instance_key;
  for (int k = 0; k < 1800 && !running; ++k) {
    auto r = api.Get("/v1/instances", admin);
    const json list = r ? json::parse(r->body)["instances"] : json::array();
    if (!list.empty() && list[0]["state"] == "running") {
      running = true;
      const json a =
          json::parse(api.Get(("/v1/instances/" + list[0]["id"].get<std::string>()).c_str(), admin)
                          ->body)["assignment"];
      listen_port = a.value("listen_port", a.value("server_port", 0));
      // The instance's own key, which only the server holds: read from its database (the
      // bench measures llama-server directly beside the proxy).
      ggfleet::store::Store store((dir / "data" / "ggfleet.db").string());
      instance_key = json::parse(store.instance(list[0]["id"].get<std::string>())->assignment_json)
                         .value("instance_key", "");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!running) {
    std::fprintf(stderr, "proxy_load: the real instance did not start (see %s)\n", dir.c_str());
    return 1;
  }
  const Run direct = run_clients("127.0.0.1", listen_port, clients, instance_key, "real", 8);
  beats.reset();
  beats.measuring = true;
  const Run proxied = run_clients("127.0.0.1", port, clients, kAdmin, "real", 8);
  beats.measuring = false;
  int unreachable = 0, replanned = 0;
  if (auto ev = api.Get("/v1/events?limit=1000", admin)) {
    for (const json& e : json::parse(ev->body)["events"]) {
      unreachable += e["kind"] == "worker.unreachable";
      replanned += e["kind"] == "instance.replanned";
    }
  }
  std::vector<double> ms;
  int beat_errors = 0;
  {
    std::lock_guard<std::mutex> lock(beats.mu);
    ms = beats.ms;
    beat_errors = beats.errors;
  }
  std::printf("real llama-server (CPU, 1 slot, 2-block model, 8 tokens), %d streams at once:\n",
              clients);
  std::printf("  direct:  %d served, %d errors, ttft p50 %.0f ms p99 %.0f ms, %.1f s\n",
              direct.served, direct.errors, percentile(direct.ttft, 0.5),
              percentile(direct.ttft, 0.99), direct.seconds);
  std::printf(
      "  proxied: %d served, %d answered 429, %d errors, %d cut; ttft p50 %.0f ms "
      "p99 %.0f ms, %.1f s\n",
      proxied.served, proxied.busy, proxied.errors, proxied.incomplete,
      percentile(proxied.ttft, 0.5), percentile(proxied.ttft, 0.99), proxied.seconds);
  std::printf(
      "  heartbeats during the load: %zu, %d failed, p50 %.1f ms, p99 %.1f ms; "
      "unreachable verdicts %d, re-plans %d\n",
      ms.size(), beat_errors, percentile(ms, 0.5), percentile(ms, 0.99), unreachable, replanned);
  beats.stop = true;
  worker.stop(20);
  server.stop();
  std::filesystem::remove_all(dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Concurrent streaming clients through the ggfleet gateway");
  std::vector<int> counts = {1000, 5000};
  int tokens = 50, interval_ms = 100;
  app.add_option("--clients", counts, "Client counts, one run each")->delimiter(',');
  app.add_option("--tokens", tokens, "Tokens per stream");
  app.add_option("--interval-ms", interval_ms, "Milliseconds between tokens");
  std::string llama;
  int real_clients = 200;
  app.add_option("--llama", llama, "llama.cpp bin directory: also run against a real llama-server");
  app.add_option("--real-clients", real_clients, "Streams at once against the real llama-server");
  CLI11_PARSE(app, argc, argv);

  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  lim.rlim_cur = lim.rlim_max;
  setrlimit(RLIMIT_NOFILE, &lim);

  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("proxy_load-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  ggfleet::worker::Process server;
  const int port = start_server(
      server, dir,
      {"--slots-multiple", "10000", "--instance-ports", "24000", "--rpc-ports", "24600"});
  if (port == 0) {
    std::fprintf(stderr, "proxy_load: the server did not start (see %s)\n",
                 (dir / "server.log").c_str());
    return 1;
  }
  httplib::Client api("127.0.0.1", port);
  api.set_read_timeout(60);
  const json resources = {{"cpu", {{"cores", 16}}},
                          {"ram", {{"total", 64ull << 30}, {"used", 0}}},
                          {"gpus", {{{"name", "NVIDIA GeForce RTX 4090"}}}},
                          {"simulated", true}};
  auto reg =
      api.Post("/v1/workers/register", {{"Authorization", std::string("Bearer ") + kJoin}},
               json{{"name", "bench"}, {"address", "127.0.0.1"}, {"resources", resources}}.dump(),
               "application/json");
  if (!reg || reg->status != 201) {
    std::fprintf(stderr, "proxy_load: cannot register\n");
    return 1;
  }
  const std::string worker_key = json::parse(reg->body)["key"];
  // Heartbeats go where a real worker sends them: the worker-only listener.
  const int worker_port = json::parse(reg->body).value("worker_port", port);
  const httplib::Headers admin = {{"Authorization", std::string("Bearer ") + kAdmin}};
  deploy_small(api, dir, "stub");
  std::string id;
  int upstream_port = 0;
  for (int k = 0; k < 200 && id.empty(); ++k) {
    auto r = api.Get("/v1/instances", admin);
    const json list = r ? json::parse(r->body)["instances"] : json::array();
    if (!list.empty() && list[0]["state"] == "assigned") {
      id = list[0]["id"];
      upstream_port = json::parse(
          api.Get(("/v1/instances/" + id).c_str(), admin)->body)["assignment"]["server_port"];
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (id.empty()) {
    std::fprintf(stderr, "proxy_load: the deployment was not placed\n");
    return 1;
  }
  // The stub upstream on the planned port, on a thread of its own.
  asio::io_context stub_io(1);
  tcp::acceptor acceptor(stub_io);
  const tcp::endpoint stub_at(asio::ip::make_address("127.0.0.1"),
                              static_cast<std::uint16_t>(upstream_port));
  acceptor.open(stub_at.protocol());
  acceptor.set_option(tcp::acceptor::reuse_address(true));
  acceptor.bind(stub_at);
  acceptor.listen(4096);
  asio::co_spawn(stub_io, stub_accept(acceptor, tokens, std::chrono::milliseconds(interval_ms)),
                 asio::detached);
  std::thread stub_thread([&] { stub_io.run(); });

  // The worker's heartbeats, timed.
  Beats beats;
  beats.start(
      worker_port > 0 ? worker_port : port, "bench", worker_key,
      {{"instances", json::array({{{"id", id}, {"state", "running"}, {"port", upstream_port}}})}});
  std::this_thread::sleep_for(std::chrono::seconds(1));  // the instance is reported running

  std::printf("proxy_load: %d tokens per stream, %d ms apart; server pid %d\n", tokens, interval_ms,
              server.pid());
  std::printf("%7s %-7s %7s %5s %6s %8s %8s %8s %9s %8s %8s %8s %8s\n", "clients", "path", "served",
              "429", "errors", "cut", "ttft_p50", "ttft_p99", "wall_s", "rss_MiB", "threads",
              "hb_p99", "hb_max");
  int failed_goal = 0;
  for (int n : counts) {
    const Run direct = run_clients("127.0.0.1", upstream_port, n, "");
    std::printf("%7d %-7s %7d %5d %6d %8d %8.1f %8.1f %9.1f %8s %8s %8s %8s\n", n, "direct",
                direct.served, direct.busy, direct.errors, direct.incomplete,
                percentile(direct.ttft, 0.5), percentile(direct.ttft, 0.99), direct.seconds, "-",
                "-", "-", "-");
    beats.reset();
    beats.measuring = true;
    std::atomic<bool> sampling{true};
    long peak_rss = 0, peak_threads = 0;
    std::thread sampler([&] {
      while (sampling) {
        const auto [rss, threads] = rss_and_threads(server.pid());
        peak_rss = std::max(peak_rss, rss);
        peak_threads = std::max(peak_threads, threads);
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
    const Run proxied = run_clients("127.0.0.1", port, n, kAdmin);
    sampling = false;
    sampler.join();
    beats.measuring = false;
    std::vector<double> beat_ms;
    int beat_failures = 0;
    {
      std::lock_guard<std::mutex> lock(beats.mu);
      beat_ms = beats.ms;
      beat_failures = beats.errors;
    }
    std::printf("%7d %-7s %7d %5d %6d %8d %8.1f %8.1f %9.1f %8.1f %8ld %8.1f %8.1f\n", n, "proxied",
                proxied.served, proxied.busy, proxied.errors, proxied.incomplete,
                percentile(proxied.ttft, 0.5), percentile(proxied.ttft, 0.99), proxied.seconds,
                static_cast<double>(peak_rss) / 1024.0, peak_threads, percentile(beat_ms, 0.99),
                beat_ms.empty() ? 0.0 : *std::max_element(beat_ms.begin(), beat_ms.end()));
    std::printf(
        "%7s added ttft p50 %+.1f ms, p99 %+.1f ms; %zu heartbeats (%d failed), p50 %.1f ms\n", "",
        percentile(proxied.ttft, 0.5) - percentile(direct.ttft, 0.5),
        percentile(proxied.ttft, 0.99) - percentile(direct.ttft, 0.99), beat_ms.size(),
        beat_failures, percentile(beat_ms, 0.5));
    std::fflush(stdout);
    if (proxied.errors > 0 || proxied.incomplete > 0 || beat_failures > 0 ||
        percentile(beat_ms, 0.99) >= 50)
      ++failed_goal;
  }
  beats.stop = true;
  if (beats.thread.joinable()) beats.thread.join();
  stub_io.stop();
  stub_thread.join();
  server.stop();
  std::filesystem::remove_all(dir);
  std::printf("goal (0 errors, heartbeat p99 < 50 ms): %s\n", failed_goal ? "NOT MET" : "met");
  if (!llama.empty()) return real_run(llama, real_clients);
  return 0;
}
