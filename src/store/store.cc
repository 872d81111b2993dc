#include "store/store.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>

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

template <typename F>
auto Store::locked(F&& f) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  return f(*db_);
}

Store::Store(const std::string& target) : db_(open_db(target)) {
  migrate();
}

std::string Store::backend() const {
  return db_->backend();
}

void Store::migrate() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  db_->exec(
      "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT "
      "NOT NULL)");
  for (std::size_t v = 1; v <= kMigrations.size(); ++v) {
    transaction([&] {
      // Taken inside the transaction, so two servers starting at once apply each version once.
      const Rows have = db_->exec("SELECT version FROM schema_migrations WHERE version = $1",
                                  {static_cast<std::int64_t>(v)});
      if (!have.rows.empty()) return;
      for (const std::string& s : statements(kMigrations[v - 1])) db_->exec(s);
      db_->exec("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)",
                {static_cast<std::int64_t>(v), now_ms()});
    });
  }
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
  std::lock_guard<std::recursive_mutex> lock(mu_);
  if (depth_ > 0) {
    fn();
    return;
  }
  if (read_only)
    db_->begin_snapshot();
  else
    db_->begin();
  ++depth_;
  try {
    fn();
    --depth_;
    db_->commit();
  } catch (...) {
    depth_ = 0;
    db_->rollback();
    throw;
  }
}

void Store::put_worker(const WorkerRow& w) {
  transaction([&] {
    db_->exec("DELETE FROM workers WHERE name = $1", {w.name});
    db_->exec(std::string("INSERT INTO workers (") + kWorkerCols +
                  ") VALUES ($1, $2, $3, $4, $5, $6, $7)",
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
    if (!db_->exec("SELECT 1 FROM deployments WHERE name = $1", {d.name}).rows.empty()) return;
    db_->exec(
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
    db_->exec(
        "DELETE FROM claims WHERE instance IN (SELECT id FROM instances WHERE deployment = $1)",
        {name});
    db_->exec(
        "DELETE FROM measurements WHERE instance IN (SELECT id FROM instances WHERE deployment = "
        "$1)",
        {name});
    db_->exec("DELETE FROM instances WHERE deployment = $1", {name});
    deleted = db_->exec("DELETE FROM deployments WHERE name = $1", {name}).affected > 0;
  });
  return deleted;
}

void Store::put_instance(const InstanceRow& x) {
  transaction([&] {
    char tps[64];
    std::snprintf(tps, sizeof tps, "%.17g", x.predicted_tokens_per_s);
    // An upsert: replacing the row would cascade to its claims.
    db_->exec(
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
    db_->exec("DELETE FROM claims WHERE instance = $1", {id});
    db_->exec("DELETE FROM measurements WHERE instance = $1", {id});
    deleted = db_->exec("DELETE FROM instances WHERE id = $1", {id}).affected > 0;
  });
  return deleted;
}

void Store::put_measurement(const std::string& instance, const std::string& body) {
  transaction([&] {
    // Only for an instance that still exists (it may have been deleted since it was measured).
    if (db_->exec("SELECT 1 FROM instances WHERE id = $1", {instance}).rows.empty()) return;
    db_->exec("DELETE FROM measurements WHERE instance = $1", {instance});
    db_->exec("INSERT INTO measurements (instance, body, updated_ms) VALUES ($1, $2, $3)",
              {instance, body, now_ms()});
  });
}

std::map<std::string, std::string> Store::measurements() {
  return locked([&](Db& db) {
    const Rows r = db.exec("SELECT instance, body FROM measurements");
    std::map<std::string, std::string> out;
    for (std::size_t i = 0; i < r.rows.size(); ++i) out[r.text(i, 0)] = r.text(i, 1);
    return out;
  });
}

void Store::put_calibration(const std::string& name, const std::string& body) {
  transaction([&] {
    db_->exec("DELETE FROM calibration WHERE name = $1", {name});
    db_->exec("INSERT INTO calibration (name, body, updated_ms) VALUES ($1, $2, $3)",
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
    db_->exec("DELETE FROM claims WHERE instance = $1", {instance});
    for (const ClaimRow& c : claims) {
      db_->exec(
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
  std::string id;
  transaction([&] {
    if (db_->exec("UPDATE counters SET value = value + 1 WHERE name = $1", {counter}).affected ==
        0) {
      db_->exec("INSERT INTO counters (name, value) VALUES ($1, 1)", {counter});
    }
    id = db_->exec("SELECT value FROM counters WHERE name = $1", {counter}).text(0, 0);
  });
  return id;
}

void Store::put_key(const KeyRow& k) {
  transaction([&] {
    db_->exec("DELETE FROM api_keys WHERE id = $1", {k.id});
    db_->exec(
        "INSERT INTO api_keys (id, name, hash, role, worker, created_ms) VALUES ($1, $2, $3, $4, "
        "$5, $6)",
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
  return locked(
      [&](Db& db) { return db.exec("DELETE FROM api_keys WHERE id = $1", {id}).affected > 0; });
}

void Store::event(const std::string& kind, const std::string& subject, const std::string& message) {
  transaction([&] {
    const std::int64_t id = std::stoll(next_id("events"));
    db_->exec(
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

std::int64_t Store::assignment_version() {
  return locked([](Db& db) {
    const Rows r = db.exec("SELECT value FROM counters WHERE name = 'assignments'");
    return r.rows.empty() ? std::int64_t{0} : r.integer(0, 0);
  });
}

void Store::bump_assignment_version() {
  next_id("assignments");
}

}  // namespace ggfleet::store
