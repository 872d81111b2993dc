// The ggfleet server: the HTTP API under /v1 (JSON in and out, API keys), the scheduling loop and
// Prometheus metrics. State lives in the store (SQLite by default, PostgreSQL by URL).
//
// Auth: every route except GET /healthz needs `Authorization: Bearer KEY`. Roles: admin (all,
// including keys), user (deployments, plans, workers, events, metrics), worker (its own
// heartbeat, assignments and record; made at registration), join (registering workers only).
// The first start creates an admin key (--admin-key / GGFLEET_ADMIN_KEY, else generated and
// printed once) and a join token (--join-token / GGFLEET_JOIN_TOKEN, else generated and
// printed); only SHA-256 hashes are stored.
//
// Thread safety: start() once, stop() from any thread; the API is served by a thread pool.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "server/gateway.h"
#include "server/learning.h"
#include "server/measurements.h"
#include "server/scheduler.h"
#include "store/store.h"

namespace httplib {
class Server;
class Client;
struct Request;
struct Response;
}  // namespace httplib

namespace ggfleet::server {

// The lease whose holder runs the scheduling loop.
inline constexpr const char* kSchedulerLease = "scheduler";
// A scheduling pass longer than this is reported in the server's log with what it did.
inline constexpr double kSlowPassS = 2.0;
// A scheduling pass still running after this long (or a loop that has not come back from its
// wait this long after it was due) is taken as stuck: its server stops leading (ServerConfig).
inline constexpr int kStuckPassS = 60;
// The scheduling loop's thread runs at this nice value (the request threads at the process's).
inline constexpr int kSchedulerNice = 10;

// The servers sharing `store` (seen in the last minute) and the leader, if a lease runs:
// {"servers": [{id, url, started_ms, last_seen_ms, leader}], "leader": {id, since_ms, token,
// expires_ms} or null, "now_ms"} (times by the database's clock).
nlohmann::json servers_json(store::Store& store);

struct ServerConfig {
  std::string data_dir = "ggfleet-data";  // holds ggfleet.db unless db is given
  std::string db;                         // "" = <data_dir>/ggfleet.db; or postgres://...
  std::string host = "127.0.0.1";
  int port = 8080;                // 0 = any free port (the public listener: the gateway)
  std::string admin_key;          // "" = from GGFLEET_ADMIN_KEY or generated on first start
  std::string join_token;         // "" = from GGFLEET_JOIN_TOKEN or generated on first start
  std::string tls_cert, tls_key;  // both set: HTTPS
  // Local model paths must lie inside one of these directories (symbolic links resolved); empty:
  // any path (one trusted user). Workers check their own roots (--model-root) as well.
  std::vector<std::string> model_roots;
  // URL models may point at loopback, private and link-local addresses (off: no SSRF).
  bool allow_private_urls = false;
  SchedulerConfig scheduler;
  std::int64_t schedule_interval_ms = 500;
  // Several servers may share one PostgreSQL database: all serve the API, the proxy and the
  // workers; the one holding the scheduler lease (a row with a fencing token, timed by the
  // database's clock) runs the scheduling loop. It renews it every pass; when it dies, another
  // takes over once lease_ms have passed.
  std::int64_t lease_ms = 5000;
  // A scheduling loop stuck this long (kStuckPassS) hands the lead over (--stuck-pass-s).
  int stuck_pass_s = kStuckPassS;
  std::string advertise_url;  // how others reach this server ("" = http(s)://HOST:PORT)
  std::size_t db_pool = 0;    // PostgreSQL connections at most (0 = the store's default)
  // The public front (gateway.h): its host and port are the two above; timeouts, admission.
  GatewayConfig front;
  // Control-plane threads (httplib, behind the gateway on a loopback port): one per request in
  // progress. The gateway relays at most front.api_concurrency user API calls at once and long
  // polls take at most long_poll_slots, so heartbeats always find a thread.
  int threads = 128;
  std::size_t max_body_bytes = 1 << 20;
  int max_wait_s = 30;  // longest long-poll
  // Long polls that may wait at once (each holds a thread); -1 = half the threads. A poll beyond
  // them is answered at once with "retry_after_ms", so that heartbeats and API calls always find
  // a free thread however many workers there are.
  int long_poll_slots = -1;
  int long_poll_retry_ms = 2000;
};

class Metrics;
struct Principal;

class Server {
 public:
  explicit Server(ServerConfig config);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Opens the store, bootstraps keys, binds and starts serving and scheduling. Returns the port.
  // Throws std::runtime_error if it cannot bind or open the store.
  int start();
  void stop();  // idempotent
  void wait();  // until stop()

  // Set by start() when it generated them (print once).
  const std::string& generated_admin_key() const { return generated_admin_key_; }
  const std::string& generated_join_token() const { return generated_join_token_; }
  store::Store& store() { return *store_; }
  // The workers' own listener (register, heartbeats, polls); -1 if none. After start().
  int worker_port() const { return gateway_ ? gateway_->worker_port() : -1; }
  void wake_scheduler();

 private:
  // The control plane's routes: routes() sets up errors, health and metrics and calls one
  // function per resource (routes_<resource>.cc).
  void routes();
  void worker_routes();
  void deployment_routes();
  void instance_routes();
  void key_routes();
  void web_routes();      // the dashboard's page and assets (web/, compiled in)
  void cluster_routes();  // the servers sharing the store, and which one leads
  using Handler =
      std::function<void(const httplib::Request&, httplib::Response&, const Principal&)>;
  // Wraps a handler: authentication (when `auth`), JSON errors, metrics under `name`.
  std::function<void(const httplib::Request&, httplib::Response&)> handle(const std::string& name,
                                                                          bool auth, Handler h);
  // The caller of an Authorization header; throws HttpError 401 (cached a minute when valid).
  Principal authenticate(const std::string& header);
  // 400 unless the options make a planner request and the model file can be read.
  // 400/403 unless `model` and `options` make a deployment `p` may create: options valid, raw
  // llama-server arguments allowed for its role, the model readable (inside the model roots).
  void check_deployment(const std::string& model, const nlohmann::json& options,
                        const Principal& p);
  // The model's header as the planner reads it; 400 if it cannot be read, 403 outside the roots.
  std::shared_ptr<const estimate::ModelMemory> checked_model(const std::string& model);
  void schedule_loop();
  // An instance as the API shows it: instance_json with its prediction and measurements.
  nlohmann::json instance_view(const store::InstanceRow& i, bool with_assignment);
  // Prometheus gauges of predicted and measured speed per instance.
  std::string render_speeds();
  // Reads every worker's assignments from the store into assignments_, marks the workers whose
  // own list changed, wakes the long polls and makes the proxy read its routes again.
  // Publishes the board again if the store's assignment version moved since the last time
  // (one publisher at a time: the scheduling loop and the notification listener both call it).
  void publish_if_changed();
  void publish_assignments();
  // PostgreSQL: wakes on the notification every committed bump of the assignment version sends
  // (from whichever server leads) and publishes at once, so that long polls on every server see
  // the leader's placements without waiting for their own pass.
  void listen_loop();
  std::thread listen_thread_;
  std::mutex publish_mu_;  // held by publish_if_changed
  // When this server last wrote each worker's liveness (its heartbeat time, the worker not
  // unreachable), by the store's clock: a heartbeat that says only "alive" within a third of the
  // heartbeat timeout of that is answered from memory (the gateway's quiet_heartbeat hook).
  // Such heartbeats are written in batches (flush_liveness, by liveness_loop's thread several
  // times per heartbeat timeout: not by the scheduling loop, whose passes may be long).
  std::mutex live_mu_;
  std::map<std::string, std::int64_t> live_written_ms_;  // guarded by live_mu_
  std::map<std::string, std::int64_t> live_pending_ms_;  // heard, not yet written; live_mu_
  void wrote_liveness(const std::string& worker, std::int64_t at_ms);  // -1: forget it
  // If `worker`'s liveness was written recently, notes a heartbeat heard now and returns true.
  bool heard_alive(const std::string& worker);
  void flush_liveness();
  void liveness_loop();
  std::thread liveness_thread_;
  void bootstrap_keys();
  void forget_key(const std::string& id);  // deletes it and empties the key cache
  // Where a deployment's instances listen (cached until an instance changes; thread-safe).
  ProxyRoute route_of(const std::string& deployment);
  std::optional<ProxyRoute> cached_route(const std::string& deployment);  // never blocks
  // The cached principal of an Authorization header "Bearer KEY" (nullopt: not cached).
  std::optional<Principal> cached_bearer(const std::string& header);
  // Who holds a key hash seen in the last minute; never blocks.
  std::optional<Principal> cached_principal(const std::string& hash);
  // Notes that `hash` is `p`'s key (checked, or just made) at `when`.
  void remember_principal(const std::string& hash, const Principal& p,
                          std::chrono::steady_clock::time_point when);

  ServerConfig config_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<httplib::Server> http_;  // the control plane
  GatewayHooks hooks_;                     // set by routes()
  std::unique_ptr<Gateway> gateway_;       // the public front and the data plane
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<Measurements> measurements_;
  std::unique_ptr<Learner> learner_;
  std::thread http_thread_, schedule_thread_;
  std::mutex mu_;
  std::condition_variable wake_cv_, assign_cv_;
  struct Assignments {  // as last published (long polls wait on it, not on the store)
    std::int64_t version = -1;
    std::map<std::string, nlohmann::json> by_worker;  // worker -> its assignment list
    std::map<std::string, std::int64_t> changed_at;   // worker -> version its list last changed
    // Cache files an admin asked each worker to remove (in the store until handed over): a
    // worker listed here gets its next heartbeat answered by the store's path, which hands them.
    std::map<std::string, std::set<std::string>> removals;
    std::int64_t keys_version = 0;  // moves when any server deletes an API key
    // Whether `worker`'s list changed after version `since`.
    bool news_for(const std::string& worker, std::int64_t since) const {
      const auto it = changed_at.find(worker);
      return it != changed_at.end() && it->second > since;
    }
  };
  std::shared_ptr<const Assignments> assignments_;  // guarded by mu_
  int long_polls_ = 0;                              // waiting now; guarded by mu_
  bool wake_ = false;
  std::atomic<bool> stopping_{false};
  std::string generated_admin_key_, generated_join_token_;
  // Leadership: this server's id in the servers table and the lease it holds, kept by a thread
  // of its own on a connection of its own (lease_store_), so that neither a long scheduling pass
  // nor a pool busy with client load lets it lapse.
  std::string server_id_, advertise_url_;
  std::int64_t started_ms_ = 0;
  std::unique_ptr<store::Store> lease_store_;
  std::optional<store::Lease> lease_;  // guarded by mu_
  std::thread lease_thread_;
  bool store_unreachable_ = false;  // the last lease renewal failed (only the lease thread)
  // What the scheduling loop does now, and when it was due there (steady clock, ms; 0: not
  // started): a pass's start, or the end of its wait between passes. A loop that stays
  // config_.stuck_pass_s past that (a store call that never returns, a thread that never wakes)
  // makes the lease thread say where it is and hand the lead over instead of renewing a lease
  // nobody schedules under; it leads again (if free) once the loop moves on.
  std::atomic<const char*> pass_phase_{"starting"};
  std::atomic<std::int64_t> loop_due_ms_{0};
  bool stepped_down_ = false;         // only the lease thread
  bool pass_stuck();                  // only the lease thread
  std::condition_variable lease_cv_;  // with mu_: wakes the lease thread to stop
  void lease_loop();
  // Takes or renews the scheduler lease; says so when this server starts or stops leading.
  void lead();
  std::optional<store::Lease> current_lease();
  // The assignment version of the board as last published (the store's when none was yet).
  std::int64_t published_version();
  std::mutex cache_mu_;
  std::map<std::string, std::pair<std::chrono::steady_clock::time_point, Principal>>
      key_cache_;  // key hash -> (when, who)
  struct Route {   // where a deployment's instances listen, as of `generation`
    std::chrono::steady_clock::time_point when;
    std::uint64_t generation = 0;
    ProxyRoute route;
  };
  std::map<std::string, Route> route_cache_;
  // Bumped whenever this server sees an instance change state or placement (heartbeats, the
  // scheduler, deployment updates): cached routes older than it are read again.
  std::atomic<std::uint64_t> routes_generation_{0};
};

}  // namespace ggfleet::server
