#include "server/server.h"

#include <httplib.h>
#include <pthread.h>
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

#include "gguf/remote.h"
#include "plan/report.h"
#include "server/api_util.h"
#include "server/assignments.h"
#include "server/auth.h"
#include "server/metrics.h"

namespace ggfleet::server {

using nlohmann::json;

namespace {

std::int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Thousands of client streams, each with an upstream socket, need more than the usual 1,024
// descriptors: take the hard limit.
void raise_open_files_limit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
  }
}

std::string env_or(const std::string& given, const char* var) {
  if (!given.empty()) return given;
  const char* v = std::getenv(var);
  return v ? v : "";
}

}  // namespace

Server::Server(ServerConfig config)
    : config_(std::move(config)),
      metrics_(std::make_unique<Metrics>()),
      measurements_(std::make_unique<Measurements>()),
      learner_(std::make_unique<Learner>()) {}

Server::~Server() {
  stop();
}

void Server::bootstrap_keys() {
  const std::vector<store::KeyRow> keys = store_->keys();
  auto has_role = [&](KeyRole role) {
    return std::any_of(keys.begin(), keys.end(),
                       [&](const store::KeyRow& k) { return key_role(k.role) == role; });
  };
  const std::string admin = env_or(config_.admin_key, "GGFLEET_ADMIN_KEY");
  if (!admin.empty()) {
    const std::string hash = sha256_hex(admin);
    if (!store_->key_by_hash(hash))
      store_->put_key({"admin-" + hash.substr(0, 12), "admin", hash, "admin", "", store::now_ms()});
  } else if (!has_role(KeyRole::kAdmin)) {
    generated_admin_key_ = new_secret();
    store_->put_key(
        {"admin", "admin", sha256_hex(generated_admin_key_), "admin", "", store::now_ms()});
  }
  const std::string join = env_or(config_.join_token, "GGFLEET_JOIN_TOKEN");
  if (!join.empty()) {
    const std::string hash = sha256_hex(join);
    if (!store_->key_by_hash(hash))
      store_->put_key({"join-" + hash.substr(0, 12), "join", hash, "join", "", store::now_ms()});
  } else if (!has_role(KeyRole::kJoin)) {
    generated_join_token_ = new_secret("ggj_");
    store_->put_key(
        {"join", "join", sha256_hex(generated_join_token_), "join", "", store::now_ms()});
  }
}

int Server::start() {
  std::filesystem::create_directories(config_.data_dir);
  store_ = std::make_unique<store::Store>(
      config_.db.empty() ? config_.data_dir + "/ggfleet.db" : config_.db, config_.db_pool);
  server_id_ = "server-" + new_secret("").substr(0, 12);
  started_ms_ = store_->clock_ms();
  scheduler_ = std::make_unique<Scheduler>(*store_, config_.scheduler);
  gguf::RemotePolicy remote = gguf::remote_policy();
  remote.allow_private_addresses = config_.allow_private_urls;
  gguf::set_remote_policy(remote);
  bootstrap_keys();
  if (config_.tls_cert.empty() != config_.tls_key.empty())
    throw std::runtime_error("TLS needs both --tls-cert and --tls-key");
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
  front.tls_cert = config_.tls_cert;
  front.tls_key = config_.tls_key;
  front.max_body_bytes = config_.max_body_bytes;
  front.control_timeout_s = std::max(front.control_timeout_s, config_.max_wait_s + 30);
  front.control_idle_max = std::max(1, threads / 8);
  raise_open_files_limit();
  gateway_ = std::make_unique<Gateway>(front, hooks_);
  int port = -1;
  try {
    port = gateway_->start();
  } catch (const std::exception&) {
    http_->stop();
    throw;
  }
  advertise_url_ = !config_.advertise_url.empty()
                       ? config_.advertise_url
                       : std::string(config_.tls_cert.empty() ? "http://" : "https://") +
                             config_.host + ":" + std::to_string(port);
  lease_store_ = std::make_unique<store::Store>(
      config_.db.empty() ? config_.data_dir + "/ggfleet.db" : config_.db, 1);
  lease_store_->server_seen(server_id_, advertise_url_, started_ms_);
  lead();  // the first pass of the loop already knows whether this server leads
  http_thread_ = std::thread([this] { http_->listen_after_bind(); });
  lease_thread_ = std::thread([this] { lease_loop(); });
  schedule_thread_ = std::thread([this] { schedule_loop(); });
  listen_thread_ = std::thread([this] { listen_loop(); });
  liveness_thread_ = std::thread([this] { liveness_loop(); });
  // Named, so that a stack dump or `top -H` of a stuck server says which loop is which.
  pthread_setname_np(lease_thread_.native_handle(), "ggfleet-lease");
  pthread_setname_np(schedule_thread_.native_handle(), "ggfleet-sched");
  pthread_setname_np(listen_thread_.native_handle(), "ggfleet-listen");
  pthread_setname_np(liveness_thread_.native_handle(), "ggfleet-alive");
  return port;
}

void Server::stop() {
  if (stopping_.exchange(true)) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_ = true;
  }
  wake_cv_.notify_all();
  lease_cv_.notify_all();
  assign_cv_.notify_all();
  if (gateway_) gateway_->stop();
  if (http_) http_->stop();
  if (http_thread_.joinable()) http_thread_.join();
  if (schedule_thread_.joinable()) schedule_thread_.join();
  if (lease_thread_.joinable()) lease_thread_.join();
  if (listen_thread_.joinable()) listen_thread_.join();
  if (liveness_thread_.joinable()) liveness_thread_.join();
  // A clean stop hands the lead over at once (a killed server's lease expires instead).
  try {
    if (const std::optional<store::Lease> held = current_lease())
      lease_store_->release_lease(*held);
    if (lease_store_) lease_store_->remove_server(server_id_);
  } catch (const std::exception&) {
  }
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

std::int64_t Server::published_version() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (assignments_) return assignments_->version;
  }
  return store_->assignment_version();
}

std::optional<store::Lease> Server::current_lease() {
  std::lock_guard<std::mutex> lock(mu_);
  return lease_;
}

void Server::lease_loop() {
  // Renewed five times per lease: a few slow renewals in a row still keep it.
  const auto period = std::chrono::milliseconds(std::max<std::int64_t>(100, config_.lease_ms / 5));
  auto seen = std::chrono::steady_clock::now();
  while (!stopping_) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      lease_cv_.wait_for(lock, period, [this] { return stopping_.load(); });
    }
    if (stopping_) break;
    if (!pass_stuck()) lead();
    if (std::chrono::steady_clock::now() - seen > std::chrono::seconds(2)) {
      try {
        lease_store_->server_seen(server_id_, advertise_url_, started_ms_);
      } catch (const std::exception&) {
      }
      seen = std::chrono::steady_clock::now();
    }
  }
}

bool Server::pass_stuck() {
  const std::int64_t due = loop_due_ms_.load();
  const std::int64_t now = steady_ms();
  const bool stuck = due != 0 && now - due > std::int64_t{config_.stuck_pass_s} * 1000;
  if (stuck && !stepped_down_) {
    stepped_down_ = true;
    std::optional<store::Lease> held;
    {
      std::lock_guard<std::mutex> lock(mu_);
      held.swap(lease_);  // the stuck pass's later writes are refused (fencing)
    }
    std::cerr << "ggfleet server: the scheduling loop has been in " << pass_phase_.load() << " for "
              << (now - due) / 1000 << " s; "
              << (held ? "handing the lead over" : "not taking the lead") << " until it moves on"
              << std::endl;
    try {
      if (held) lease_store_->release_lease(*held);
    } catch (const std::exception&) {
      // (the lease runs out on its own)
    }
  } else if (!stuck && stepped_down_) {
    stepped_down_ = false;
    std::cerr << "ggfleet server: the stuck scheduling loop moved on" << std::endl;
  }
  return stuck;
}

void Server::lead() {
  std::optional<store::Lease> now;
  try {
    now = lease_store_->acquire_lease(kSchedulerLease, server_id_, config_.lease_ms);
    if (store_unreachable_) {
      std::cerr << "ggfleet server: the store answers again" << std::endl;
      store_unreachable_ = false;
    }
  } catch (const std::exception& e) {
    // Said once per outage, not at every renewal (five times per lease).
    if (!store_unreachable_)
      std::cerr << "ggfleet server: cannot reach the store for the scheduler lease (said once "
                   "until it answers again): "
                << e.what() << std::endl;
    store_unreachable_ = true;
  }
  const std::optional<store::Lease> before = current_lease();
  if (now && (!before || before->token != now->token)) {
    std::cerr << "ggfleet server: " << server_id_ << " leads the scheduling loop (lease token "
              << now->token << ")" << std::endl;
    try {
      lease_store_->event(
          "server.leader", server_id_,
          advertise_url_ + " leads the scheduling loop (token " + std::to_string(now->token) + ")");
    } catch (...) {
    }
  } else if (!now && before) {
    std::cerr << "ggfleet server: " << server_id_
              << " no longer leads the scheduling loop (lease lost)" << std::endl;
  }
  std::lock_guard<std::mutex> lock(mu_);
  lease_ = now;
}

void Server::schedule_loop() {
  // Planning is background work: on a busy machine the request paths (heartbeats, the API, the
  // proxy) get the cores first. (Linux: a thread's nice value is its own.)
  if (::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), kSchedulerNice) != 0)
    std::cerr << "ggfleet server: cannot lower the scheduling loop's priority: "
              << std::strerror(errno) << std::endl;
  while (!stopping_) {
    const auto t0 = std::chrono::steady_clock::now();
    pass_phase_ = "reconcile";
    loop_due_ms_ = steady_ms();
    ReconcileStats stats;
    const std::optional<store::Lease> lease = current_lease();
    const bool leader = lease.has_value();
    scheduler_->set_lease(lease);
    try {
      if (leader) stats = scheduler_->reconcile();
    } catch (const store::LeaseLost& e) {
      std::cerr << "ggfleet server: a scheduling write was refused: " << e.what() << std::endl;
    } catch (const std::exception& e) {
      std::cerr << "ggfleet server: scheduling pass failed: " << e.what() << std::endl;
      try {
        store_->event("scheduler.error", "scheduler", e.what());
      } catch (...) {
      }
    }
    const auto t2 = std::chrono::steady_clock::now();
    pass_phase_ = "measurements";
    try {
      measurements_->flush(*store_);
      // What the measurements teach: factors for the next placements, and the suggestions
      // they make for the running ones (the leader learns for all).
      if (leader && learner_->update(*store_, *measurements_)) {
        scheduler_->set_corrections(learner_->corrections());
        scheduler_->suggest_replans();
      }
    } catch (const std::exception& e) {
      std::cerr << "ggfleet server: writing measurements failed: " << e.what() << std::endl;
    }
    const auto t3 = std::chrono::steady_clock::now();
    const auto seconds = [](auto from, auto to) {
      return std::chrono::duration<double>(to - from).count();
    };
    const double pass_s = seconds(t0, t3);
    metrics_->scheduling(pass_s, stats.placed, stats.planning_s);
    if (pass_s > kSlowPassS) {
      // A pass this long delays every placement behind it: say what it spent its time on.
      char line[320];
      std::snprintf(line, sizeof line,
                    "ggfleet server: a %s pass took %.1f s: reconcile %.1f s (%.1f s planning; %d "
                    "placed, %d pending, %d planned from memory, %d created, %d removed, %d "
                    "deleted meanwhile), measurements %.1f s",
                    leader ? "scheduling" : "follower's", pass_s, seconds(t0, t2), stats.planning_s,
                    stats.placed, stats.pending, stats.remembered, stats.created, stats.removed,
                    stats.vanished, seconds(t2, t3));
      std::cerr << line << std::endl;
    }
    pass_phase_ = "publishing assignments";
    try {
      publish_if_changed();  // (a failure is retried next pass)
    } catch (const std::exception& e) {
      std::cerr << "ggfleet server: publishing assignments failed (retried next pass): " << e.what()
                << std::endl;
    }
    pass_phase_ = "waiting";
    loop_due_ms_ = steady_ms() + config_.schedule_interval_ms;
    std::unique_lock<std::mutex> lock(mu_);
    wake_cv_.wait_for(lock, std::chrono::milliseconds(config_.schedule_interval_ms),
                      [this] { return wake_; });
    wake_ = false;
  }
}

void Server::liveness_loop() {
  // Often enough that a worker heard from memory is written well within the third of the
  // heartbeat timeout after which its heartbeats take the full (store-writing) way again.
  const auto period = std::chrono::milliseconds(
      std::clamp<std::int64_t>(config_.scheduler.heartbeat_timeout_ms / 10, 50, 1000));
  while (!stopping_) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      lease_cv_.wait_for(lock, period, [this] { return stopping_.load(); });
    }
    if (stopping_) break;
    try {
      flush_liveness();
    } catch (const std::exception& e) {
      std::cerr << "ggfleet server: writing heartbeats failed: " << e.what() << std::endl;
    }
  }
}

void Server::wrote_liveness(const std::string& worker, std::int64_t at_ms) {
  std::lock_guard<std::mutex> lock(live_mu_);
  if (at_ms < 0) {
    live_written_ms_.erase(worker);
  } else {
    live_written_ms_[worker] = at_ms;
  }
}

bool Server::heard_alive(const std::string& worker) {
  std::lock_guard<std::mutex> lock(live_mu_);
  const auto it = live_written_ms_.find(worker);
  const std::int64_t now = store::now_ms();
  if (it == live_written_ms_.end() ||
      now - it->second >= config_.scheduler.heartbeat_timeout_ms / 3)
    return false;
  live_pending_ms_[worker] = now;
  return true;
}

void Server::flush_liveness() {
  std::map<std::string, std::int64_t> pending;
  {
    std::lock_guard<std::mutex> lock(live_mu_);
    pending.swap(live_pending_ms_);
  }
  if (pending.empty()) return;
  // (On a failure the heartbeats are dropped: their workers' entries age, and their next
  // heartbeats take the full path, which answers 5xx while the store is away.)
  const std::vector<std::string> list = store_->touch_workers(pending);
  const std::set<std::string> written(list.begin(), list.end());
  std::lock_guard<std::mutex> lock(live_mu_);
  for (const auto& [name, ms] : pending) {
    if (written.count(name)) {
      live_written_ms_[name] = ms;
    } else {
      live_written_ms_.erase(name);  // unreachable meanwhile, or removed: the full way next time
    }
  }
}

void Server::publish_if_changed() {
  std::lock_guard<std::mutex> publishing(publish_mu_);
  const std::int64_t version = store_->assignment_version();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (assignments_ && assignments_->version == version) return;
  }
  publish_assignments();
}

void Server::listen_loop() {
  std::unique_ptr<store::Db> listener;
  auto pause = [this](std::chrono::milliseconds how_long) {
    std::unique_lock<std::mutex> lock(mu_);
    lease_cv_.wait_for(lock, how_long, [this] { return stopping_.load(); });
  };
  while (!stopping_) {
    try {
      if (!listener) {
        listener = store_->listen_assignments();
        if (!listener) return;  // SQLite: this server is the only one
        publish_if_changed();   // what was published while nobody listened
      }
      if (listener->await_notification(500)) publish_if_changed();
    } catch (const std::exception&) {
      // The database is away: the scheduling loop's passes still publish; try again in a second.
      listener.reset();
      pause(std::chrono::seconds(1));
    }
  }
}

void Server::publish_assignments() {
  auto next = std::make_shared<Assignments>();
  store_->snapshot([&] {  // one consistent reading of the version, instances and claims
    next->version = store_->assignment_version();
    next->by_worker = assignments_by_worker(store_->instances(), store_->claims());
    next->removals = store_->model_removals();
    next->keys_version = store_->keys_version();
  });
  bool keys_deleted = false;
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
    // (Also on the first board: keys remembered before it may have been deleted since.)
    keys_deleted = !assignments_ || assignments_->keys_version != next->keys_version;
    assignments_ = std::move(next);
  }
  if (keys_deleted) {  // (by another server: this one forgot them when it deleted one)
    std::lock_guard<std::mutex> lock(cache_mu_);
    key_cache_.clear();
  }
  ++routes_generation_;  // instances moved: the proxy reads where they listen again
  assign_cv_.notify_all();
  if (gateway_) gateway_->board_changed();
}

std::optional<Principal> Server::cached_bearer(const std::string& header) {
  if (header.rfind("Bearer ", 0) != 0) return std::nullopt;
  return cached_principal(sha256_hex(header.substr(7)));
}

std::optional<Principal> Server::cached_principal(const std::string& hash) {
  // Valid keys are remembered for a minute (the proxy's hot path must not read the store);
  // deleting a key through this server forgets them all at once, through another server sharing
  // the database as soon as this one publishes the board that says so (PostgreSQL's NOTIFY).
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
      ProxyTarget t{i.id, "", 0, i.state, i.reason, 1, ""};
      if (i.state == InstanceState::kRunning) {
        if (const std::optional<store::WorkerRow> w = store_->worker(i.main_worker))
          t.host = w->address;
        const json a = parse_or(i.assignment_json, json::object());
        t.port = a.value("listen_port", a.value("server_port", 0));
        t.slots = std::max(1, a.value("slots", 1));
        t.key = a.value("instance_key", "");
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

Principal Server::authenticate(const std::string& header) {
  if (header.empty()) throw HttpError{401, "an API key is required (Authorization: Bearer KEY)"};
  if (header.rfind("Bearer ", 0) != 0)
    throw HttpError{401, "the Authorization header must be 'Bearer KEY'"};
  const std::string hash = sha256_hex(header.substr(7));
  const auto now = std::chrono::steady_clock::now();
  if (const std::optional<Principal> cached = cached_principal(hash)) return *cached;
  const std::optional<store::KeyRow> key = store_->key_by_hash(hash);
  if (!key) throw HttpError{401, "invalid API key"};
  const Principal p{key_role(key->role), key->worker, key->id};
  remember_principal(hash, p, now);
  return p;
}

void Server::remember_principal(const std::string& hash, const Principal& p,
                                std::chrono::steady_clock::time_point when) {
  std::lock_guard<std::mutex> lock(cache_mu_);
  if (key_cache_.size() > 10000) key_cache_.clear();
  key_cache_[hash] = {when, p};
}

std::function<void(const httplib::Request&, httplib::Response&)> Server::handle(
    const std::string& name, bool auth, Handler h) {
  // The OpenAI routes answer errors in OpenAI's shape; the rest as {"error": "text"}.
  const bool openai = name.rfind("/v1/models", 0) == 0;
  return [this, name, auth, h, openai](const httplib::Request& req, httplib::Response& res) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto fail = [&](int status, const std::string& message) {
      res.status = status;
      res.set_content(dump(openai ? openai_error(status, message) : json{{"error", message}}),
                      "application/json");
    };
    try {
      const Principal p = auth ? authenticate(req.get_header_value("Authorization")) : Principal{};
      h(req, res, p);
    } catch (const HttpError& e) {
      fail(e.status, e.message);
    } catch (const std::invalid_argument& e) {
      fail(400, e.what());
    } catch (const store::StoreError& e) {
      fail(503, std::string("store unavailable: ") + e.what());
    } catch (const std::exception& e) {
      fail(500, e.what());
    }
    metrics_->request(name, req.method, res.status,
                      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  };
}

void Server::check_deployment(const std::string& model, const json& options, const Principal& p) {
  const plan::Request r = plan::request_from_options(options, model);
  const bool admin = p.role == KeyRole::kAdmin;
  try {
    plan::check_extra_args(r.extra_args, admin);
  } catch (const std::invalid_argument& e) {
    throw HttpError{admin ? 400 : 403, e.what()};
  }
  checked_model(model);
}

std::shared_ptr<const estimate::ModelMemory> Server::checked_model(const std::string& model) {
  if (model.empty() || model.size() > 4096)
    throw HttpError{400,
                    "'model' must be a path, an http(s) URL or hf://OWNER/REPO/PATH of at most "
                    "4096 bytes"};
  model::Source source;
  try {
    source = model::parse_source(model);
  } catch (const std::invalid_argument& e) {
    throw HttpError{400, std::string("'model': ") + e.what()};
  }
  if (source.kind == model::SourceKind::kLocal) {
    if (!gguf::inside_roots(model, config_.model_roots))
      throw HttpError{403, "model path " + model + " is outside the model roots (--model-root)"};
  }
  try {
    return scheduler_->model(model);
  } catch (const std::exception& e) {
    throw HttpError{400, std::string("cannot read the model: ") + e.what()};
  }
}

void Server::routes() {
  httplib::Server& s = *http_;
  // Every response body is JSON; errors are {"error": "..."}.
  s.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (res.body.empty()) {
      const std::string text = res.status == 413   ? "the body is too large"
                               : res.status == 404 ? "no such route"
                                                   : "HTTP status " + std::to_string(res.status);
      res.set_content(dump(json{{"error", text}}), "application/json");
    }
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    res.status = 500;
    res.set_content(dump(json{{"error", "internal error"}}), "application/json");
  });
  s.Get("/healthz", handle("/healthz", false, [this](const auto&, auto& res, const auto&) {
          reply(res, {{"status", "ok"}, {"store", store_->backend()}});
        }));
  s.Get("/metrics", handle("/metrics", true, [this](const auto&, auto& res, const Principal& p) {
          allow(p, {KeyRole::kAdmin, KeyRole::kUser});
          std::string text = metrics_->render(*store_);
          if (gateway_) text += render_gateway(gateway_->stats());
          text += render_speeds();
          res.set_content(text, "text/plain; version=0.0.4");
        }));
  worker_routes();
  deployment_routes();
  instance_routes();
  key_routes();
  web_routes();
  cluster_routes();
  // OpenAI-compatible endpoints, routed by "model" (a deployment name) to a running instance,
  // the one with the fewest requests in flight; streams pass through as they arrive.
  const auto model_json = [this](const store::DeploymentRow& d) {
    int ready = 0;
    for (const store::InstanceRow& i : store_->instances(d.name))
      ready += i.state == InstanceState::kRunning;
    return json{{"id", d.name},
                {"object", "model"},
                {"created", d.created_ms / 1000},
                {"owned_by", "ggfleet"},
                {"ready_instances", ready}};
  };
  s.Get("/v1/models",
        handle("/v1/models", true, [this, model_json](const auto&, auto& res, const Principal& p) {
          allow(p, {KeyRole::kAdmin, KeyRole::kUser});
          json data = json::array();
          for (const store::DeploymentRow& d : store_->deployments()) data.push_back(model_json(d));
          reply(res, {{"object", "list"}, {"data", data}});
        }));
  s.Get(R"(/v1/models/([^/]+))",
        handle("/v1/models/{id}", true,
               [this, model_json](const auto& req, auto& res, const Principal& p) {
                 allow(p, {KeyRole::kAdmin, KeyRole::kUser});
                 const std::string id = req.matches[1];
                 const std::optional<store::DeploymentRow> d = store_->deployment(id);
                 if (!d)
                   throw HttpError{404, "The model '" + valid_utf8(id, 256) + "' does not exist"};
                 reply(res, model_json(*d));
               }));
  // The OpenAI endpoints are served by the gateway (gateway.h); it asks here who may use them
  // and where a deployment's instances listen.
  hooks_.authorize = [this](const std::string& header) -> ProxyError {
    try {
      const Principal p = authenticate(header);
      allow(p, {KeyRole::kAdmin, KeyRole::kUser});
      return {0, "", p.key_id};
    } catch (const HttpError& e) {
      return {e.status, e.message, ""};
    }
  };
  hooks_.route = [this](const std::string& deployment) { return route_of(deployment); };
  hooks_.authorize_cached = [this](const std::string& header) -> std::optional<ProxyError> {
    const std::optional<Principal> cached = cached_bearer(header);
    if (!cached) return std::nullopt;
    try {
      allow(*cached, {KeyRole::kAdmin, KeyRole::kUser});
    } catch (const HttpError& e) {
      return ProxyError{e.status, e.message, ""};
    }
    return ProxyError{0, "", cached->key_id};
  };
  hooks_.route_cached = [this](const std::string& deployment) { return cached_route(deployment); };
  hooks_.quiet_heartbeat = [this](const std::string& header,
                                  const std::string& worker) -> std::optional<std::string> {
    const std::optional<Principal> p = cached_bearer(header);
    if (!p || p->role != KeyRole::kWorker || p->worker != worker) return std::nullopt;
    if (!heard_alive(worker)) return std::nullopt;
    std::lock_guard<std::mutex> lock(mu_);
    if (!assignments_ || assignments_->removals.count(worker)) return std::nullopt;
    return dump(json{{"assignment_version", assignments_->version}});
  };
  hooks_.board_poll = [this](const std::string& header, const std::string& worker,
                             std::int64_t since, bool now) -> std::optional<std::string> {
    const std::optional<Principal> p = cached_bearer(header);
    const bool to_worker = p && p->role == KeyRole::kWorker && p->worker == worker;
    if (!p || !(to_worker || p->role == KeyRole::kAdmin)) return std::nullopt;
    std::shared_ptr<const Assignments> board;
    {
      std::lock_guard<std::mutex> lock(mu_);
      board = assignments_;
    }
    if (!board || board->version < since) return std::nullopt;
    if (!now && !board->news_for(worker, since)) return std::string();
    const auto it = board->by_worker.find(worker);
    return dump(poll_answer(board->version,
                            it == board->by_worker.end() ? json::array() : it->second, to_worker));
  };
  hooks_.proxied = [this](const std::string& deployment, const std::string& key_id, int status,
                          std::uint64_t prompt, std::uint64_t completion) {
    metrics_->proxied(deployment, key_id, status, prompt, completion);
  };
  hooks_.upstream_failed = [this] { ++routes_generation_; };
  hooks_.measured = [this](const std::string& instance, const Timings& t) {
    measurements_->record(instance, t);
  };
}

}  // namespace ggfleet::server
