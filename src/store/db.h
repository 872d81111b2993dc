// A small SQL layer with two real backends: SQLite (the embedded default, one file, WAL mode)
// and PostgreSQL (libpq, chosen by a postgres:// URL). SQL is written once for both: parameters
// are $1..$n, types are TEXT and BIGINT, RETURNING is allowed.
//
// Thread safety: a Db is one connection; callers serialise access (store::Store's pool lends each
// to one thread at a time).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace ggfleet::store {

class StoreError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using Param = std::variant<std::nullptr_t, std::int64_t, std::string>;

struct Rows {
  std::vector<std::vector<std::optional<std::string>>> rows;  // text form of every value
  std::int64_t affected = 0;                                 // rows changed by INSERT/UPDATE/DELETE
  std::string text(std::size_t row, std::size_t col) const;  // "" for NULL
  std::int64_t integer(std::size_t row, std::size_t col) const;  // 0 for NULL
};

class Db {
 public:
  virtual ~Db() = default;
  // Runs one statement. Throws StoreError with the backend's message.
  virtual Rows exec(const std::string& sql, const std::vector<Param>& params = {}) = 0;
  virtual void begin() = 0;  // a write transaction (SQLite: BEGIN IMMEDIATE)
  // A read-only transaction whose reads all see one committed state, without holding off
  // writers (SQLite in WAL mode: BEGIN; PostgreSQL: REPEATABLE READ, READ ONLY).
  virtual void begin_snapshot() = 0;
  virtual void commit() = 0;
  virtual void rollback() noexcept = 0;
  virtual std::string backend() const = 0;  // "sqlite" or "postgres"
  // The connection is lost (the server went away, the network broke): discard it, never reuse.
  virtual bool broken() const = 0;
  // An SQL expression of the database's own clock in milliseconds since the epoch (one clock
  // for every server sharing the database: leases do not depend on theirs).
  virtual std::string clock_ms_sql() const = 0;
  // Notifications between the servers sharing one database (PostgreSQL LISTEN/NOTIFY). SQLite
  // serves one server: nobody to tell, so it never receives any.
  // listen(): this connection receives `channel`'s notifications from now on (a name of letters,
  // digits and '_'). notify(): sends one, delivered when the surrounding transaction commits (at
  // once outside one). await_notification(): waits up to `timeout_ms` for a notification; true if
  // at least one came (it consumes all that came). Throws StoreError when the connection is lost.
  virtual void listen(const std::string& channel) = 0;
  virtual void notify(const std::string& channel) = 0;
  virtual bool await_notification(int timeout_ms) = 0;
};

// PostgreSQL connections give up connecting after this long (unless the URL says otherwise) and
// cancel any statement that runs longer than this.
inline constexpr int kConnectTimeoutS = 5;
inline constexpr int kStatementTimeoutMs = 15000;
// A PostgreSQL connection whose peer stopped answering (no reply, no reset) is given up after
// about this long: keepalive probes from a quarter of it on, unacknowledged data for all of it.
inline constexpr int kDeadPathS = 40;

// Opens `target`: a postgres:// or postgresql:// URL, or a SQLite file path (created if missing,
// WAL mode, foreign keys on, busy timeout 10 s). Throws StoreError.
std::unique_ptr<Db> open_db(const std::string& target);

}  // namespace ggfleet::store
