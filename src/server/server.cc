#include "server/server.h"

#include <httplib.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "plan/report.h"
#include "server/auth.h"

namespace ggfleet::server {

using nlohmann::json;

// Prometheus metrics kept in memory (request counts and latencies, scheduling latencies); fleet
// gauges are read from the store when scraped.
class Metrics {
 public:
  void request(const std::string& route, const std::string& method, int status, double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    ++requests_[{route, method, status}];
    observe(latency_[route], seconds);
  }
  void proxied(const std::string& deployment, int status, std::uint64_t prompt_tokens,
               std::uint64_t completion_tokens) {
    std::lock_guard<std::mutex> lock(mu_);
    ++proxy_requests_[{deployment, status}];
    proxy_tokens_[{deployment, "prompt"}] += prompt_tokens;
    proxy_tokens_[{deployment, "completion"}] += completion_tokens;
  }
  void scheduling(double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    observe(scheduling_, seconds);
  }
  std::string render(store::Store& s) {
    std::ostringstream o;
    std::map<std::string, int> workers_by_state;
    std::size_t gpus = 0;
    double free_vram = 0;
    const std::vector<store::ClaimRow> claims = s.claims();
    const cluster::Cluster live = live_cluster(s.workers(), claims);
    for (const store::WorkerRow& w : s.workers()) ++workers_by_state[w.status];
    for (const cluster::Worker& w : live.workers) {
      gpus += w.gpus.size();
      for (std::size_t g = 0; g < w.gpus.size(); ++g)
        free_vram += static_cast<double>(w.free_vram_bytes(g));
    }
    std::map<std::string, int> instances_by_state;
    for (const store::InstanceRow& i : s.instances()) ++instances_by_state[i.state];
    o << "# HELP ggfleet_workers Workers by state.\n# TYPE ggfleet_workers gauge\n";
    for (const char* st : {"ready", "unreachable", "draining"}) {
      o << "ggfleet_workers{state=\"" << st << "\"} " << workers_by_state[st] << "\n";
    }
    o << "# HELP ggfleet_gpus GPUs of ready workers.\n# TYPE ggfleet_gpus gauge\nggfleet_gpus "
      << gpus << "\n";
    o << "# HELP ggfleet_gpu_free_bytes Free VRAM on ready workers after reservations and claims.\n"
         "# TYPE ggfleet_gpu_free_bytes gauge\nggfleet_gpu_free_bytes "
      << static_cast<std::uint64_t>(free_vram) << "\n";
    o << "# HELP ggfleet_instances Instances by state.\n# TYPE ggfleet_instances gauge\n";
    for (const char* st : {"pending", "assigned", "starting", "loading", "running", "error"}) {
      o << "ggfleet_instances{state=\"" << st << "\"} " << instances_by_state[st] << "\n";
    }
    std::lock_guard<std::mutex> lock(mu_);
    o << "# HELP ggfleet_scheduling_duration_seconds Time of one scheduling pass.\n"
         "# TYPE ggfleet_scheduling_duration_seconds histogram\n";
    render_histogram(o, "ggfleet_scheduling_duration_seconds", "", scheduling_);
    o << "# HELP ggfleet_api_requests_total API requests.\n# TYPE ggfleet_api_requests_total "
         "counter\n";
    for (const auto& [key, n] : requests_) {
      o << "ggfleet_api_requests_total{route=\"" << std::get<0>(key) << "\",method=\""
        << std::get<1>(key) << "\",code=\"" << std::get<2>(key) << "\"} " << n << "\n";
    }
    o << "# HELP ggfleet_inference_requests_total Requests proxied to instances.\n"
         "# TYPE ggfleet_inference_requests_total counter\n";
    for (const auto& [key, n] : proxy_requests_) {
      o << "ggfleet_inference_requests_total{deployment=\"" << key.first << "\",code=\""
        << key.second << "\"} " << n << "\n";
    }
    o << "# HELP ggfleet_inference_tokens_total Tokens through the proxy (streamed: one per "
         "chunk).\n"
         "# TYPE ggfleet_inference_tokens_total counter\n";
    for (const auto& [key, n] : proxy_tokens_) {
      o << "ggfleet_inference_tokens_total{deployment=\"" << key.first << "\",kind=\"" << key.second
        << "\"} " << n << "\n";
    }
    o << "# HELP ggfleet_api_request_duration_seconds API latency.\n"
         "# TYPE ggfleet_api_request_duration_seconds histogram\n";
    for (const auto& [route, h] : latency_) {
      render_histogram(o, "ggfleet_api_request_duration_seconds", "route=\"" + route + "\"", h);
    }
    return o.str();
  }

 private:
  static constexpr double kBounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25,  0.5,    1,     2.5,  5,     10};
  struct Histogram {
    std::uint64_t buckets[std::size(kBounds)] = {};
    std::uint64_t count = 0;
    double sum = 0;
  };
  static void observe(Histogram& h, double v) {
    for (std::size_t i = 0; i < std::size(kBounds); ++i) {
      if (v <= kBounds[i]) ++h.buckets[i];
    }
    ++h.count;
    h.sum += v;
  }
  static void render_histogram(std::ostringstream& o, const std::string& name,
                               const std::string& labels, const Histogram& h) {
    const std::string sep = labels.empty() ? "" : ",";
    for (std::size_t i = 0; i < std::size(kBounds); ++i) {
      o << name << "_bucket{" << labels << sep << "le=\"" << kBounds[i] << "\"} " << h.buckets[i]
        << "\n";
    }
    o << name << "_bucket{" << labels << sep << "le=\"+Inf\"} " << h.count << "\n";
    o << name << "_sum" << (labels.empty() ? "" : "{" + labels + "}") << " " << h.sum << "\n";
    o << name << "_count" << (labels.empty() ? "" : "{" + labels + "}") << " " << h.count << "\n";
  }
  std::mutex mu_;
  std::map<std::tuple<std::string, std::string, int>, std::uint64_t> requests_;
  std::map<std::string, Histogram> latency_;
  Histogram scheduling_;
  std::map<std::pair<std::string, int>, std::uint64_t> proxy_requests_;
  std::map<std::pair<std::string, std::string>, std::uint64_t> proxy_tokens_;
};

namespace {

// Thousands of client streams, each with an upstream socket, need more than the usual 1,024
// descriptors: take the hard limit.
void raise_open_files_limit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

// A failed request: the status and the message for {"error": ...}.
struct HttpError {
  int status;
  std::string message;
};

struct Principal {
  std::string role;  // admin | user | worker | join
  std::string worker;
};

const std::regex kName("^[a-z0-9][a-z0-9-]{0,62}$");

json parse_body(const httplib::Request& req) {
  if (req.body.empty()) throw HttpError{400, "a JSON object body is required"};
  json j = json::parse(req.body, nullptr, false);
  if (j.is_discarded()) throw HttpError{400, "the body is not valid JSON"};
  if (!j.is_object()) throw HttpError{400, "the body must be a JSON object"};
  return j;
}

void only(const json& j, std::initializer_list<const char*> keys) {
  for (const auto& item : j.items()) {
    const std::string& k = item.key();
    if (std::none_of(keys.begin(), keys.end(), [&](const char* known) { return k == known; })) {
      throw HttpError{400, "unknown field '" + k + "'"};
    }
  }
}

std::string required_string(const json& j, const char* key) {
  if (!j.contains(key)) throw HttpError{400, std::string("'") + key + "' is required"};
  if (!j[key].is_string() || j[key].get<std::string>().empty()) {
    throw HttpError{400, std::string("'") + key + "' must be a non-empty string"};
  }
  return j[key].get<std::string>();
}

std::int64_t integer_in(const json& j, const char* key, std::int64_t lo, std::int64_t hi) {
  if (!j[key].is_number_integer() || j[key].get<std::int64_t>() < lo ||
      j[key].get<std::int64_t>() > hi) {
    throw HttpError{400, std::string("'") + key + "' must be an integer from " +
                             std::to_string(lo) + " to " + std::to_string(hi)};
  }
  return j[key].get<std::int64_t>();
}

json parse_or(const std::string& text, json fallback) {
  json j = json::parse(text, nullptr, false);
  return j.is_discarded() ? fallback : j;
}

json worker_json(const store::WorkerRow& w) {
  return {{"name", w.name},
          {"address", w.address},
          {"labels", parse_or(w.labels_json, json::object())},
          {"status", w.status},
          {"resources", parse_or(w.resources_json, json::object())},
          {"last_heartbeat_ms", w.last_heartbeat_ms},
          {"registered_ms", w.registered_ms}};
}

json deployment_json(const store::DeploymentRow& d,
                     const std::vector<store::InstanceRow>& instances) {
  json states = json::object();
  for (const store::InstanceRow& i : instances) states[i.state] = states.value(i.state, 0) + 1;
  return {{"name", d.name},
          {"model", d.model},
          {"replicas", d.replicas},
          {"options", parse_or(d.options_json, json::object())},
          {"instances", states},
          {"created_ms", d.created_ms},
          {"updated_ms", d.updated_ms}};
}

json instance_json(const store::InstanceRow& i, bool with_assignment) {
  json j = {{"id", i.id},
            {"deployment", i.deployment},
            {"state", i.state},
            {"main_worker", i.main_worker},
            {"reason", i.reason},
            {"restarts", i.restarts},
            {"predicted_tokens_per_s", i.predicted_tokens_per_s},
            {"created_ms", i.created_ms},
            {"updated_ms", i.updated_ms}};
  if (with_assignment) j["assignment"] = parse_or(i.assignment_json, json::object());
  return j;
}

// What each worker runs: per worker, the instances it is main of or lends GPUs to, with the
// commands it runs for each. One pass over the store's instances and claims; `only` (if not
// empty) limits it to that worker.
std::map<std::string, json> assignments_by_worker(const std::vector<store::InstanceRow>& instances,
                                                  const std::vector<store::ClaimRow>& claims,
                                                  const std::string& only = "") {
  std::map<std::string, std::set<std::string>> lenders;  // instance -> workers lending over RPC
  for (const store::ClaimRow& c : claims) {
    if (c.rpc) lenders[c.instance].insert(c.worker);
  }
  std::map<std::string, json> out;
  for (const store::InstanceRow& i : instances) {
    if (i.state == "pending") continue;
    std::set<std::string> workers = lenders[i.id];
    if (!i.main_worker.empty()) workers.insert(i.main_worker);
    const json assignment = parse_or(i.assignment_json, json::object());
    for (const std::string& name : workers) {
      if (!only.empty() && name != only) continue;
      json a = instance_json(i, false);
      json commands = json::array();
      for (const json& c : assignment.value("commands", json::array())) {
        if (c.value("worker", "") == name) commands.push_back(c);
      }
      a["role"] = i.main_worker == name ? "main" : "rpc";
      a["commands"] = commands;
      a["model"] = assignment.value("model", "");
      a["server_port"] = assignment.value("server_port", 0);
      a["rpc_port_base"] = assignment.value("rpc_port_base", 0);
      a["devices"] =
          assignment.contains("plan") ? assignment["plan"]["layout"]["devices"] : json::array();
      auto [it, fresh] = out.try_emplace(name, json::array());
      it->second.push_back(std::move(a));
    }
  }
  return out;
}

// The part of a worker's assignments that it acts on (not states or times): what the long
// poll compares to decide whether that worker has news.
std::string assignment_digest(const json& list) {
  std::string out;
  for (const json& a : list) {
    for (const char* k : {"id", "role", "model", "server_port", "commands", "devices"})
      out += a.value(k, json()).dump() + "\x1f";
    out += "\x1e";
  }
  return out;
}

json event_json(const store::EventRow& e) {
  return {{"id", e.id},
          {"time_ms", e.time_ms},
          {"kind", e.kind},
          {"subject", e.subject},
          {"message", e.message}};
}

std::string env_or(const std::string& given, const char* var) {
  if (!given.empty()) return given;
  const char* v = std::getenv(var);
  return v ? v : "";
}

}  // namespace

Server::Server(ServerConfig config)
    : config_(std::move(config)), metrics_(std::make_unique<Metrics>()) {}

Server::~Server() {
  stop();
}

void Server::bootstrap_keys() {
  const std::vector<store::KeyRow> keys = store_->keys();
  auto has_role = [&](const char* role) {
    return std::any_of(keys.begin(), keys.end(),
                       [&](const store::KeyRow& k) { return k.role == role; });
  };
  const std::string admin = env_or(config_.admin_key, "GGFLEET_ADMIN_KEY");
  if (!admin.empty()) {
    const std::string hash = sha256_hex(admin);
    if (!store_->key_by_hash(hash))
      store_->put_key({"admin-" + hash.substr(0, 12), "admin", hash, "admin", "", store::now_ms()});
  } else if (!has_role("admin")) {
    generated_admin_key_ = new_secret();
    store_->put_key(
        {"admin", "admin", sha256_hex(generated_admin_key_), "admin", "", store::now_ms()});
  }
  const std::string join = env_or(config_.join_token, "GGFLEET_JOIN_TOKEN");
  if (!join.empty()) {
    const std::string hash = sha256_hex(join);
    if (!store_->key_by_hash(hash))
      store_->put_key({"join-" + hash.substr(0, 12), "join", hash, "join", "", store::now_ms()});
  } else if (!has_role("join")) {
    generated_join_token_ = new_secret("ggj_");
    store_->put_key(
        {"join", "join", sha256_hex(generated_join_token_), "join", "", store::now_ms()});
  }
}

int Server::start() {
  std::filesystem::create_directories(config_.data_dir);
  store_ = std::make_unique<store::Store>(config_.db.empty() ? config_.data_dir + "/ggfleet.db"
                                                             : config_.db);
  scheduler_ = std::make_unique<Scheduler>(*store_, config_.scheduler);
  bootstrap_keys();
  if (!config_.tls_cert.empty() || !config_.tls_key.empty()) {
    throw std::runtime_error(
        "--tls-cert/--tls-key: the public listener (an asynchronous gateway) does not terminate "
        "TLS yet; put a TLS proxy in front of ggfleet server");
  }
  http_ = std::make_unique<httplib::Server>();
  const int threads = config_.threads;
  http_->new_task_queue = [threads] {
    return new httplib::ThreadPool(static_cast<std::size_t>(threads));
  };
  http_->set_payload_max_length(config_.max_body_bytes);
  http_->set_keep_alive_max_count(1000);
  http_->set_tcp_nodelay(true);
  // Debian's httplib is a shared library built to listen with a backlog of 5: a thousand
  // workers connecting at once would have SYNs dropped and retried after 1, 3, 7, 15, 31 s.
  // Remember the listening socket and listen again with a real backlog after binding.
  int listen_fd = -1;
  http_->set_socket_options([&listen_fd](socket_t sock) {
    httplib::default_socket_options(sock);
    listen_fd = static_cast<int>(sock);
  });
  routes();
  // The control plane listens on loopback only: the gateway relays to it.
  const int control_port = http_->bind_to_any_port(config_.front.control_host.c_str());
  if (control_port <= 0)
    throw std::runtime_error("cannot listen on " + config_.front.control_host +
                             " for the control plane");
  if (listen_fd >= 0) ::listen(listen_fd, 4096);  // the kernel caps it at net.core.somaxconn
  GatewayConfig front = config_.front;
  front.host = config_.host;
  front.port = config_.port;
  front.control_port = control_port;
  front.max_body_bytes = config_.max_body_bytes;
  front.control_timeout_s = std::max(front.control_timeout_s, config_.max_wait_s + 30);
  raise_open_files_limit();
  gateway_ = std::make_unique<Gateway>(front, hooks_);
  int port = -1;
  try {
    port = gateway_->start();
  } catch (const std::exception&) {
    http_->stop();
    throw;
  }
  http_thread_ = std::thread([this] { http_->listen_after_bind(); });
  schedule_thread_ = std::thread([this] { schedule_loop(); });
  return port;
}

void Server::stop() {
  if (stopping_.exchange(true)) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_ = true;
  }
  wake_cv_.notify_all();
  assign_cv_.notify_all();
  if (gateway_) gateway_->stop();
  if (http_) http_->stop();
  if (http_thread_.joinable()) http_thread_.join();
  if (schedule_thread_.joinable()) schedule_thread_.join();
}

void Server::wait() {
  if (http_thread_.joinable()) http_thread_.join();
}

void Server::wake_scheduler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_ = true;
  }
  wake_cv_.notify_all();
}

void Server::schedule_loop() {
  std::int64_t version = -1;
  while (!stopping_) {
    const auto t0 = std::chrono::steady_clock::now();
    try {
      scheduler_->reconcile();
    } catch (const std::exception& e) {
      std::cerr << "ggfleet server: scheduling pass failed: " << e.what() << std::endl;
      try {
        store_->event("scheduler.error", "scheduler", e.what());
      } catch (...) {
      }
    }
    metrics_->scheduling(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    try {
      const std::int64_t now_version = store_->assignment_version();
      if (now_version != version) {
        publish_assignments();
        version = now_version;  // only once published: a failure is retried next pass
      }
    } catch (const std::exception& e) {
      std::cerr << "ggfleet server: publishing assignments failed (retried next pass): " << e.what()
                << std::endl;
    }
    std::unique_lock<std::mutex> lock(mu_);
    wake_cv_.wait_for(lock, std::chrono::milliseconds(config_.schedule_interval_ms),
                      [this] { return wake_; });
    wake_ = false;
  }
}

void Server::publish_assignments() {
  auto next = std::make_shared<Assignments>();
  store_->snapshot([&] {  // one consistent reading of the version, instances and claims
    next->version = store_->assignment_version();
    next->by_worker = assignments_by_worker(store_->instances(), store_->claims());
  });
  {
    std::lock_guard<std::mutex> lock(mu_);
    next->changed_at =
        assignments_ ? assignments_->changed_at : std::map<std::string, std::int64_t>{};
    std::set<std::string> names;
    for (const auto& [name, list] : next->by_worker) names.insert(name);
    if (assignments_) {
      for (const auto& [name, list] : assignments_->by_worker) names.insert(name);
    }
    static const json kNone = json::array();
    for (const std::string& name : names) {
      const auto now = next->by_worker.find(name);
      const json& after = now == next->by_worker.end() ? kNone : now->second;
      const json* before = &kNone;
      if (assignments_) {
        const auto was = assignments_->by_worker.find(name);
        if (was != assignments_->by_worker.end()) before = &was->second;
      }
      if (!assignments_ || assignment_digest(*before) != assignment_digest(after))
        next->changed_at[name] = next->version;
    }
    assignments_ = std::move(next);
  }
  ++routes_generation_;  // instances moved: the proxy reads where they listen again
  assign_cv_.notify_all();
}

std::optional<std::pair<std::string, std::string>> Server::cached_principal(
    const std::string& hash) {
  // Valid keys are remembered for a minute (the proxy's hot path must not read the store);
  // deleting a key through this server forgets them all at once, through another server sharing
  // the database within the minute.
  std::lock_guard<std::mutex> lock(cache_mu_);
  const auto it = key_cache_.find(hash);
  if (it != key_cache_.end() &&
      std::chrono::steady_clock::now() - it->second.first < std::chrono::seconds(60)) {
    return it->second.second;
  }
  return std::nullopt;
}

std::optional<ProxyRoute> Server::cached_route(const std::string& deployment) {
  // Read from the store when an instance changed since (or after 30 s, for changes made by
  // another server on the same database), not per request: the proxy's hot path.
  std::lock_guard<std::mutex> lock(cache_mu_);
  const auto it = route_cache_.find(deployment);
  if (it != route_cache_.end() && it->second.generation == routes_generation_.load() &&
      std::chrono::steady_clock::now() - it->second.when < std::chrono::seconds(30))
    return it->second.route;
  return std::nullopt;
}

ProxyRoute Server::route_of(const std::string& deployment) {
  if (std::optional<ProxyRoute> cached = cached_route(deployment)) return *cached;
  const auto now = std::chrono::steady_clock::now();
  Route fresh{now, routes_generation_.load(), {}};
  fresh.route.exists = store_->deployment(deployment).has_value();
  if (fresh.route.exists) {
    for (const store::InstanceRow& i : store_->instances(deployment)) {
      ProxyTarget t{i.id, "", 0, i.state, i.reason, 1};
      if (i.state == "running") {
        if (const std::optional<store::WorkerRow> w = store_->worker(i.main_worker))
          t.host = w->address;
        const json a = parse_or(i.assignment_json, json::object());
        t.port = a.value("listen_port", a.value("server_port", 0));
        t.slots = std::max(1, a.value("slots", 1));
      }
      fresh.route.targets.push_back(t);
    }
  }
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (route_cache_.size() > 10000) route_cache_.clear();
  route_cache_[deployment] = fresh;
  return fresh.route;
}

void Server::forget_key(const std::string& id) {
  store_->delete_key(id);
  std::lock_guard<std::mutex> lock(cache_mu_);
  key_cache_.clear();
}

void Server::routes() {
  httplib::Server& s = *http_;
  // Every response body is JSON; errors are {"error": "..."}.
  s.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.body.empty()) {
      const std::string text = res.status == 413   ? "the body is too large"
                               : res.status == 404 ? "no such route"
                                                   : "HTTP status " + std::to_string(res.status);
      res.set_content(json{{"error", text}}.dump(), "application/json");
    }
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    res.status = 500;
    res.set_content(json{{"error", "internal error"}}.dump(), "application/json");
  });

  auto authenticate = [this](const httplib::Request& req) -> Principal {
    const std::string header = req.get_header_value("Authorization");
    if (header.empty()) throw HttpError{401, "an API key is required (Authorization: Bearer KEY)"};
    if (header.rfind("Bearer ", 0) != 0)
      throw HttpError{401, "the Authorization header must be 'Bearer KEY'"};
    const std::string hash = sha256_hex(header.substr(7));
    const auto now = std::chrono::steady_clock::now();
    if (const auto cached = cached_principal(hash)) return {cached->first, cached->second};
    const std::optional<store::KeyRow> key = store_->key_by_hash(hash);
    if (!key) throw HttpError{401, "invalid API key"};
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (key_cache_.size() > 10000) key_cache_.clear();
    key_cache_[hash] = {now, {key->role, key->worker}};
    return {key->role, key->worker};
  };
  auto allow = [](const Principal& p, std::initializer_list<const char*> roles) {
    if (std::none_of(roles.begin(), roles.end(), [&](const char* r) { return p.role == r; })) {
      throw HttpError{403, "a " + p.role + " key may not do this"};
    }
  };
  auto self_or = [](const Principal& p, const std::string& worker) {
    if (p.role == "admin" || (p.role == "user")) return;
    if (p.role == "worker" && p.worker == worker) return;
    throw HttpError{
        403, p.role == "worker" ? "a worker key may only speak for its own worker" : "not allowed"};
  };
  using Handler =
      std::function<void(const httplib::Request&, httplib::Response&, const Principal&)>;
  // Wraps a handler: authentication, JSON errors, metrics.
  auto route = [this, authenticate](const std::string& name, bool auth, Handler h) {
    return
        [this, name, auth, h, authenticate](const httplib::Request& req, httplib::Response& res) {
          const auto t0 = std::chrono::steady_clock::now();
          try {
            const Principal p = auth ? authenticate(req) : Principal{"none", ""};
            h(req, res, p);
          } catch (const HttpError& e) {
            res.status = e.status;
            res.set_content(json{{"error", e.message}}.dump(), "application/json");
          } catch (const std::invalid_argument& e) {
            res.status = 400;
            res.set_content(json{{"error", e.what()}}.dump(), "application/json");
          } catch (const store::StoreError& e) {
            res.status = 503;
            res.set_content(json{{"error", std::string("store unavailable: ") + e.what()}}.dump(),
                            "application/json");
          } catch (const std::exception& e) {
            res.status = 500;
            res.set_content(json{{"error", e.what()}}.dump(), "application/json");
          }
          metrics_->request(
              name, req.method, res.status,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        };
  };
  auto reply = [](httplib::Response& res, const json& j, int status = 200) {
    res.status = status;
    res.set_content(j.dump(), "application/json");
  };

  s.Get("/healthz", route("/healthz", false, [this, reply](const auto&, auto& res, const auto&) {
          reply(res, {{"status", "ok"}, {"store", store_->backend()}});
        }));
  s.Get("/metrics",
        route("/metrics", true, [this, allow](const auto&, auto& res, const Principal& p) {
          allow(p, {"admin", "user"});
          res.set_content(metrics_->render(*store_), "text/plain; version=0.0.4");
        }));

  // Workers.
  s.Post(
      "/v1/workers/register",
      route("/v1/workers/register", true,
            [this, allow, reply](const auto& req, auto& res, const Principal& p) {
              allow(p, {"join", "admin"});
              const json b = parse_body(req);
              only(b, {"name", "address", "labels", "resources", "worker_key", "stale_processes"});
              const std::string name = required_string(b, "name");
              if (!std::regex_match(name, kName))
                throw HttpError{400, "'name' must match [a-z0-9][a-z0-9-]{0,62}"};
              const std::string address =
                  b.contains("address") ? required_string(b, "address") : name;
              const json labels = b.value("labels", json::object());
              const json resources = b.value("resources", json::object());
              if (!labels.is_object())
                throw HttpError{400, "'labels' must be an object of strings"};
              worker_from_resources(name, address, labels, resources);  // validates
              const std::string presented =
                  b.contains("worker_key") ? required_string(b, "worker_key") : "";
              std::vector<std::string> stale;
              if (b.contains("stale_processes")) {
                if (!b["stale_processes"].is_array())
                  throw HttpError{400, "'stale_processes' must be an array of strings"};
                for (const json& v : b["stale_processes"]) {
                  if (!v.is_string())
                    throw HttpError{400, "'stale_processes' must be an array of strings"};
                  stale.push_back(v.get<std::string>().substr(0, 200));
                }
              }
              const std::string key = new_secret("ggw_");
              store_->transaction([&] {
                const std::optional<store::WorkerRow> old = store_->worker(name);
                // A live worker keeps its name: only one that holds its credentials (the same
                // worker restarted) may register under it again. An unreachable one may be
                // replaced.
                if (old && old->status != "unreachable") {
                  const std::optional<store::KeyRow> k =
                      presented.empty() ? std::nullopt : store_->key_by_hash(sha256_hex(presented));
                  if (!k || k->role != "worker" || k->worker != name) {
                    throw HttpError{409,
                                    "a worker named " + name + " is registered (" + old->address +
                                        ", status " + old->status +
                                        ") and this one does not hold its credentials: give this "
                                        "worker another --name, or remove the other first (DELETE "
                                        "/v1/workers/" +
                                        name + ")"};
                  }
                }
                for (const store::KeyRow& k : store_->keys()) {
                  if (k.role == "worker" && k.worker == name) forget_key(k.id);
                }
                store_->put_worker({name, address, labels.dump(), "ready", resources.dump(),
                                    store::now_ms(), old ? old->registered_ms : store::now_ms()});
                store_->put_key(
                    {"worker-" + name, name, sha256_hex(key), "worker", name, store::now_ms()});
                store_->event("worker.registered", name,
                              "registered from " + address +
                                  (old && old->status == "unreachable"
                                       ? " (replacing an unreachable worker of that name)"
                                       : ""));
                if (!stale.empty()) {
                  std::string list;
                  for (const std::string& entry : stale) list += (list.empty() ? "" : ", ") + entry;
                  store_->event("worker.stale_processes", name,
                                "stopped processes an earlier run left behind: " + list);
                }
              });
              wake_scheduler();
              // Heartbeats and polls have a listener of their own (gateway.h).
              reply(res, {{"name", name}, {"key", key}, {"worker_port", gateway_->worker_port()}},
                    201);
            }));
  s.Post(
      R"(/v1/workers/([a-z0-9-]+)/heartbeat)",
      route("/v1/workers/{name}/heartbeat", true,
            [this, self_or, reply](const auto& req, auto& res, const Principal& p) {
              const std::string name = req.matches[1];
              self_or(p, name);
              if (p.role == "user")
                throw HttpError{403, "only the worker itself reports its status"};
              const json b = parse_body(req);
              only(b, {"resources", "instances"});
              std::optional<store::WorkerRow> w = store_->worker(name);
              if (!w) throw HttpError{404, "no worker named " + name};
              if (b.contains("resources")) {
                worker_from_resources(name, w->address, parse_or(w->labels_json, json::object()),
                                      b["resources"]);
                w->resources_json = b["resources"].dump();
              }
              struct Report {
                std::string id, state, reason, log;
                std::int64_t restarts = -1;
                std::int64_t port = -1;         // the placement it is about (its llama-server port)
                std::int64_t listen_port = -1;  // where llama-server really listens
                bool gave_up = false;           // restarts exhausted on this worker
              };
              std::vector<Report> reports;
              if (b.contains("instances")) {
                if (!b["instances"].is_array())
                  throw HttpError{400, "'instances' must be an array"};
                static const std::set<std::string> states = {"starting", "loading", "running",
                                                             "error", "stopped"};
                for (const json& i : b["instances"]) {
                  if (!i.is_object())
                    throw HttpError{400, "each instance report must be an object"};
                  only(i, {"id", "state", "reason", "log_tail", "restarts", "port", "listen_port",
                           "gave_up"});
                  Report r;
                  r.id = required_string(i, "id");
                  r.state = required_string(i, "state");
                  if (!states.count(r.state))
                    throw HttpError{400, "unknown instance state '" + r.state + "'"};
                  if (i.contains("reason")) {
                    if (!i["reason"].is_string()) throw HttpError{400, "'reason' must be a string"};
                    r.reason = i["reason"].get<std::string>().substr(0, 4096);
                  }
                  if (i.contains("log_tail")) {
                    if (!i["log_tail"].is_string())
                      throw HttpError{400, "'log_tail' must be a string"};
                    r.log = i["log_tail"].get<std::string>().substr(0, 65536);
                  }
                  if (i.contains("port")) r.port = integer_in(i, "port", 0, 65535);
                  if (i.contains("listen_port"))
                    r.listen_port = integer_in(i, "listen_port", 1, 65535);
                  if (i.contains("gave_up")) {
                    if (!i["gave_up"].is_boolean())
                      throw HttpError{400, "'gave_up' must be true or false"};
                    r.gave_up = i["gave_up"].get<bool>();
                  }
                  if (i.contains("restarts")) r.restarts = integer_in(i, "restarts", 0, 1000000);
                  reports.push_back(r);
                }
              }
              const bool was_unreachable = w->status == "unreachable";
              bool any_changed = false, replanned = false;
              store_->transaction([&] {
                w->last_heartbeat_ms = store::now_ms();
                if (was_unreachable) {
                  w->status = "ready";
                  store_->event("worker.ready", name, "heartbeats again");
                }
                store_->put_worker(*w);
                for (const Report& r : reports) {
                  std::optional<store::InstanceRow> i = store_->instance(r.id);
                  if (!i || i->main_worker != name || i->state == "pending")
                    continue;  // not (or no longer) its own
                  if (r.port >= 0 &&
                      r.port !=
                          parse_or(i->assignment_json, json::object()).value("server_port", -1)) {
                    continue;  // about an earlier placement of this instance
                  }
                  if (r.state == "stopped") continue;
                  if (r.gave_up) {
                    // Crashed too often here: plan it again, away from this worker.
                    replan(*store_, *i,
                           "llama-server failed " + std::to_string(r.restarts) + " times on " +
                               name + " (" + r.reason + "); re-planning elsewhere",
                           name);
                    any_changed = true;
                    replanned = true;
                    continue;
                  }
                  json assignment = parse_or(i->assignment_json, json::object());
                  if (r.listen_port > 0 && assignment.value("listen_port", -1) != r.listen_port) {
                    assignment["listen_port"] = r.listen_port;  // the proxy connects there
                    i->assignment_json = assignment.dump();
                    any_changed = true;
                  }
                  const bool changed =
                      i->state != r.state || (r.state == "error" && i->reason != r.reason);
                  i->state = r.state;
                  if (!r.reason.empty() || r.state == "running") i->reason = r.reason;
                  if (!r.log.empty()) i->log_tail = r.log;
                  if (r.restarts >= 0) i->restarts = r.restarts;
                  i->updated_ms = store::now_ms();
                  store_->put_instance(*i);
                  if (changed)
                    store_->event("instance." + r.state, i->id,
                                  r.reason.empty() ? r.state : r.reason);
                  any_changed = any_changed || changed;
                }
              });
              if (any_changed) ++routes_generation_;
              if (was_unreachable || replanned) wake_scheduler();
              reply(res, {{"assignment_version", store_->assignment_version()}});
            }));
  s.Get(R"(/v1/workers/([a-z0-9-]+)/assignments)",
        route("/v1/workers/{name}/assignments", true,
              [this, self_or, reply](const auto& req, auto& res, const Principal& p) {
                const std::string name = req.matches[1];
                self_or(p, name);
                std::int64_t since = -1;
                int wait_s = 0;
                try {
                  if (req.has_param("since")) since = std::stoll(req.get_param_value("since"));
                  if (req.has_param("wait"))
                    wait_s =
                        std::clamp(std::stoi(req.get_param_value("wait")), 0, config_.max_wait_s);
                } catch (const std::exception&) {
                  throw HttpError{400, "since and wait must be integers"};
                }
                int retry_after_ms = 0;
                std::shared_ptr<const Assignments> seen;
                if (wait_s > 0) {
                  // A poll waits until this worker's own assignments change, not for every
                  // change in the fleet, and reads the published snapshot, not the store.
                  // Waiting holds an HTTP thread: only so many polls wait, the rest come back
                  // with retry_after_ms.
                  const int slots =
                      config_.long_poll_slots >= 0 ? config_.long_poll_slots : config_.threads / 2;
                  auto news = [&] {
                    const auto it = assignments_->changed_at.find(name);
                    return it != assignments_->changed_at.end() && it->second > since;
                  };
                  std::unique_lock<std::mutex> lock(mu_);
                  if (assignments_ && !news()) {
                    if (long_polls_ < slots) {
                      ++long_polls_;
                      assign_cv_.wait_for(lock, std::chrono::seconds(wait_s),
                                          [&] { return stopping_.load() || news(); });
                      --long_polls_;
                    } else {
                      retry_after_ms = config_.long_poll_retry_ms;
                    }
                  }
                  // Not older than what the worker has seen (else read the store below).
                  if (assignments_ && assignments_->version >= since) seen = assignments_;
                }
                std::int64_t version = 0;
                json list = json::array();
                if (seen) {
                  version = seen->version;
                  const auto it = seen->by_worker.find(name);
                  if (it != seen->by_worker.end()) list = it->second;
                } else {
                  store_->snapshot([&] {
                    version = store_->assignment_version();
                    std::map<std::string, json> mine =
                        assignments_by_worker(store_->instances(), store_->claims(), name);
                    if (mine.count(name)) list = std::move(mine[name]);
                  });
                }
                json out = {{"version", version}, {"instances", list}};
                if (retry_after_ms > 0) out["retry_after_ms"] = retry_after_ms;
                reply(res, out);
              }));
  s.Get("/v1/workers", route("/v1/workers", true,
                             [this, allow, reply](const auto&, auto& res, const Principal& p) {
                               allow(p, {"admin", "user"});
                               json list = json::array();
                               for (const store::WorkerRow& w : store_->workers())
                                 list.push_back(worker_json(w));
                               reply(res, {{"workers", list}});
                             }));
  s.Get(R"(/v1/workers/([a-z0-9-]+))",
        route("/v1/workers/{name}", true,
              [this, self_or, reply](const auto& req, auto& res, const Principal& p) {
                const std::string name = req.matches[1];
                self_or(p, name);
                const std::optional<store::WorkerRow> w = store_->worker(name);
                if (!w) throw HttpError{404, "no worker named " + name};
                reply(res, worker_json(*w));
              }));
  s.Post(R"(/v1/workers/([a-z0-9-]+)/drain)",
         route("/v1/workers/{name}/drain", true,
               [this, allow, reply](const auto& req, auto& res, const Principal& p) {
                 allow(p, {"admin", "user"});
                 const std::string name = req.matches[1];
                 bool found = false;
                 store_->transaction([&] {
                   found = store_->set_worker_status(name, "draining");
                   if (found)
                     store_->event("worker.draining", name, "no new instances will be placed here");
                 });
                 if (!found) throw HttpError{404, "no worker named " + name};
                 reply(res, {{"name", name}, {"status", "draining"}});
               }));
  s.Delete(R"(/v1/workers/([a-z0-9-]+))",
           route("/v1/workers/{name}", true,
                 [this, allow, reply](const auto& req, auto& res, const Principal& p) {
                   allow(p, {"admin"});
                   const std::string name = req.matches[1];
                   bool found = false;
                   store_->transaction([&] {
                     found = store_->remove_worker(name);
                     for (const store::KeyRow& k : store_->keys()) {
                       if (k.role == "worker" && k.worker == name) forget_key(k.id);
                     }
                     if (found)
                       store_->event("worker.removed", name,
                                     "removed; its instances are re-planned");
                   });
                   if (!found) throw HttpError{404, "no worker named " + name};
                   wake_scheduler();
                   reply(res, {{"removed", name}});
                 }));

  // Deployments.
  auto check_deployment = [this](const std::string& model, const json& options) {
    request_from_options(options, model);
    try {
      scheduler_->model(model);
    } catch (const std::exception& e) {
      throw HttpError{400, std::string("cannot read the model: ") + e.what()};
    }
  };
  s.Post(
      "/v1/deployments",
      route("/v1/deployments", true,
            [this, allow, reply, check_deployment](const auto& req, auto& res, const Principal& p) {
              allow(p, {"admin", "user"});
              const json b = parse_body(req);
              only(b, {"name", "model", "replicas", "options"});
              const std::string name = required_string(b, "name");
              if (!std::regex_match(name, kName))
                throw HttpError{400, "'name' must match [a-z0-9][a-z0-9-]{0,62}"};
              const std::string model = required_string(b, "model");
              const std::int64_t replicas =
                  b.contains("replicas") ? integer_in(b, "replicas", 0, 1000) : 1;
              const json options = b.value("options", json::object());
              check_deployment(model, options);
              store::DeploymentRow d{name,     model,           options.dump(),
                                     replicas, store::now_ms(), store::now_ms()};
              bool created = false;
              store_->transaction([&] {
                created = store_->create_deployment(d);
                if (created)
                  store_->event("deployment.created", name,
                                model + ", " + std::to_string(replicas) + " replica(s)");
              });
              if (!created) throw HttpError{409, "a deployment named " + name + " exists"};
              wake_scheduler();
              reply(res, deployment_json(d, {}), 201);
            }));
  s.Get("/v1/deployments", route("/v1/deployments", true,
                                 [this, allow, reply](const auto&, auto& res, const Principal& p) {
                                   allow(p, {"admin", "user"});
                                   json list = json::array();
                                   for (const store::DeploymentRow& d : store_->deployments())
                                     list.push_back(deployment_json(d, store_->instances(d.name)));
                                   reply(res, {{"deployments", list}});
                                 }));
  s.Get(R"(/v1/deployments/([a-z0-9-]+))",
        route("/v1/deployments/{name}", true,
              [this, allow, reply](const auto& req, auto& res, const Principal& p) {
                allow(p, {"admin", "user"});
                const std::optional<store::DeploymentRow> d = store_->deployment(req.matches[1]);
                if (!d) throw HttpError{404, "no deployment named " + std::string(req.matches[1])};
                json j = deployment_json(*d, store_->instances(d->name));
                json list = json::array();
                for (const store::InstanceRow& i : store_->instances(d->name))
                  list.push_back(instance_json(i, false));
                j["instance_list"] = list;
                reply(res, j);
              }));
  s.Patch(
      R"(/v1/deployments/([a-z0-9-]+))",
      route("/v1/deployments/{name}", true,
            [this, allow, reply, check_deployment](const auto& req, auto& res, const Principal& p) {
              allow(p, {"admin", "user"});
              const json b = parse_body(req);
              only(b, {"replicas", "options", "model"});
              std::optional<store::DeploymentRow> d = store_->deployment(req.matches[1]);
              if (!d) throw HttpError{404, "no deployment named " + std::string(req.matches[1])};
              const std::int64_t replicas_before = d->replicas;
              if (b.contains("replicas")) d->replicas = integer_in(b, "replicas", 0, 1000);
              // Only a real change of model or options re-plans; the same values change nothing.
              bool replan = false;
              if (b.contains("model")) {
                const std::string model = required_string(b, "model");
                replan = replan || model != d->model;
                d->model = model;
              }
              if (b.contains("options")) {
                if (!b["options"].is_object()) throw HttpError{400, "'options' must be an object"};
                replan = replan || b["options"] != parse_or(d->options_json, json::object());
                d->options_json = b["options"].dump();
              }
              if (!replan && d->replicas == replicas_before) {
                reply(res, deployment_json(*d, store_->instances(d->name)));  // nothing to do
                return;
              }
              if (replan) check_deployment(d->model, parse_or(d->options_json, json::object()));
              d->updated_ms = store::now_ms();
              store_->transaction([&] {
                if (!store_->update_deployment(*d))
                  throw HttpError{404, "no deployment named " + d->name};
                if (replan) {
                  // New options: every instance is planned again.
                  for (const store::InstanceRow& i : store_->instances(d->name))
                    store_->delete_instance(i.id);
                  store_->bump_assignment_version();
                }
                store_->event(
                    "deployment.updated", d->name,
                    "replicas " + std::to_string(d->replicas) + (replan ? ", re-planned" : ""));
              });
              ++routes_generation_;  // instances may be gone: the proxy must see it now
              wake_scheduler();      // it publishes the new assignments
              reply(res, deployment_json(*d, store_->instances(d->name)));
            }));
  s.Delete(R"(/v1/deployments/([a-z0-9-]+))",
           route("/v1/deployments/{name}", true,
                 [this, allow, reply](const auto& req, auto& res, const Principal& p) {
                   allow(p, {"admin", "user"});
                   const std::string name = req.matches[1];
                   bool found = false;
                   store_->transaction([&] {
                     found = store_->delete_deployment(name);
                     if (found) {
                       store_->bump_assignment_version();
                       store_->event("deployment.deleted", name, "deleted with its instances");
                     }
                   });
                   if (!found) throw HttpError{404, "no deployment named " + name};
                   ++routes_generation_;  // the proxy must answer 404 from now on
                   wake_scheduler();      // it publishes the new assignments
                   reply(res, {{"deleted", name}});
                 }));

  // Instances.
  s.Get("/v1/instances",
        route("/v1/instances", true,
              [this, allow, reply](const auto& req, auto& res, const Principal& p) {
                allow(p, {"admin", "user"});
                json list = json::array();
                for (const store::InstanceRow& i :
                     store_->instances(req.get_param_value("deployment"))) {
                  list.push_back(instance_json(i, false));
                }
                reply(res, {{"instances", list}});
              }));
  s.Get(R"(/v1/instances/([a-z0-9-]+))",
        route("/v1/instances/{id}", true,
              [this, allow, reply](const auto& req, auto& res, const Principal& p) {
                allow(p, {"admin", "user"});
                const std::optional<store::InstanceRow> i = store_->instance(req.matches[1]);
                if (!i) throw HttpError{404, "no instance " + std::string(req.matches[1])};
                reply(res, instance_json(*i, true));
              }));
  s.Get(R"(/v1/instances/([a-z0-9-]+)/logs)",
        route("/v1/instances/{id}/logs", true,
              [this, allow, reply](const auto& req, auto& res, const Principal& p) {
                allow(p, {"admin", "user"});
                const std::optional<store::InstanceRow> i = store_->instance(req.matches[1]);
                if (!i) throw HttpError{404, "no instance " + std::string(req.matches[1])};
                reply(res, {{"id", i->id}, {"log", i->log_tail}});
              }));

  // A dry run of the planner on the live fleet.
  s.Post(
      "/v1/plan",
      route("/v1/plan", true, [this, allow, reply](const auto& req, auto& res, const Principal& p) {
        allow(p, {"admin", "user"});
        const json b = parse_body(req);
        only(b, {"model", "options", "replicas"});
        const std::string model = required_string(b, "model");
        plan::Request r = request_from_options(b.value("options", json::object()), model);
        if (b.contains("replicas"))
          r.replicas = static_cast<std::uint32_t>(integer_in(b, "replicas", 1, 1000));
        std::shared_ptr<const estimate::ModelMemory> m;
        try {
          m = scheduler_->model(model);
        } catch (const std::exception& e) {
          throw HttpError{400, std::string("cannot read the model: ") + e.what()};
        }
        const cluster::Cluster fleet = live_cluster(store_->workers(), store_->claims());
        try {
          reply(res, plan::plan_json(plan::make_plan(*m, fleet, r), fleet));
        } catch (const plan::PlanError& e) {
          throw HttpError{400, e.what()};
        }
      }));

  s.Get("/v1/events", route("/v1/events", true,
                            [this, allow, reply](const auto& req, auto& res, const Principal& p) {
                              allow(p, {"admin", "user"});
                              std::int64_t after = 0;
                              std::size_t limit = 200;
                              try {
                                if (req.has_param("after"))
                                  after = std::stoll(req.get_param_value("after"));
                                if (req.has_param("limit"))
                                  limit = static_cast<std::size_t>(
                                      std::clamp(std::stoi(req.get_param_value("limit")), 1, 1000));
                              } catch (const std::exception&) {
                                throw HttpError{400, "after and limit must be integers"};
                              }
                              json list = json::array();
                              for (const store::EventRow& e :
                                   store_->events(after, limit, req.get_param_value("subject")))
                                list.push_back(event_json(e));
                              reply(res, {{"events", list}});
                            }));

  // API keys.
  s.Post(
      "/v1/keys",
      route("/v1/keys", true, [this, allow, reply](const auto& req, auto& res, const Principal& p) {
        allow(p, {"admin"});
        const json b = parse_body(req);
        only(b, {"name", "role"});
        const std::string name = required_string(b, "name");
        const std::string role = b.contains("role") ? required_string(b, "role") : "user";
        if (role != "user" && role != "admin" && role != "join")
          throw HttpError{400, "role must be user, admin or join"};
        const std::string secret = new_secret(role == "join" ? "ggj_" : "ggf_");
        const std::string id = "key-" + store_->next_id("keys");
        store_->put_key({id, name, sha256_hex(secret), role, "", store::now_ms()});
        reply(res, {{"id", id}, {"name", name}, {"role", role}, {"key", secret}}, 201);
      }));
  s.Get("/v1/keys",
        route("/v1/keys", true, [this, allow, reply](const auto&, auto& res, const Principal& p) {
          allow(p, {"admin"});
          json list = json::array();
          for (const store::KeyRow& k : store_->keys()) {
            list.push_back({{"id", k.id},
                            {"name", k.name},
                            {"role", k.role},
                            {"worker", k.worker},
                            {"created_ms", k.created_ms}});
          }
          reply(res, {{"keys", list}});
        }));
  // OpenAI-compatible endpoints, routed by "model" (a deployment name) to a running instance,
  // the one with the fewest requests in flight; streams pass through as they arrive.
  s.Get("/v1/models",
        route("/v1/models", true, [this, allow, reply](const auto&, auto& res, const Principal& p) {
          allow(p, {"admin", "user"});
          json data = json::array();
          for (const store::DeploymentRow& d : store_->deployments()) {
            int ready = 0;
            for (const store::InstanceRow& i : store_->instances(d.name))
              ready += i.state == "running";
            data.push_back({{"id", d.name},
                            {"object", "model"},
                            {"owned_by", "ggfleet"},
                            {"ready_instances", ready}});
          }
          reply(res, {{"object", "list"}, {"data", data}});
        }));
  // The OpenAI endpoints are served by the gateway (gateway.h); it asks here who may use them
  // and where a deployment's instances listen.
  hooks_.authorize = [authenticate, allow](const std::string& header) -> ProxyError {
    try {
      httplib::Request fake;
      fake.set_header("Authorization", header);
      allow(authenticate(fake), {"admin", "user"});
      return {};
    } catch (const HttpError& e) {
      return {e.status, e.message};
    }
  };
  hooks_.route = [this](const std::string& deployment) { return route_of(deployment); };
  hooks_.authorize_cached = [this](const std::string& header) -> std::optional<ProxyError> {
    if (header.rfind("Bearer ", 0) != 0) return std::nullopt;
    const auto cached = cached_principal(sha256_hex(header.substr(7)));
    if (!cached) return std::nullopt;
    if (cached->first != "admin" && cached->first != "user")
      return ProxyError{403, "a " + cached->first + " key may not do this"};
    return ProxyError{};
  };
  hooks_.route_cached = [this](const std::string& deployment) { return cached_route(deployment); };
  hooks_.proxied = [this](const std::string& deployment, int status, std::uint64_t prompt,
                          std::uint64_t completion) {
    metrics_->proxied(deployment, status, prompt, completion);
  };
  hooks_.upstream_failed = [this] { ++routes_generation_; };
  s.Delete(R"(/v1/keys/([A-Za-z0-9-]+))",
           route("/v1/keys/{id}", true,
                 [this, allow, reply](const auto& req, auto& res, const Principal& p) {
                   allow(p, {"admin"});
                   {
                     std::lock_guard<std::mutex> lock(cache_mu_);
                     key_cache_.clear();
                   }
                   if (!store_->delete_key(req.matches[1]))
                     throw HttpError{404, "no key " + std::string(req.matches[1])};
                   reply(res, {{"deleted", std::string(req.matches[1])}});
                 }));
}

}  // namespace ggfleet::server
