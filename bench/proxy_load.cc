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

awaitable<void> client(std::string host, int port, std::string body, bool with_key, Outcome& out) {
  try {
    auto ex = co_await asio::this_coro::executor;
    beast::tcp_stream s(ex);
    tcp::endpoint at(asio::ip::make_address(host), static_cast<std::uint16_t>(port));
    const auto t0 = Clock::now();
    co_await s.async_connect(at, use_awaitable);
    http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
    req.set(http::field::host, host);
    req.set(http::field::content_type, "application/json");
    if (with_key) req.set(http::field::authorization, std::string("Bearer ") + kAdmin);
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

Run run_clients(const std::string& host, int port, int clients, bool with_key) {
  asio::io_context io(1);
  std::vector<Outcome> outs(static_cast<std::size_t>(clients));
  const std::string body = json{
      {"model", "stub"},
      {"messages", {{{"role", "user"}, {"content", "hi"}}}},
      {"stream", true}}.dump();
  for (int k = 0; k < clients; ++k)
    asio::co_spawn(io, client(host, port, body, with_key, outs[static_cast<std::size_t>(k)]),
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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("Concurrent streaming clients through the ggfleet gateway");
  std::vector<int> counts = {1000, 5000};
  int tokens = 50, interval_ms = 100;
  app.add_option("--clients", counts, "Client counts, one run each")->delimiter(',');
  app.add_option("--tokens", tokens, "Tokens per stream");
  app.add_option("--interval-ms", interval_ms, "Milliseconds between tokens");
  CLI11_PARSE(app, argc, argv);

  rlimit lim{};
  getrlimit(RLIMIT_NOFILE, &lim);
  lim.rlim_cur = lim.rlim_max;
  setrlimit(RLIMIT_NOFILE, &lim);

  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("proxy_load-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  ggfleet::worker::Process server;
  server.start({GGFLEET_BINARY, "server", "--data-dir", (dir / "data").string(), "--listen",
                "127.0.0.1:0", "--admin-key", kAdmin, "--join-token", kJoin, "--slots-multiple",
                "10000", "--instance-ports", "24000", "--rpc-ports", "24600"},
               {}, (dir / "server.log").string());
  int port = 0;
  for (int k = 0; k < 200 && port == 0; ++k) {
    std::ifstream in(dir / "server.log");
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    const auto at = text.find("listening on port ");
    if (at != std::string::npos) port = std::atoi(text.c_str() + at + 18);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
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
  ggfleet::model::SynthOptions so;
  so.blocks = 2;
  so.vocab = 32000;
  const std::string model =
      ggfleet::model::synth("llama3-8b-q4_0", (dir / "models").string(), so).front();
  api.Post("/v1/deployments", admin,
           json{{"name", "stub"}, {"model", model}, {"options", {{"context", 2048}}}}.dump(),
           "application/json");
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
  std::atomic<bool> stop{false}, measuring{false};
  std::mutex beats_mu;
  std::vector<double> beats_ms;
  int beat_errors = 0;
  std::thread beater([&] {
    httplib::Client c("127.0.0.1", worker_port > 0 ? worker_port : port);
    c.set_read_timeout(30);
    const json body = {
        {"instances", json::array({{{"id", id}, {"state", "running"}, {"port", upstream_port}}})}};
    while (!stop) {
      const auto t0 = Clock::now();
      auto r = c.Post("/v1/workers/bench/heartbeat", {{"Authorization", "Bearer " + worker_key}},
                      body.dump(), "application/json");
      const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      if (measuring) {
        std::lock_guard<std::mutex> lock(beats_mu);
        beats_ms.push_back(ms);
        beat_errors += !r || r->status != 200;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  std::this_thread::sleep_for(std::chrono::seconds(1));  // the instance is reported running

  std::printf("proxy_load: %d tokens per stream, %d ms apart; server pid %d\n", tokens, interval_ms,
              server.pid());
  std::printf("%7s %-7s %7s %5s %6s %8s %8s %8s %9s %8s %8s %8s %8s\n", "clients", "path", "served",
              "429", "errors", "cut", "ttft_p50", "ttft_p99", "wall_s", "rss_MiB", "threads",
              "hb_p99", "hb_max");
  int failed_goal = 0;
  for (int n : counts) {
    const Run direct = run_clients("127.0.0.1", upstream_port, n, false);
    std::printf("%7d %-7s %7d %5d %6d %8d %8.1f %8.1f %9.1f %8s %8s %8s %8s\n", n, "direct",
                direct.served, direct.busy, direct.errors, direct.incomplete,
                percentile(direct.ttft, 0.5), percentile(direct.ttft, 0.99), direct.seconds, "-",
                "-", "-", "-");
    {
      std::lock_guard<std::mutex> lock(beats_mu);
      beats_ms.clear();
      beat_errors = 0;
    }
    measuring = true;
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
    const Run proxied = run_clients("127.0.0.1", port, n, true);
    sampling = false;
    sampler.join();
    measuring = false;
    std::vector<double> beats;
    int beat_failures = 0;
    {
      std::lock_guard<std::mutex> lock(beats_mu);
      beats = beats_ms;
      beat_failures = beat_errors;
    }
    std::printf("%7d %-7s %7d %5d %6d %8d %8.1f %8.1f %9.1f %8.1f %8ld %8.1f %8.1f\n", n, "proxied",
                proxied.served, proxied.busy, proxied.errors, proxied.incomplete,
                percentile(proxied.ttft, 0.5), percentile(proxied.ttft, 0.99), proxied.seconds,
                static_cast<double>(peak_rss) / 1024.0, peak_threads, percentile(beats, 0.99),
                beats.empty() ? 0.0 : *std::max_element(beats.begin(), beats.end()));
    std::printf(
        "%7s added ttft p50 %+.1f ms, p99 %+.1f ms; %zu heartbeats (%d failed), p50 %.1f ms\n", "",
        percentile(proxied.ttft, 0.5) - percentile(direct.ttft, 0.5),
        percentile(proxied.ttft, 0.99) - percentile(direct.ttft, 0.99), beats.size(), beat_failures,
        percentile(beats, 0.5));
    std::fflush(stdout);
    if (proxied.errors > 0 || proxied.incomplete > 0 || beat_failures > 0 ||
        percentile(beats, 0.99) >= 50)
      ++failed_goal;
  }
  stop = true;
  beater.join();
  stub_io.stop();
  stub_thread.join();
  server.stop();
  std::filesystem::remove_all(dir);
  std::printf("goal (0 errors, heartbeat p99 < 50 ms): %s\n", failed_goal ? "NOT MET" : "met");
  return 0;
}
