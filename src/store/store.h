// ggfleet's state: workers, deployments, instances with their claims on memory, API keys and
// events, in SQLite or PostgreSQL (see db.h). Every state change is one transaction; the schema
// is versioned and migrated at open.
//
// Thread safety: all methods may be called from any thread. Each call (or each transaction, with
// every call made inside it on the same thread) borrows one connection from a bounded pool:
// PostgreSQL lends up to `pool_size` at once, so readers do not wait for writers and a slow query
// holds one connection, not the server; SQLite has one (single-server). A connection found broken
// is dropped when it is returned and a new one opened by the next borrower, outside every lock.
// transaction() runs a function atomically (commit on return, rollback on throw).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cluster/states.h"
#include "store/db.h"

namespace ggfleet::store {

std::int64_t now_ms();

struct WorkerRow {
  std::string name;
  std::string address;
  std::string labels_json = "{}";
  WorkerStatus status = WorkerStatus::kReady;
  std::string resources_json = "{}";  // cpu, ram, gpus[] (name, vram, used, bandwidth), simulated
  std::int64_t last_heartbeat_ms = 0;
  std::int64_t registered_ms = 0;
};

struct DeploymentRow {
  std::string name;
  std::string model;
  std::string options_json = "{}";  // the planner request (context, policy, selector, ...)
  std::int64_t replicas = 1;
  std::int64_t created_ms = 0;
  std::int64_t updated_ms = 0;
  std::int64_t generation = 1;  // bumped when model or options change (instances roll)
};

struct ClaimRow {
  std::string instance;
  std::string worker;
  std::int64_t gpu = -1;  // -1: RAM of the worker
  std::int64_t bytes = 0;
  bool rpc = false;  // the GPU is lent over RPC: nothing else may use it
};

struct InstanceRow {
  std::string id;
  std::string deployment;
  InstanceState state = InstanceState::kPending;
  std::string main_worker;
  std::string assignment_json = "{}";  // layout, prediction, commands, ports
  std::string reason;                  // why pending, or the last error
  std::string log_tail;
  std::int64_t restarts = 0;
  double predicted_tokens_per_s = 0;
  std::int64_t created_ms = 0;
  std::int64_t updated_ms = 0;
  std::int64_t generation = 1;  // the deployment generation it was made for
};

struct KeyRow {
  std::string id;
  std::string name;
  std::string hash;    // SHA-256 of the secret, hex
  std::string role;    // admin | user | worker | join
  std::string worker;  // for role worker: the only worker it speaks for
  std::int64_t created_ms = 0;
};

// A named lease (the scheduling loop's leadership): who holds it, its fencing token (raised on
// every change of holder), since when and until when, in the database's clock.
struct Lease {
  std::string name;
  std::string holder;
  std::int64_t token = 0;
  std::int64_t since_ms = 0;
  std::int64_t expires_ms = 0;
};

// Thrown by check_lease() when the lease is no longer held: the write it guards is rolled back.
class LeaseLost : public StoreError {
 public:
  using StoreError::StoreError;
};

// A server sharing the database: its id, the URL it advertises, when it started and when it was
// last seen (both by the database's clock).
struct ServerRow {
  std::string id;
  std::string url;
  std::int64_t started_ms = 0;
  std::int64_t last_seen_ms = 0;
};

struct EventRow {
  std::int64_t id = 0;
  std::int64_t time_ms = 0;
  std::string kind;     // instance.pending, instance.assigned, worker.unreachable, ...
  std::string subject;  // the instance, deployment or worker
  std::string message;
};

class Store {
 public:
  // Opens `target` (see open_db) and applies the migrations it lacks. `pool_size`: connections
  // lent at once (PostgreSQL; 0 = kDefaultPool; SQLite always 1). Throws StoreError.
  explicit Store(const std::string& target, std::size_t pool_size = 0);
  ~Store();
  static constexpr std::size_t kDefaultPool = 8;
  // How long a caller waits for a free connection before StoreError.
  static constexpr int kPoolWaitMs = 10000;
  std::size_t pool_size() const { return max_open_; }
  std::size_t connections_in_use();  // lent now (for metrics and the load benchmark)
  std::size_t connections_peak();    // the most lent at once since the store opened
  std::string backend() const;
  int schema_version();

  // Runs `fn` in one transaction on this store (nested calls join the outer one).
  void transaction(const std::function<void()>& fn);
  // Runs `fn`, which only reads, against one consistent committed state (several reads that
  // agree with each other) without blocking writers. Nested in a transaction: joins it.
  void snapshot(const std::function<void()>& fn);

  // Workers.
  void put_worker(const WorkerRow& w);  // insert or replace
  std::optional<WorkerRow> worker(const std::string& name);
  std::vector<WorkerRow> workers();
  bool set_worker_status(const std::string& name, WorkerStatus status);
  bool remove_worker(const std::string& name);

  // Deployments.
  bool create_deployment(const DeploymentRow& d);  // false if the name exists
  std::optional<DeploymentRow> deployment(const std::string& name);
  // Inside a transaction: true if the deployment exists, and then it stays until the transaction
  // ends (PostgreSQL: a share lock on its row, so a concurrent delete waits; SQLite has one writer
  // anyway). Writes of its instances check this first: an instance row of a deployment deleted
  // meanwhile would break the foreign key and fail the whole transaction.
  bool hold_deployment(const std::string& name);
  std::vector<DeploymentRow> deployments();
  bool update_deployment(const DeploymentRow& d);
  bool delete_deployment(const std::string& name);  // and its instances and claims

  // Instances and claims.
  void put_instance(const InstanceRow& i);
  std::optional<InstanceRow> instance(const std::string& id);
  std::vector<InstanceRow> instances(const std::string& deployment = "");
  bool delete_instance(const std::string& id);  // and its claims
  void set_claims(const std::string& instance, const std::vector<ClaimRow>& claims);  // replaces
  std::vector<ClaimRow> claims();
  std::string next_id(const std::string& counter);  // "1", "2", ... per counter, never reused

  // Measurements: one JSON body per instance and writer (a start of a server), written only while
  // the instance exists and deleted with it; all of them, instance -> writer -> body.
  void put_measurement(const std::string& instance, const std::string& writer,
                       const std::string& body);
  std::map<std::string, std::map<std::string, std::string>> measurements();
  // Calibration: named JSON documents of what the fleet learned (they outlive instances).
  void put_calibration(const std::string& name, const std::string& body);  // replaces
  std::optional<std::string> calibration(const std::string& name);

  // API keys.
  void put_key(const KeyRow& k);
  std::optional<KeyRow> key_by_hash(const std::string& hash);
  std::vector<KeyRow> keys();
  // Deleting a key moves keys_version() and the assignment version (servers sharing the database
  // hear of it and forget the keys they remember).
  bool delete_key(const std::string& id);
  std::int64_t keys_version();

  // Events. Oldest first after `after_id`, at most `limit`; with `newest_first`, the newest
  // first, before `before_id` when it is > 0 (pages back in time). `subject` ("" = any) filters.
  void event(const std::string& kind, const std::string& subject, const std::string& message);
  std::vector<EventRow> events(std::int64_t after_id = 0, std::size_t limit = 200,
                               const std::string& subject = "", bool newest_first = false,
                               std::int64_t before_id = 0);

  // REQUIRES: inside transaction(). Its commit may return before the database has flushed it
  // to disk (PostgreSQL: synchronous_commit off for this transaction; SQLite already commits so
  // in WAL mode): a database crash within a fraction of a second may lose it, never half of it.
  // For writes that are repeated anyway (heartbeats).
  void relax_commit();

  // Liveness of many workers in one transaction (heartbeats that said only "alive"): each
  // worker's last_heartbeat_ms becomes the later of its own and the given one, unless it is
  // unreachable (its next full heartbeat says it is back) or gone. Returns the names written.
  // The commit does not wait for the disk (a heartbeat lost with a crash comes again in seconds).
  std::vector<std::string> touch_workers(const std::map<std::string, std::int64_t>& at_ms);

  // Cache files an admin asked a worker to remove (`ggfleet models rm`), kept until a server
  // hands them to the worker in a heartbeat's answer: any server may take the request and any
  // may deliver it. Asking and taking bump the assignment version (every server republishes).
  // ask_model_removal is false when no such worker exists; asking twice asks once.
  bool ask_model_removal(const std::string& worker, const std::string& key);
  std::map<std::string, std::set<std::string>> model_removals();  // worker -> keys
  // Deletes and returns `worker`'s requests, sorted (empty when there are none).
  std::vector<std::string> take_model_removals(const std::string& worker);

  // A number that changes whenever any instance's assignment does (workers long-poll on it).
  // Bumping it also notifies the servers sharing the database (listen_assignments) when the
  // surrounding transaction commits.
  std::int64_t assignment_version();
  void bump_assignment_version();
  // A connection of its own, outside the pool, that receives a notification whenever another (or
  // this) server's bump of the assignment version commits: wait with Db::await_notification.
  // nullptr for SQLite (one server). Throws StoreError if it cannot connect.
  std::unique_ptr<Db> listen_assignments() const;

  // Leases, timed by the database's clock. acquire_lease takes `name` for `holder` for `ttl_ms`
  // when nobody holds it, its holder let it expire, or `holder` already has it (then it is
  // renewed, token unchanged); a change of holder raises the token. Returns the lease as held
  // now, or nullopt while another holder's lease runs.
  std::optional<Lease> acquire_lease(const std::string& name, const std::string& holder,
                                     std::int64_t ttl_ms);
  // Extends `lease` by ttl_ms from now; false when it was lost (expired, or taken by another).
  bool renew_lease(const Lease& lease, std::int64_t ttl_ms);
  // REQUIRES: inside transaction(). Throws LeaseLost unless `lease` is still held (same holder and
  // token, not expired); the lease row stays locked until the transaction ends, so no takeover
  // can come between the check and the writes it guards (fencing).
  void check_lease(const Lease& lease);
  void release_lease(const Lease& lease);  // lets it expire now (a clean stop)
  std::optional<Lease> lease(const std::string& name);

  // Servers: each one says it is alive every few seconds; the list shows those seen in the last
  // `within_ms`.
  void server_seen(const std::string& id, const std::string& url, std::int64_t started_ms);
  std::vector<ServerRow> servers(std::int64_t within_ms = 60000);
  void remove_server(const std::string& id);
  std::int64_t clock_ms();  // the database's clock

 private:
  struct Pool;
  struct Bound;
  void run_in_transaction(bool read_only, const std::function<void()>& fn);
  template <typename F>
  auto locked(F&& f);
  Db& db();  // REQUIRES: inside locked() or a transaction on this thread
  std::unique_ptr<Db> borrow();
  void give_back(std::unique_ptr<Db> db);
  void migrate();

  const std::string target_;
  std::string backend_;
  std::string channel_;  // PostgreSQL: the LISTEN/NOTIFY channel of assignment bumps
  std::size_t max_open_ = 1;
  std::mutex pool_mu_;
  std::condition_variable pool_cv_;
  std::vector<std::unique_ptr<Db>> idle_;
  std::size_t open_ = 0;  // lent + idle
  std::size_t peak_ = 0;  // the most lent at once
};

}  // namespace ggfleet::store
