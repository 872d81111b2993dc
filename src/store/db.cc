#include "store/db.h"

#include <libpq-fe.h>
#include <sqlite3.h>

#include <poll.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace ggfleet::store {

std::string Rows::text(std::size_t row, std::size_t col) const {
  const auto& v = rows.at(row).at(col);
  return v ? *v : std::string();
}

std::int64_t Rows::integer(std::size_t row, std::size_t col) const {
  const auto& v = rows.at(row).at(col);
  return v && !v->empty() ? std::strtoll(v->c_str(), nullptr, 10) : 0;
}

namespace {

class Sqlite final : public Db {
 public:
  explicit Sqlite(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                        nullptr) != SQLITE_OK) {
      const std::string why = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      throw StoreError("sqlite " + path + ": " + why);
    }
    sqlite3_busy_timeout(db_, 10000);
    exec("PRAGMA journal_mode=WAL");
    exec("PRAGMA synchronous=NORMAL");
    exec("PRAGMA foreign_keys=ON");
  }
  ~Sqlite() override { sqlite3_close(db_); }

  Rows exec(const std::string& sql, const std::vector<Param>& params) override {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, sql.c_str(), static_cast<int>(sql.size()), &st, nullptr) !=
        SQLITE_OK) {
      throw StoreError(std::string("sqlite: ") + sqlite3_errmsg(db_) + " in: " + sql);
    }
    for (std::size_t i = 0; i < params.size(); ++i) {
      const std::string name = "$" + std::to_string(i + 1);
      const int at = sqlite3_bind_parameter_index(st, name.c_str());
      if (at == 0) continue;
      const Param& p = params[i];
      if (std::holds_alternative<std::nullptr_t>(p)) {
        sqlite3_bind_null(st, at);
      } else if (const auto* n = std::get_if<std::int64_t>(&p)) {
        sqlite3_bind_int64(st, at, *n);
      } else {
        const std::string& s = std::get<std::string>(p);
        sqlite3_bind_text(st, at, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
      }
    }
    Rows out;
    for (;;) {
      const int rc = sqlite3_step(st);
      if (rc == SQLITE_DONE) break;
      if (rc != SQLITE_ROW) {
        const std::string why = sqlite3_errmsg(db_);
        sqlite3_finalize(st);
        throw StoreError("sqlite: " + why);
      }
      std::vector<std::optional<std::string>> row;
      for (int c = 0; c < sqlite3_column_count(st); ++c) {
        if (sqlite3_column_type(st, c) == SQLITE_NULL) {
          row.emplace_back();
        } else {
          const auto* t = reinterpret_cast<const char*>(sqlite3_column_text(st, c));
          row.emplace_back(std::string(t, static_cast<std::size_t>(sqlite3_column_bytes(st, c))));
        }
      }
      out.rows.push_back(std::move(row));
    }
    sqlite3_finalize(st);
    out.affected = sqlite3_changes(db_);
    return out;
  }
  void begin() override { exec("BEGIN IMMEDIATE", {}); }
  void begin_snapshot() override { exec("BEGIN", {}); }
  void commit() override { exec("COMMIT", {}); }
  void rollback() noexcept override { sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr); }
  std::string backend() const override { return "sqlite"; }
  bool broken() const override { return false; }
  std::string clock_ms_sql() const override {
    return "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";
  }
  void listen(const std::string&) override {}
  void notify(const std::string&) override {}
  bool await_notification(int timeout_ms) override {
    std::this_thread::sleep_for(std::chrono::milliseconds(timeout_ms));
    return false;
  }

 private:
  Rows exec(const char* sql) { return exec(std::string(sql), {}); }
  sqlite3* db_ = nullptr;
};

class Postgres final : public Db {
 public:
  // The URL's own settings win; else kConnectTimeoutS, and TCP keepalives with a user timeout
  // (a path that silently drops everything fails a call within about kDeadPathS instead of
  // blocking it for the kernel's quarter of an hour). Every statement is cut after
  // kStatementTimeoutMs, so one stuck query cannot hold a connection (or a lock) for ever.
  explicit Postgres(const std::string& url) {
    const std::string timeout = std::to_string(kConnectTimeoutS);
    const std::string idle_s = std::to_string(kDeadPathS / 4);
    const std::string interval_s = std::to_string(kDeadPathS / 8);
    const std::string user_timeout_ms = std::to_string(kDeadPathS * 1000);
    const char* const keys[] = {
        "connect_timeout",  "keepalives",       "keepalives_idle", "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "dbname",          nullptr};
    const char* const values[] = {timeout.c_str(),    "1",    idle_s.c_str(),
                                  interval_s.c_str(), "6",    user_timeout_ms.c_str(),
                                  url.c_str(),        nullptr};
    conn_ = PQconnectdbParams(keys, values, 1);
    if (conn_ == nullptr || PQstatus(conn_) != CONNECTION_OK) {
      const std::string why = conn_ ? PQerrorMessage(conn_) : "out of memory";
      PQfinish(conn_);
      throw StoreError("postgres: cannot connect: " + why);
    }
    exec("SET client_min_messages TO WARNING", {});
    exec("SET statement_timeout = " + std::to_string(kStatementTimeoutMs), {});
    // A session that went quiet inside a transaction (its process stopped between two
    // statements) would hold its row locks, the scheduler lease's among them, until TCP noticed.
    exec("SET idle_in_transaction_session_timeout = " + std::to_string(kStatementTimeoutMs * 2),
         {});
  }
  ~Postgres() override { PQfinish(conn_); }

  Rows exec(const std::string& sql, const std::vector<Param>& params) override {
    std::vector<std::string> texts(params.size());
    std::vector<const char*> values(params.size(), nullptr);
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (const auto* n = std::get_if<std::int64_t>(&params[i])) {
        texts[i] = std::to_string(*n);
        values[i] = texts[i].c_str();
      } else if (const auto* s = std::get_if<std::string>(&params[i])) {
        values[i] = s->c_str();
      }
    }
    PGresult* res = PQexecParams(conn_, sql.c_str(), static_cast<int>(params.size()), nullptr,
                                 values.data(), nullptr, nullptr, 0);
    const ExecStatusType status = PQresultStatus(res);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
      const std::string why = PQresultErrorMessage(res);
      PQclear(res);
      throw StoreError("postgres: " + why);
    }
    Rows out;
    for (int r = 0; r < PQntuples(res); ++r) {
      std::vector<std::optional<std::string>> row;
      for (int c = 0; c < PQnfields(res); ++c) {
        if (PQgetisnull(res, r, c)) {
          row.emplace_back();
        } else {
          row.emplace_back(
              std::string(PQgetvalue(res, r, c), static_cast<std::size_t>(PQgetlength(res, r, c))));
        }
      }
      out.rows.push_back(std::move(row));
    }
    const char* affected = PQcmdTuples(res);
    out.affected = affected && *affected ? std::strtoll(affected, nullptr, 10) : 0;
    PQclear(res);
    return out;
  }
  void begin() override { exec("BEGIN", {}); }
  void begin_snapshot() override { exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", {}); }
  void commit() override { exec("COMMIT", {}); }
  void rollback() noexcept override {
    PGresult* res = PQexec(conn_, "ROLLBACK");
    PQclear(res);
  }
  std::string backend() const override { return "postgres"; }
  bool broken() const override { return PQstatus(conn_) != CONNECTION_OK; }
  std::string clock_ms_sql() const override {
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)";
  }
  void listen(const std::string& channel) override { exec("LISTEN " + checked(channel), {}); }
  void notify(const std::string& channel) override {
    exec("SELECT pg_notify($1, '')", {checked(channel)});
  }
  bool await_notification(int timeout_ms) override {
    if (drain()) return true;
    pollfd fd{PQsocket(conn_), POLLIN, 0};
    if (fd.fd < 0) throw StoreError("postgres: the connection is closed");
    const int ready = ::poll(&fd, 1, timeout_ms);
    if (ready < 0 && errno != EINTR)
      throw StoreError(std::string("postgres: waiting for a notification: ") +
                       std::strerror(errno));
    if (ready > 0 && PQconsumeInput(conn_) == 0)
      throw StoreError(std::string("postgres: ") + PQerrorMessage(conn_));
    return drain();
  }

 private:
  // Channel names are written into SQL (LISTEN takes no parameter): letters, digits, '_' only.
  static const std::string& checked(const std::string& channel) {
    if (channel.empty() ||
        channel.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") != std::string::npos)
      throw StoreError("postgres: bad notification channel '" + channel + "'");
    return channel;
  }
  bool drain() {
    bool any = false;
    while (PGnotify* n = PQnotifies(conn_)) {
      PQfreemem(n);
      any = true;
    }
    return any;
  }
  PGconn* conn_;
};

}  // namespace

std::unique_ptr<Db> open_db(const std::string& target) {
  if (target.rfind("postgres://", 0) == 0 || target.rfind("postgresql://", 0) == 0) {
    return std::make_unique<Postgres>(target);
  }
  return std::make_unique<Sqlite>(target);
}

}  // namespace ggfleet::store
