#include "cli/worker_cmd.h"

#include "cluster/units.h"

#include <fcntl.h>
#include <httplib.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "model/synth.h"
#include "server/auth.h"
#include "server/server.h"
#include "store/store.h"

namespace ggfleet::cli {
namespace {

using nlohmann::json;

// Blocks SIGINT/SIGTERM in every thread and sets `stop` from a thread that waits for them.
std::thread signal_watcher(std::atomic<bool>& stop) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  return std::thread([signals, &stop] {
    int received = 0;
    sigwait(&signals, &received);
    stop = true;
  });
}

void release_watcher(std::thread& t) {
  kill(getpid(), SIGUSR1);  // wakes the watcher if no signal came
  t.join();
}

}  // namespace

std::string find_llama_bin(const std::string& given) {
  auto ok = [](const std::string& dir) {
    return !dir.empty() && std::filesystem::exists(dir + "/llama-server");
  };
  if (ok(given)) return given;
  if (const char* env = std::getenv("GGFLEET_LLAMA_DIR"); env && ok(env)) return env;
  const char* home = std::getenv("HOME");
  const std::string cache = std::getenv("GGFLEET_CACHE")
                                ? std::getenv("GGFLEET_CACHE")
                                : std::string(home ? home : "/root") + "/.cache/ggfleet";
  for (const char* backend : {"cuda", "cpu"}) {
    const std::string dir = cache + "/llama.cpp/3.22.1-" + backend + "/bin";
    if (ok(dir)) return dir;
  }
  return "";
}

int run_worker(worker::AgentConfig config) {
  std::atomic<bool> stop{false};
  std::thread watcher = signal_watcher(stop);
  int code = 0;
  try {
    worker::Agent agent(config);
    agent.run(stop);
  } catch (const std::exception& e) {
    std::cerr << "ggfleet: " << e.what() << "\n";
    code = 1;
  }
  release_watcher(watcher);
  return code;
}

// The admin key a previous `ggfleet start` generated and kept in `file`, if the store at `db` still
// holds it (one revoked since is not brought back); "" otherwise.
std::string saved_admin_key(const std::string& file, const std::string& db) {
  std::ifstream in(file);
  std::string key;
  if (!in || !std::getline(in, key) || key.empty() || !std::filesystem::exists(db)) return "";
  store::Store store(db, 1);
  return store.key_by_hash(server::sha256_hex(key)) ? key : "";
}

// Keeps `key` in `file`, readable and writable by its owner only (written whole, then renamed).
void save_admin_key(const std::string& file, const std::string& key) {
  const std::string part = file + ".part";
  const int fd = ::open(part.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("cannot write " + part + ": " + std::strerror(errno));
  const std::string line = key + "\n";
  const bool written = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  const bool closed = ::close(fd) == 0;
  if (!written || !closed || std::rename(part.c_str(), file.c_str()) != 0) {
    std::remove(part.c_str());
    throw std::runtime_error("cannot write " + file);
  }
}

// `ggfleet start` itself; run_start wraps it so that any failure (a busy port, a store that
// cannot be opened) ends with a message and the signal watcher released, never std::terminate.
int serve_start(const StartOptions& o, std::atomic<bool>& stop) {
  std::string llama = find_llama_bin(o.llama_dir);
  if (llama.empty()) {
    // Build it from the pinned source, as scripts/llama-cpp does (from a checkout of ggfleet).
    for (const std::string script : {"scripts/llama-cpp", "../../scripts/llama-cpp"}) {
      if (std::filesystem::exists(script)) {
        std::cout << "llama.cpp not found: building it with " << script
                  << " (10 to 20 minutes on 2 cores)" << std::endl;
        if (std::system((script + " >&2").c_str()) == 0) llama = find_llama_bin("");
        break;
      }
    }
  }
  if (llama.empty()) {
    throw std::runtime_error("no llama.cpp found: run scripts/llama-cpp, or give --llama DIR");
  }
  std::filesystem::create_directories(o.data_dir);
  std::string model = o.model;
  if (model.empty()) {
    model::SynthOptions so;
    so.blocks = 2;
    so.vocab = 32000;
    model = model::synth("llama3-8b-q4_0", o.data_dir + "/models", so).front();
    std::cout << "model: " << model << " (synthetic Llama-3-8B shape, 2 blocks)" << std::endl;
  }
  server::ServerConfig sc;
  sc.data_dir = o.data_dir;
  try {
    const cluster::HostPort at = cluster::parse_host_port(o.listen);
    sc.host = at.host;
    sc.port = at.port;
  } catch (const cluster::UnitError& e) {
    throw std::invalid_argument(std::string("--listen: ") + e.what());
  }
  // The all-in-one keeps the admin key it generated in its data directory, so that starting it
  // again on the same directory needs no --admin-key.
  const std::string key_file = o.data_dir + "/admin-key";
  sc.admin_key = o.admin_key;
  if (sc.admin_key.empty() && !std::getenv("GGFLEET_ADMIN_KEY"))
    sc.admin_key = saved_admin_key(key_file, o.data_dir + "/ggfleet.db");
  sc.join_token = server::new_secret("ggj_");
  const std::int64_t started_ms = store::now_ms();
  server::Server srv(sc);
  const int port = srv.start();
  if (!srv.generated_admin_key().empty()) save_admin_key(key_file, srv.generated_admin_key());
  const std::string admin =
      sc.admin_key.empty()
          ? (srv.generated_admin_key().empty()
                 ? std::string(std::getenv("GGFLEET_ADMIN_KEY") ? std::getenv("GGFLEET_ADMIN_KEY")
                                                                : "")
                 : srv.generated_admin_key())
          : sc.admin_key;
  worker::AgentConfig wc;
  wc.server = "http://" + sc.host + ":" + std::to_string(port);
  wc.join_token = sc.join_token;
  wc.name = "local";
  wc.address = sc.host;
  wc.declared_gpus = o.declared_gpus;
  wc.llama_bin_dir = llama;
  wc.data_dir = o.data_dir + "/worker";
  std::thread agent_thread([&] {
    try {
      worker::Agent agent(wc);
      agent.run(stop);
    } catch (const std::exception& e) {
      std::cerr << "ggfleet: worker: " << e.what() << "\n";
      stop = true;
    }
  });
  int code = 0;
  try {
    httplib::Client api(sc.host, port);
    api.set_tcp_nodelay(true);
    api.set_read_timeout(120);
    const httplib::Headers auth = {{"Authorization", "Bearer " + admin}};
    if (admin.empty())
      throw std::runtime_error("this data directory has an admin key already and " + key_file +
                               " does not hold it: pass --admin-key");
    const std::string name = "local-model";
    auto existing = api.Get(("/v1/deployments/" + name).c_str(), auth);
    if (!existing || existing->status == 404) {
      const auto r =
          api.Post("/v1/deployments", auth,
                   json{{"name", name}, {"model", model}, {"options", {{"context", 2048}}}}.dump(),
                   "application/json");
      if (!r || r->status != 201)
        throw std::runtime_error("deploy failed: " + (r ? r->body : httplib::to_string(r.error())));
    }
    // One chat request to the deployment through the endpoint.
    auto chat = [&](const std::string& content, int max_tokens) {
      return api.Post("/v1/chat/completions", auth,
                      json{{"model", name},
                           {"messages", {{{"role", "user"}, {"content", content}}}},
                           {"max_tokens", max_tokens}}
                          .dump(),
                      "application/json");
    };
    std::cout << "waiting for " << name << " to be ready..." << std::endl;
    bool ready = false;
    for (int i = 0; i < 600 && !stop && !ready; ++i) {
      const auto r = api.Get("/v1/models", auth);
      ready =
          r && r->status == 200 && json::parse(r->body)["data"][0].value("ready_instances", 0) > 0;
      if (ready) {
        // Ready means running as this start's worker reported it, and answering: on a data
        // directory used before, the store says "running" for the last start's instance until the
        // worker reports again (loading first).
        const auto list = api.Get(("/v1/instances?deployment=" + name).c_str(), auth);
        const json instances =
            list && list->status == 200
                ? json::parse(list->body, nullptr, false).value("instances", json::array())
                : json::array();
        ready = std::any_of(instances.begin(), instances.end(), [&](const json& one) {
          return one.value("state", "") == "running" &&
                 one.value("updated_ms", std::int64_t{0}) >= started_ms;
        });
      }
      if (ready) {
        const auto probe = chat("Hi", 1);
        ready = probe && probe->status == 200;
      }
      if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    if (!ready) throw std::runtime_error("the instance did not become ready; see `ggfleet events`");
    const std::string endpoint = "http://" + sc.host + ":" + std::to_string(port);
    std::cout
        << "\nggfleet is serving " << name << " at " << endpoint << "/v1 (OpenAI-compatible)\n"
        << (srv.generated_admin_key().empty()
                ? ""
                : "admin key: " + srv.generated_admin_key() + " (kept in " + key_file + ")\n")
        << "try:\n  curl " << endpoint << "/v1/chat/completions -H 'Authorization: Bearer " << admin
        << "' -H 'Content-Type: application/json' -d '{\"model\": \"" << name
        << "\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 8}'\n"
        << std::endl;
    if (o.once) {
      const auto r = chat("Hello", 8);
      if (!r || r->status != 200)
        throw std::runtime_error("completion failed: " +
                                 (r ? r->body : httplib::to_string(r.error())));
      std::cout << "completion: " << r->body << std::endl;
      stop = true;
    }
    while (!stop) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  } catch (const std::exception& e) {
    std::cerr << "ggfleet: " << e.what() << "\n";
    code = 1;
    stop = true;
  }
  agent_thread.join();
  srv.stop();
  return code;
}

int run_start(const StartOptions& o) {
  std::atomic<bool> stop{false};
  std::thread watcher = signal_watcher(stop);
  int code = 1;
  try {
    code = serve_start(o, stop);
  } catch (const std::exception& e) {
    std::cerr << "ggfleet: " << e.what() << "\n";
  }
  release_watcher(watcher);
  return code;
}

}  // namespace ggfleet::cli
