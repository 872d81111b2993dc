#include "store/store.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>

namespace ggfleet::store {
namespace {

// Schema versions, applied in order, each in its own transaction. Never edit a shipped one:
// append a new version.
const std::vector<std::string> kMigrations = {
    // 1: the first schema.
    R"(CREATE TABLE workers (name TEXT PRIMARY KEY, address TEXT NOT NULL, labels TEXT NOT NULL,
         status TEXT NOT NULL, resources TEXT NOT NULL, last_heartbeat_ms BIGINT NOT NULL,
         registered_ms BIGINT NOT NULL);
       CREATE TABLE deployments (name TEXT PRIMARY KEY, model TEXT NOT NULL, options TEXT NOT NULL,
         replicas BIGINT NOT NULL, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL);
       CREATE TABLE instances (id TEXT PRIMARY KEY,
         deployment TEXT NOT NULL REFERENCES deployments(name) ON DELETE CASCADE,
         state TEXT NOT NULL, main_worker TEXT NOT NULL, assignment TEXT NOT NULL, reason TEXT NOT NULL,
         log_tail TEXT NOT NULL, restarts BIGINT NOT NULL, predicted_tps TEXT NOT NULL,
         created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL);
       CREATE TABLE claims (instance TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
         worker TEXT NOT NULL, gpu BIGINT NOT NULL, bytes BIGINT NOT NULL, rpc BIGINT NOT NULL);
       CREATE INDEX claims_by_instance ON claims(instance);
       CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
         role TEXT NOT NULL, worker TEXT NOT NULL, created_ms BIGINT NOT NULL);
       CREATE TABLE events (id BIGINT PRIMARY KEY, time_ms BIGINT NOT NULL, kind TEXT NOT NULL,
         subject TEXT NOT NULL, message TEXT NOT NULL);
       CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL))",
    // 2: generations: a deployment's model and options are generation N; each instance is
    // planned for one, so a change rolls (new instances first, old ones after).
    R"(ALTER TABLE deployments ADD COLUMN generation BIGINT NOT NULL DEFAULT 1;
       ALTER TABLE instances ADD COLUMN generation BIGINT NOT NULL DEFAULT 1)",
    // 3: what each instance really delivers (the truth loop): one row per instance, a JSON
    // summary of llama-server's timings, deleted with the instance.
    R"(CREATE TABLE measurements (instance TEXT PRIMARY KEY, body TEXT NOT NULL,
         updated_ms BIGINT NOT NULL))",
    // 4: what the fleet learned from them (perf/corrections.h): named JSON documents that
    // outlive instances ("fleet": the observations and the fitted factors).
    R"(CREATE TABLE calibration (name TEXT PRIMARY KEY, body TEXT NOT NULL,
         updated_ms BIGINT NOT NULL))",
    // 5: several servers on one database: leases (the scheduling loop's leader, with a fencing
    // token) and the servers that share it.
    R"(CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, token BIGINT NOT NULL,
         since_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL);
       CREATE TABLE servers (id TEXT PRIMARY KEY, url TEXT NOT NULL, started_ms BIGINT NOT NULL,
         last_seen_ms BIGINT NOT NULL))",
    // 6: cache files an admin asked a worker to remove, until a server hands them over (any
    // server may take the request, any may be the one the worker heartbeats to).
    R"(CREATE TABLE model_removals (worker TEXT NOT NULL REFERENCES workers(name) ON DELETE CASCADE,
         key TEXT NOT NULL, requested_ms BIGINT NOT NULL, PRIMARY KEY (worker, key)))",
    // 7: measurements per instance and writer (a start of a server): several servers measure the
    // same instance, and each row is one's own (the rows so far keep their numbers as writer '').
    R"(CREATE TABLE measurements_by_writer (instance TEXT NOT NULL, writer TEXT NOT NULL,
         body TEXT NOT NULL, updated_ms BIGINT NOT NULL, PRIMARY KEY (instance, writer));
       INSERT INTO measurements_by_writer (instance, writer, body, updated_ms)
         SELECT instance, '', body, updated_ms FROM measurements;
       DROP TABLE measurements;
       ALTER TABLE measurements_by_writer RENAME TO measurements)",
};

// Splits a migration into statements (libpq and sqlite3_prepare take one at a time).
std::vector<std::string> statements(const std::string& sql) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= sql.size(); ++i) {
    if (i == sql.size() || sql[i] == ';') {
      const std::string s = sql.substr(start, i - start);
      if (s.find_first_not_of(" \n\t") != std::string::npos) out.push_back(s);
      start = i + 1;
    }
  }
  return out;
}

// A word the store does not know (a row written by a newer ggfleet) reads as the state that
// makes the scheduler look again: unreachable, error.
WorkerRow worker_from(const Rows& r, std::size_t i) {
  return {r.text(i, 0),   r.text(i, 1),
          r.text(i, 2),   worker_status(r.text(i, 3)).value_or(WorkerStatus::kUnreachable),
          r.text(i, 4),   r.integer(i, 5),
          r.integer(i, 6)};
}
constexpr const char* kWorkerCols =
    "name, address, labels, status, resources, last_heartbeat_ms, registered_ms";

DeploymentRow deployment_from(const Rows& r, std::size_t i) {
  return {r.text(i, 0),    r.text(i, 1),    r.text(i, 2),   r.integer(i, 3),
          r.integer(i, 4), r.integer(i, 5), r.integer(i, 6)};
}
constexpr const char* kDeploymentCols =
    "name, model, options, replicas, created_ms, updated_ms, generation";

InstanceRow instance_from(const Rows& r, std::size_t i) {
  InstanceRow x;
  x.id = r.text(i, 0);
  x.deployment = r.text(i, 1);
  x.state = instance_state(r.text(i, 2)).value_or(InstanceState::kError);
  x.main_worker = r.text(i, 3);
  x.assignment_json = r.text(i, 4);
  x.reason = r.text(i, 5);
  x.log_tail = r.text(i, 6);
  x.restarts = r.integer(i, 7);
  x.predicted_tokens_per_s = std::strtod(r.text(i, 8).c_str(), nullptr);
  x.created_ms = r.integer(i, 9);
  x.updated_ms = r.integer(i, 10);
  x.generation = r.integer(i, 11);
  return x;
}
constexpr const char* kInstanceCols =
    "id, deployment, state, main_worker, assignment, reason, log_tail, restarts, predicted_tps, "
    "created_ms, updated_ms, generation";

KeyRow key_from(const Rows& r, std::size_t i) {
  return {r.text(i, 0), r.text(i, 1), r.text(i, 2), r.text(i, 3), r.text(i, 4), r.integer(i, 5)};
}

}  // namespace

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

namespace {

// The connection this thread borrowed from a store's pool, while a call or a transaction of that
// store runs on it: the calls it makes meanwhile use the same connection (and join the
// transaction).
struct ThreadConnection {
  Db* db = nullptr;
  bool in_transaction = false;
};
thread_local std::map<const Store*, ThreadConnection> t_bound;

// Binds `db` to this thread for `store` until it goes out of scope.
class Binding {
 public:
  Binding(const Store* store, Db* db) : store_(store) { t_bound[store] = {db, false}; }
  ~Binding() { t_bound.erase(store_); }
  Binding(const Binding&) = delete;
  Binding& operator=(const Binding&) = delete;

 private:
  const Store* store_;
};

bool is_postgres(const std::string& target) {
  return target.rfind("postgres://", 0) == 0 || target.rfind("postgresql://", 0) == 0;
}

}  // namespace

// A connection borrowed from the pool, given back (or dropped, if broken) when it goes out of
// scope.
struct Store::Bound {
  explicit Bound(Store& s) : store(s), db(s.borrow()) { binding.emplace(&s, db.get()); }
  ~Bound() {
    binding.reset();  // unbound before the connection goes back
    store.give_back(std::move(db));
  }
  Bound(const Bound&) = delete;
  Bound& operator=(const Bound&) = delete;
  Store& store;
  std::unique_ptr<Db> db;
  std::optional<Binding> binding;
};

std::unique_ptr<Db> Store::borrow() {
  std::unique_lock<std::mutex> lock(pool_mu_);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kPoolWaitMs);
  while (idle_.empty() && open_ >= max_open_) {
    if (pool_cv_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty() &&
        open_ >= max_open_)
      throw StoreError("no database connection free within " + std::to_string(kPoolWaitMs / 1000) +
                       " s (all " + std::to_string(max_open_) + " in use)");
  }
  if (!idle_.empty()) {
    std::unique_ptr<Db> db = std::move(idle_.back());
    idle_.pop_back();
    peak_ = std::max(peak_, open_ - idle_.size());
    return db;
  }
  ++open_;
  peak_ = std::max(peak_, open_ - idle_.size());
  lock.unlock();  // connecting may take seconds: nobody else waits for it
  try {
    return open_db(target_);
  } catch (...) {
    lock.lock();
    --open_;
    pool_cv_.notify_one();
    throw;
  }
}

void Store::give_back(std::unique_ptr<Db> db) {
  std::lock_guard<std::mutex> lock(pool_mu_);
  if (db && !db->broken()) {
    idle_.push_back(std::move(db));
  } else {
    --open_;  // the next borrower opens a new one
  }
  pool_cv_.notify_one();
}

std::size_t Store::connections_in_use() {
  std::lock_guard<std::mutex> lock(pool_mu_);
  return open_ - idle_.size();
}

std::size_t Store::connections_peak() {
  std::lock_guard<std::mutex> lock(pool_mu_);
  return peak_;
}

Db& Store::db() {
  return *t_bound.at(this).db;
}

template <typename F>
auto Store::locked(F&& f) {
  if (const auto it = t_bound.find(this); it != t_bound.end()) return f(*it->second.db);
  Bound bound(*this);
  return f(*bound.db);
}

Store::Store(const std::string& target, std::size_t pool_size)
    : target_(target),
      backend_(is_postgres(target) ? "postgres" : "sqlite"),
      max_open_(is_postgres(target) ? (pool_size > 0 ? pool_size : kDefaultPool) : 1) {
  idle_.push_back(open_db(target));  // the first connection now: a bad target fails here
  open_ = 1;
  migrate();
  if (backend_ == "postgres") {
    // Notifications go to the whole database: the channel names this store's schema, so that
    // clusters (or tests) in other schemas of the same database are not woken by this one.
    std::string channel = "ggfleet_assignments_" + locked([](Db& db) {
                            return db.exec("SELECT current_schema()").text(0, 0);
                          });
    for (char& c : channel) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') c = '_';
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    channel_ = channel.substr(0, 63);  // the longest name PostgreSQL keeps
  }
}

Store::~Store() = default;

std::string Store::backend() const {
  return backend_;
}

void Store::migrate() {
  // One connection for all of it; on PostgreSQL a session lock, so that servers starting at once
  // on a new database take turns (the lock goes with the connection if the process dies).
  locked([&](Db& db) {
    const bool postgres = backend_ == "postgres";
    if (postgres) db.exec("SELECT pg_advisory_lock(7408218)");
    try {
      db.exec(
          "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_ms "
          "BIGINT NOT NULL)");
      for (std::size_t v = 1; v <= kMigrations.size(); ++v) {
        transaction([&] {
          const Rows have = db.exec("SELECT version FROM schema_migrations WHERE version = $1",
                                    {static_cast<std::int64_t>(v)});
          if (!have.rows.empty()) return;
          for (const std::string& sql : statements(kMigrations[v - 1])) db.exec(sql);
          db.exec("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)",
                  {static_cast<std::int64_t>(v), now_ms()});
        });
      }
    } catch (...) {
      if (postgres && !db.broken()) db.exec("SELECT pg_advisory_unlock(7408218)");
      throw;
    }
    if (postgres) db.exec("SELECT pg_advisory_unlock(7408218)");
  });
}

int Store::schema_version() {
  return locked([](Db& db) {
    return static_cast<int>(
        db.exec("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").integer(0, 0));
  });
}

void Store::transaction(const std::function<void()>& fn) {
  run_in_transaction(false, fn);
}

void Store::snapshot(const std::function<void()>& fn) {
  run_in_transaction(true, fn);
}

void Store::run_in_transaction(bool read_only, const std::function<void()>& fn) {
  std::optional<Bound> bound;  // a connection of the pool, unless this thread holds one already
  auto it = t_bound.find(this);
  if (it == t_bound.end()) {
    bound.emplace(*this);
    it = t_bound.find(this);
  } else if (it->second.in_transaction) {
    fn();  // inside a transaction of this store: join it
    return;
  }
  Db& db = *it->second.db;
  if (read_only)
    db.begin_snapshot();
  else
    db.begin();
  it->second.in_transaction = true;
  try {
    fn();
    t_bound[this].in_transaction = false;
    db.commit();
  } catch (...) {
    t_bound[this].in_transaction = false;
    db.rollback();
    throw;
  }
}

void Store::put_worker(const WorkerRow& w) {
  transaction([&] {
    // Upserts (here and below): servers sharing the database may write the same row at once.
    db().exec(std::string("INSERT INTO workers (") + kWorkerCols +
                  ") VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET address "
                  "= excluded.address, labels = excluded.labels, status = excluded.status, "
                  "resources = excluded.resources, last_heartbeat_ms = excluded.last_heartbeat_ms, "
                  "registered_ms = excluded.registered_ms",
              {w.name, w.address, w.labels_json, text(w.status), w.resources_json,
               w.last_heartbeat_ms, w.registered_ms});
  });
}

std::optional<WorkerRow> Store::worker(const std::string& name) {
  return locked([&](Db& db) -> std::optional<WorkerRow> {
    const Rows r =
        db.exec(std::string("SELECT ") + kWorkerCols + " FROM workers WHERE name = $1", {name});
    if (r.rows.empty()) return std::nullopt;
    return worker_from(r, 0);
  });
}

std::vector<WorkerRow> Store::workers() {
  return locked([&](Db& db) {
    const Rows r = db.exec(std::string("SELECT ") + kWorkerCols + " FROM workers ORDER BY name");
    std::vector<WorkerRow> out;
    for (std::size_t i = 0; i < r.rows.size(); ++i) out.push_back(worker_from(r, i));
    return out;
  });
}

bool Store::set_worker_status(const std::string& name, WorkerStatus status) {
  return locked([&](Db& db) {
    return db.exec("UPDATE workers SET status = $2 WHERE name = $1", {name, text(status)})
               .affected > 0;
  });
}

bool Store::remove_worker(const std::string& name) {
  return locked(
      [&](Db& db) { return db.exec("DELETE FROM workers WHERE name = $1", {name}).affected > 0; });
}

bool Store::create_deployment(const DeploymentRow& d) {
  bool created = false;
  transaction([&] {
    if (!db().exec("SELECT 1 FROM deployments WHERE name = $1", {d.name}).rows.empty()) return;
    db().exec(
        std::string("INSERT INTO deployments (") + kDeploymentCols +
            ") VALUES ($1, $2, $3, $4, $5, $6, $7)",
        {d.name, d.model, d.options_json, d.replicas, d.created_ms, d.updated_ms, d.generation});
    created = true;
  });
  return created;
}

std::optional<DeploymentRow> Store::deployment(const std::string& name) {
  return locked([&](Db& db) -> std::optional<DeploymentRow> {
    const Rows r = db.exec(
        std::string("SELECT ") + kDeploymentCols + " FROM deployments WHERE name = $1", {name});
    if (r.rows.empty()) return std::nullopt;
    return deployment_from(r, 0);
  });
}

bool Store::hold_deployment(const std::string& name) {
  return locked([&](Db& db) {
    return !db.exec(std::string("SELECT name FROM deployments WHERE name = $1") +
                        (backend_ == "postgres" ? " FOR SHARE" : ""),
                    {name})
                .rows.empty();
  });
}

std::vector<DeploymentRow> Store::deployments() {
  return locked([&](Db& db) {
    const Rows r =
        db.exec(std::string("SELECT ") + kDeploymentCols + " FROM deployments ORDER BY name");
    std::vector<DeploymentRow> out;
    for (std::size_t i = 0; i < r.rows.size(); ++i) out.push_back(deployment_from(r, i));
    return out;
  });
}

bool Store::update_deployment(const DeploymentRow& d) {
  return locked([&](Db& db) {
    return db.exec(
                 "UPDATE deployments SET model = $2, options = $3, replicas = $4, updated_ms = $5, "
                 "generation = $6 WHERE name = $1",
                 {d.name, d.model, d.options_json, d.replicas, d.updated_ms, d.generation})
               .affected > 0;
  });
}

bool Store::delete_deployment(const std::string& name) {
  bool deleted = false;
  transaction([&] {
    db().exec(
        "DELETE FROM claims WHERE instance IN (SELECT id FROM instances WHERE deployment = $1)",
        {name});
    db().exec(
        "DELETE FROM measurements WHERE instance IN (SELECT id FROM instances WHERE deployment = "
        "$1)",
        {name});
    db().exec("DELETE FROM instances WHERE deployment = $1", {name});
    deleted = db().exec("DELETE FROM deployments WHERE name = $1", {name}).affected > 0;
  });
  return deleted;
}

void Store::put_instance(const InstanceRow& x) {
  transaction([&] {
    char tps[64];
    std::snprintf(tps, sizeof tps, "%.17g", x.predicted_tokens_per_s);
    // An upsert: replacing the row would cascade to its claims.
    db().exec(
        std::string("INSERT INTO instances (") + kInstanceCols +
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (id) DO "
            "UPDATE "
            "SET "
            "state = excluded.state, main_worker = excluded.main_worker, assignment = "
            "excluded.assignment, "
            "reason = excluded.reason, log_tail = excluded.log_tail, restarts = excluded.restarts, "
            "predicted_tps = excluded.predicted_tps, updated_ms = excluded.updated_ms",
        {x.id, x.deployment, text(x.state), x.main_worker, x.assignment_json, x.reason, x.log_tail,
         x.restarts, std::string(tps), x.created_ms, x.updated_ms, x.generation});
  });
}

std::optional<InstanceRow> Store::instance(const std::string& id) {
  return locked([&](Db& db) -> std::optional<InstanceRow> {
    const Rows r =
        db.exec(std::string("SELECT ") + kInstanceCols + " FROM instances WHERE id = $1", {id});
    if (r.rows.empty()) return std::nullopt;
    return instance_from(r, 0);
  });
}

std::vector<InstanceRow> Store::instances(const std::string& deployment) {
  return locked([&](Db& db) {
    const Rows r =
        deployment.empty()
            ? db.exec(std::string("SELECT ") + kInstanceCols +
                      " FROM instances ORDER BY created_ms, id")
            : db.exec(std::string("SELECT ") + kInstanceCols +
                          " FROM instances WHERE deployment = $1 ORDER BY created_ms, id",
                      {deployment});
    std::vector<InstanceRow> out;
    for (std::size_t i = 0; i < r.rows.size(); ++i) out.push_back(instance_from(r, i));
    return out;
  });
}

bool Store::delete_instance(const std::string& id) {
  bool deleted = false;
  transaction([&] {
    db().exec("DELETE FROM claims WHERE instance = $1", {id});
    db().exec("DELETE FROM measurements WHERE instance = $1", {id});
    deleted = db().exec("DELETE FROM instances WHERE id = $1", {id}).affected > 0;
  });
  return deleted;
}

void Store::put_measurement(const std::string& instance, const std::string& writer,
                            const std::string& body) {
  transaction([&] {
    // Only for an instance that still exists (it may have been deleted since it was measured).
    if (db().exec("SELECT 1 FROM instances WHERE id = $1", {instance}).rows.empty()) return;
    db().exec(
        "INSERT INTO measurements (instance, writer, body, updated_ms) VALUES ($1, $2, $3, $4) ON "
        "CONFLICT (instance, writer) DO UPDATE SET body = excluded.body, updated_ms = "
        "excluded.updated_ms",
        {instance, writer, body, now_ms()});
  });
}

std::map<std::string, std::map<std::string, std::string>> Store::measurements() {
  return locked([&](Db& db) {
    const Rows r = db.exec("SELECT instance, writer, body FROM measurements");
    std::map<std::string, std::map<std::string, std::string>> out;
    for (std::size_t i = 0; i < r.rows.size(); ++i) out[r.text(i, 0)][r.text(i, 1)] = r.text(i, 2);
    return out;
  });
}

void Store::put_calibration(const std::string& name, const std::string& body) {
  transaction([&] {
    db().exec(
        "INSERT INTO calibration (name, body, updated_ms) VALUES ($1, $2, $3) ON CONFLICT (name) "
        "DO UPDATE SET body = excluded.body, updated_ms = excluded.updated_ms",
        {name, body, now_ms()});
  });
}

std::optional<std::string> Store::calibration(const std::string& name) {
  return locked([&](Db& db) -> std::optional<std::string> {
    const Rows r = db.exec("SELECT body FROM calibration WHERE name = $1", {name});
    if (r.rows.empty()) return std::nullopt;
    return r.text(0, 0);
  });
}

void Store::set_claims(const std::string& instance, const std::vector<ClaimRow>& claims) {
  transaction([&] {
    db().exec("DELETE FROM claims WHERE instance = $1", {instance});
    for (const ClaimRow& c : claims) {
      db().exec(
          "INSERT INTO claims (instance, worker, gpu, bytes, rpc) VALUES ($1, $2, $3, $4, $5)",
          {instance, c.worker, c.gpu, c.bytes, static_cast<std::int64_t>(c.rpc ? 1 : 0)});
    }
  });
}

std::vector<ClaimRow> Store::claims() {
  return locked([&](Db& db) {
    const Rows r = db.exec(
        "SELECT instance, worker, gpu, bytes, rpc FROM claims ORDER BY instance, worker, gpu");
    std::vector<ClaimRow> out;
    for (std::size_t i = 0; i < r.rows.size(); ++i) {
      out.push_back(
          {r.text(i, 0), r.text(i, 1), r.integer(i, 2), r.integer(i, 3), r.integer(i, 4) != 0});
    }
    return out;
  });
}

std::string Store::next_id(const std::string& counter) {
  // One statement: two servers asking at once get two numbers (an UPDATE-then-INSERT could both
  // find no row under READ COMMITTED and collide).
  return locked([&](Db& db) {
    return db
        .exec(
            "INSERT INTO counters (name, value) VALUES ($1, 1) ON CONFLICT (name) DO UPDATE SET "
            "value = counters.value + 1 RETURNING value",
            {counter})
        .text(0, 0);
  });
}

void Store::put_key(const KeyRow& k) {
  transaction([&] {
    db().exec(
        "INSERT INTO api_keys (id, name, hash, role, worker, created_ms) VALUES ($1, $2, $3, $4, "
        "$5, $6) ON CONFLICT (id) DO UPDATE SET name = excluded.name, hash = excluded.hash, role "
        "= excluded.role, worker = excluded.worker, created_ms = excluded.created_ms",
        {k.id, k.name, k.hash, k.role, k.worker, k.created_ms});
  });
}

std::optional<KeyRow> Store::key_by_hash(const std::string& hash) {
  return locked([&](Db& db) -> std::optional<KeyRow> {
    const Rows r = db.exec(
        "SELECT id, name, hash, role, worker, created_ms FROM api_keys WHERE hash = $1", {hash});
    if (r.rows.empty()) return std::nullopt;
    return key_from(r, 0);
  });
}

std::vector<KeyRow> Store::keys() {
  return locked([&](Db& db) {
    const Rows r = db.exec(
        "SELECT id, name, hash, role, worker, created_ms FROM api_keys ORDER BY created_ms, id");
    std::vector<KeyRow> out;
    for (std::size_t i = 0; i < r.rows.size(); ++i) out.push_back(key_from(r, i));
    return out;
  });
}

bool Store::delete_key(const std::string& id) {
  bool deleted = false;
  transaction([&] {
    deleted = db().exec("DELETE FROM api_keys WHERE id = $1", {id}).affected > 0;
    if (!deleted) return;
    next_id("keys");            // the servers that remember keys forget them
    bump_assignment_version();  // (and hear of it now)
  });
  return deleted;
}

std::int64_t Store::keys_version() {
  return locked([](Db& db) {
    const Rows r = db.exec("SELECT value FROM counters WHERE name = 'keys'");
    return r.rows.empty() ? std::int64_t{0} : r.integer(0, 0);
  });
}

void Store::event(const std::string& kind, const std::string& subject, const std::string& message) {
  transaction([&] {
    const std::int64_t id = std::stoll(next_id("events"));
    db().exec(
        "INSERT INTO events (id, time_ms, kind, subject, message) VALUES ($1, $2, $3, $4, $5)",
        {id, now_ms(), kind, subject, message});
  });
}

std::vector<EventRow> Store::events(std::int64_t after_id, std::size_t limit,
                                    const std::string& subject, bool newest_first,
                                    std::int64_t before_id) {
  return locked([&](Db& db) {
    std::string sql = "SELECT id, time_ms, kind, subject, message FROM events WHERE id > $1";
    std::vector<Param> params = {after_id, static_cast<std::int64_t>(limit)};
    if (!subject.empty()) {
      params.emplace_back(subject);
      sql += " AND subject = $" + std::to_string(params.size());
    }
    if (before_id > 0) {
      params.emplace_back(before_id);
      sql += " AND id < $" + std::to_string(params.size());
    }
    sql += newest_first ? " ORDER BY id DESC LIMIT $2" : " ORDER BY id LIMIT $2";
    const Rows r = db.exec(sql, params);
    std::vector<EventRow> out;
    for (std::size_t i = 0; i < r.rows.size(); ++i) {
      out.push_back({r.integer(i, 0), r.integer(i, 1), r.text(i, 2), r.text(i, 3), r.text(i, 4)});
    }
    return out;
  });
}

bool Store::ask_model_removal(const std::string& worker, const std::string& key) {
  bool asked = false;
  transaction([&] {
    if (db().exec("SELECT 1 FROM workers WHERE name = $1", {worker}).rows.empty()) return;
    db().exec(
        "INSERT INTO model_removals (worker, key, requested_ms) VALUES ($1, $2, $3) ON CONFLICT "
        "(worker, key) DO NOTHING",
        {worker, key, now_ms()});
    bump_assignment_version();
    asked = true;
  });
  return asked;
}

std::map<std::string, std::set<std::string>> Store::model_removals() {
  return locked([](Db& db) {
    const Rows r = db.exec("SELECT worker, key FROM model_removals");
    std::map<std::string, std::set<std::string>> out;
    for (std::size_t i = 0; i < r.rows.size(); ++i) out[r.text(i, 0)].insert(r.text(i, 1));
    return out;
  });
}

std::vector<std::string> Store::take_model_removals(const std::string& worker) {
  std::vector<std::string> keys;
  transaction([&] {
    const Rows r =
        db().exec("DELETE FROM model_removals WHERE worker = $1 RETURNING key", {worker});
    for (std::size_t i = 0; i < r.rows.size(); ++i) keys.push_back(r.text(i, 0));
    if (!keys.empty()) bump_assignment_version();
  });
  std::sort(keys.begin(), keys.end());
  return keys;
}

std::int64_t Store::assignment_version() {
  return locked([](Db& db) {
    const Rows r = db.exec("SELECT value FROM counters WHERE name = 'assignments'");
    return r.rows.empty() ? std::int64_t{0} : r.integer(0, 0);
  });
}

void Store::bump_assignment_version() {
  locked([this](Db& db) {
    next_id("assignments");
    if (!channel_.empty()) db.notify(channel_);  // (heard when this transaction commits)
  });
}

std::unique_ptr<Db> Store::listen_assignments() const {
  if (channel_.empty()) return nullptr;
  std::unique_ptr<Db> db = open_db(target_);
  db->listen(channel_);
  return db;
}

namespace {

Lease lease_from(const Rows& r, std::size_t i) {
  return {r.text(i, 0), r.text(i, 1), r.integer(i, 2), r.integer(i, 3), r.integer(i, 4)};
}
constexpr const char* kLeaseCols = "name, holder, token, since_ms, expires_ms";

}  // namespace

std::optional<Lease> Store::acquire_lease(const std::string& name, const std::string& holder,
                                          std::int64_t ttl_ms) {
  std::optional<Lease> out;
  transaction([&] {
    const std::string now = db().clock_ms_sql();
    // A first row (nobody held it yet) that has already expired: taken just below.
    db().exec(
        "INSERT INTO leases (name, holder, token, since_ms, expires_ms) VALUES ($1, '', 0, 0, 0) "
        "ON CONFLICT (name) DO NOTHING",
        {name});
    // Ours already: renewed. Expired: taken, with a new token. Another's that runs: untouched.
    const Rows r = db().exec(
        "UPDATE leases SET token = CASE WHEN holder = $2 THEN token ELSE token + 1 END, "
        "since_ms = CASE WHEN holder = $2 THEN since_ms ELSE " +
            now + " END, expires_ms = " + now +
            " + $3, holder = $2 WHERE name = $1 AND (holder = $2 OR expires_ms < " + now +
            ") RETURNING " + kLeaseCols,
        {name, holder, ttl_ms});
    if (!r.rows.empty()) out = lease_from(r, 0);
  });
  return out;
}

bool Store::renew_lease(const Lease& lease, std::int64_t ttl_ms) {
  return locked([&](Db& db) {
    const std::string now = db.clock_ms_sql();
    return db.exec("UPDATE leases SET expires_ms = " + now +
                       " + $4 WHERE name = $1 AND holder = $2 AND token = $3 AND expires_ms >= " +
                       now,
                   {lease.name, lease.holder, lease.token, ttl_ms})
               .affected == 1;
  });
}

std::vector<std::string> Store::touch_workers(const std::map<std::string, std::int64_t>& at_ms) {
  std::vector<std::string> written;
  constexpr std::size_t kRows = 500;  // per statement (parameters stay far below every limit)
  auto it = at_ms.begin();
  while (it != at_ms.end()) {
    std::string values;
    std::vector<Param> params;
    for (std::size_t n = 0; n < kRows && it != at_ms.end(); ++n, ++it) {
      params.emplace_back(it->first);
      params.emplace_back(it->second);
      values += std::string(values.empty() ? "" : ", ") + "($" + std::to_string(params.size() - 1) +
                ", CAST($" + std::to_string(params.size()) + " AS BIGINT))";
    }
    transaction([&] {
      relax_commit();
      const Rows r = db().exec(
          "WITH v(name, ms) AS (VALUES " + values +
              ") UPDATE workers SET last_heartbeat_ms = CASE WHEN workers.last_heartbeat_ms < "
              "v.ms THEN v.ms ELSE workers.last_heartbeat_ms END FROM v WHERE workers.name = "
              "v.name AND workers.status <> 'unreachable' RETURNING workers.name",
          params);
      for (std::size_t i = 0; i < r.rows.size(); ++i) written.push_back(r.text(i, 0));
    });
  }
  return written;
}

void Store::relax_commit() {
  if (backend_ == "postgres") db().exec("SET LOCAL synchronous_commit TO OFF");
}

void Store::check_lease(const Lease& lease) {
  // An UPDATE that changes nothing but takes the row's lock until the transaction ends.
  const Rows r = db().exec(
      "UPDATE leases SET token = token WHERE name = $1 AND holder = $2 AND token = $3 AND "
      "expires_ms >= " +
          db().clock_ms_sql(),
      {lease.name, lease.holder, lease.token});
  if (r.affected != 1)
    throw LeaseLost("the " + lease.name + " lease (token " + std::to_string(lease.token) +
                    ") is no longer held by " + lease.holder);
}

void Store::release_lease(const Lease& lease) {
  locked([&](Db& db) {
    db.exec("UPDATE leases SET expires_ms = 0 WHERE name = $1 AND holder = $2 AND token = $3",
            {lease.name, lease.holder, lease.token});
  });
}

std::optional<Lease> Store::lease(const std::string& name) {
  return locked([&](Db& db) -> std::optional<Lease> {
    const Rows r =
        db.exec(std::string("SELECT ") + kLeaseCols + " FROM leases WHERE name = $1", {name});
    if (r.rows.empty()) return std::nullopt;
    return lease_from(r, 0);
  });
}

void Store::server_seen(const std::string& id, const std::string& url, std::int64_t started_ms) {
  locked([&](Db& db) {
    db.exec("INSERT INTO servers (id, url, started_ms, last_seen_ms) VALUES ($1, $2, $3, " +
                db.clock_ms_sql() +
                ") ON CONFLICT (id) DO UPDATE SET url = $2, last_seen_ms = " + db.clock_ms_sql(),
            {id, url, started_ms});
  });
}

std::vector<ServerRow> Store::servers(std::int64_t within_ms) {
  return locked([&](Db& db) {
    const Rows r =
        db.exec("SELECT id, url, started_ms, last_seen_ms FROM servers WHERE last_seen_ms >= " +
                    db.clock_ms_sql() + " - $1 ORDER BY started_ms, id",
                {within_ms});
    std::vector<ServerRow> out;
    for (std::size_t i = 0; i < r.rows.size(); ++i)
      out.push_back({r.text(i, 0), r.text(i, 1), r.integer(i, 2), r.integer(i, 3)});
    return out;
  });
}

void Store::remove_server(const std::string& id) {
  locked([&](Db& db) { db.exec("DELETE FROM servers WHERE id = $1", {id}); });
}

std::int64_t Store::clock_ms() {
  return locked([](Db& db) { return db.exec("SELECT " + db.clock_ms_sql()).integer(0, 0); });
}

}  // namespace ggfleet::store
