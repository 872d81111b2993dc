// Streaming through the ggfleet server against llama-server directly, side by side in one run:
// tokens/s and time to first token for the same requests, alternating between the two paths.
//
//   build/release/bench/proxy_bench [--requests 20] [--tokens 64] [--ttft-requests 200]
//                                   [--llama DIR]
//
// Starts a server and a local worker in this process (SQLite in a temp dir), deploys a small
// synthetic model on the CPU build, waits until it runs, then measures. Twice: with llama-server
// on every core (its CPU threads spin between operations, so the proxy's threads wait for a time
// slice: the worst case) and with `-t N-1`, one core left to the proxy, as when the model runs on
// a GPU and llama-server's CPU threads mostly sleep. Throughput comes from --requests pairs of
// --tokens tokens; added TTFT from --ttft-requests pairs of one-token completions (TTFT itself
// varies by a few ms from request to request on a CPU: many pairs are needed to see a fraction
// of a millisecond), as the median of the per-pair differences (each proxied request against
// the direct one just before it) with its quartiles.
#include <httplib.h>

#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/worker_cmd.h"
#include "model/synth.h"
#include "server/auth.h"
#include "server/server.h"
#include "store/store.h"
#include "worker/agent.h"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Sample {
  double ttft_ms = 0;
  double tokens_per_s = 0;
};

// One streamed completion; tokens = data chunks after the first.
Sample stream(const std::string& host, int port, const std::string& key, const std::string& model,
              int tokens) {
  httplib::Client c(host, port);
  c.set_tcp_nodelay(true);
  c.set_read_timeout(300);
  httplib::Request r;
  r.method = "POST";
  r.path = "/v1/completions";
  r.body = json{{"model", model},       {"prompt", "The quick brown fox"},
                {"max_tokens", tokens}, {"stream", true},
                {"ignore_eos", true},   {"temperature", 0}}
               .dump();
  r.set_header("Content-Type", "application/json");
  if (!key.empty()) r.set_header("Authorization", "Bearer " + key);
  const auto t0 = Clock::now();
  Clock::time_point first{}, last{};
  int chunks = 0;
  r.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
    for (std::size_t k = 0; k + 5 <= n; ++k) {
      if (std::memcmp(data + k, "data:", 5) == 0) {
        if (chunks++ == 0) first = Clock::now();
        last = Clock::now();
      }
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  c.send(r, res, err);
  Sample s;
  s.ttft_ms = std::chrono::duration<double, std::milli>(first - t0).count();
  const double gen_s = std::chrono::duration<double>(last - first).count();
  s.tokens_per_s = chunks > 2 && gen_s > 0 ? (chunks - 2) / gen_s : 0;
  return s;
}

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5)];
}
double median(const std::vector<double>& v) {
  return quantile(v, 0.5);
}

struct Config {
  std::string name;
  json options;  // deployment options beyond the context
};

// Deploys `model` as deployment `name` with `options` (context 1024 unless given); returns its
// llama-server's port once running (0: never) and, in *instance_key, the key only the server's
// proxy holds (read from the store: this bench is the server's own process).
int deploy(httplib::Client& api, const httplib::Headers& auth, const std::string& name,
           const std::string& model, json options, const std::string& db,
           std::string* instance_key) {
  if (!options.contains("context")) options["context"] = 1024;
  api.Post("/v1/deployments", auth,
           json{{"name", name}, {"model", model}, {"options", options}}.dump(), "application/json");
  for (int i = 0; i < 600; ++i) {
    const auto r = api.Get(("/v1/instances?deployment=" + name).c_str(), auth);
    const json j = r ? json::parse(r->body) : json::object();
    if (!j.value("instances", json::array()).empty() && j["instances"][0]["state"] == "running") {
      const std::string id = j["instances"][0]["id"];
      const auto d = api.Get(("/v1/instances/" + id).c_str(), auth);
      ggfleet::store::Store store(db);
      const json a = json::parse(store.instance(id)->assignment_json);
      *instance_key = a.value("instance_key", "");
      return json::parse(d->body)["assignment"]["server_port"];
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int requests = 20, tokens = 64, ttft_requests = 200;
  std::string llama;
  CLI::App app{"streaming through the ggfleet server vs llama-server directly"};
  app.add_option("--requests", requests, "pairs of --tokens completions (tokens/s)");
  app.add_option("--tokens", tokens, "tokens per completion for tokens/s");
  app.add_option("--ttft-requests", ttft_requests, "pairs of one-token completions (TTFT)");
  app.add_option("--llama", llama, "llama.cpp bin directory");
  CLI11_PARSE(app, argc, argv);
  llama = ggfleet::cli::find_llama_bin(llama);
  if (llama.empty()) {
    std::fprintf(stderr, "no llama.cpp (run scripts/llama-cpp)\n");
    return 1;
  }
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("ggfleet-proxy-" + std::to_string(getpid()));
  ggfleet::model::SynthOptions so;
  so.blocks = 2;
  so.vocab = 32000;
  const std::string model =
      ggfleet::model::synth("llama3-8b-q4_0", (dir / "models").string(), so).front();
  ggfleet::server::ServerConfig sc;
  sc.data_dir = (dir / "data").string();
  sc.port = 0;
  sc.admin_key = "bench";
  sc.join_token = "bench-join";
  ggfleet::server::Server server(sc);
  const int port = server.start();
  std::atomic<bool> stop{false};
  ggfleet::worker::AgentConfig wc;
  wc.server = "http://127.0.0.1:" + std::to_string(port);
  wc.join_token = "bench-join";
  wc.name = "local";
  wc.llama_bin_dir = llama;
  wc.data_dir = (dir / "worker").string();
  std::thread agent([&] {
    ggfleet::worker::Agent a(wc);
    a.run(stop);
  });
  httplib::Client api("127.0.0.1", port);
  const httplib::Headers auth = {{"Authorization", "Bearer bench"}};
  const unsigned cores = std::max(2u, std::thread::hardware_concurrency());
  const std::vector<Config> configs = {
      {"llama-server on all " + std::to_string(cores) + " cores", json::object()},
      {"llama-server -t " + std::to_string(cores - 1) + " (one core left)",
       json{{"threads", cores - 1}}}};
  std::printf(
      "per path, alternating: %d streamed completions of %d tokens (tokens/s), %d of one token "
      "(TTFT)\n",
      requests, tokens, ttft_requests);
  int status = 0;
  for (const Config& config : configs) {
    std::string instance_key;
    const int direct_port =
        deploy(api, auth, "m", model, config.options, sc.data_dir + "/ggfleet.db", &instance_key);
    if (direct_port == 0) {
      std::fprintf(stderr, "the instance did not start\n");
      status = 1;
      break;
    }
    stream("127.0.0.1", direct_port, instance_key, "m", 8);  // warm up both paths
    stream("127.0.0.1", port, "bench", "m", 8);
    std::vector<double> d_ttft, d_tps, p_ttft, p_tps, added;
    for (int i = 0; i < requests; ++i) {
      d_tps.push_back(stream("127.0.0.1", direct_port, instance_key, "m", tokens).tokens_per_s);
      p_tps.push_back(stream("127.0.0.1", port, "bench", "m", tokens).tokens_per_s);
    }
    for (int i = 0; i < ttft_requests; ++i) {
      const Sample d = stream("127.0.0.1", direct_port, instance_key, "m", 1);
      const Sample p = stream("127.0.0.1", port, "bench", "m", 1);
      d_ttft.push_back(d.ttft_ms);
      p_ttft.push_back(p.ttft_ms);
      added.push_back(p.ttft_ms - d.ttft_ms);
    }
    std::printf("%s\n", config.name.c_str());
    std::printf("  direct llama-server: TTFT %7.2f ms, %7.2f tokens/s\n", median(d_ttft),
                median(d_tps));
    std::printf("  through ggfleet:     TTFT %7.2f ms, %7.2f tokens/s\n", median(p_ttft),
                median(p_tps));
    std::printf(
        "  added TTFT %+.2f ms (median of pairs; quartiles %+.2f, %+.2f), throughput %+.2f%%\n",
        median(added), quantile(added, 0.25), quantile(added, 0.75),
        100.0 * (median(p_tps) / median(d_tps) - 1.0));
    std::fflush(stdout);
    api.Delete("/v1/deployments/m", auth);
    // the next deployment reuses the name: wait until this one's instance is gone
    for (int i = 0; i < 300; ++i) {
      const auto r = api.Get("/v1/instances?deployment=m", auth);
      if (r && json::parse(r->body).value("instances", json::array()).empty()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  stop = true;
  agent.join();
  server.stop();
  std::filesystem::remove_all(dir);
  return status;
}
