// A fresh database per test on each backend: a SQLite file in a temp dir, or a PostgreSQL schema
// in the server named by GGFLEET_TEST_PG_URL (scripts/postgres prints one). Without that
// variable the PostgreSQL cases are skipped, unless GGFLEET_REQUIRE_PG=1 (CI), which fails them.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "store/db.h"
#include "test_util.h"

namespace ggfleet::test {

inline std::vector<std::string> store_backends() {
  return {"sqlite", "postgres"};
}

class TestDb {
 public:
  explicit TestDb(const std::string& backend) : backend_(backend) {
    if (backend == "sqlite") {
      target_ = dir_.file("ggfleet.db");
      return;
    }
    const char* url = std::getenv("GGFLEET_TEST_PG_URL");
    if (url == nullptr || *url == '\0') {
      const char* require = std::getenv("GGFLEET_REQUIRE_PG");
      if (require != nullptr && std::string(require) == "1") {
        ADD_FAILURE()
            << "GGFLEET_REQUIRE_PG=1 but GGFLEET_TEST_PG_URL is not set (run scripts/postgres)";
      }
      return;
    }
    base_ = url;
    if (base_.rfind("postgres://", 0) != 0 && base_.rfind("postgresql://", 0) != 0) {
      ADD_FAILURE() << "GGFLEET_TEST_PG_URL is not a postgres:// URL: '" << base_ << "'";
      base_.clear();
      return;
    }
    std::random_device rd;
    schema_ = "t" + std::to_string(rd()) + std::to_string(rd());
    store::open_db(base_)->exec("CREATE SCHEMA " + schema_);
    target_ = base_ + (base_.find('?') == std::string::npos ? "?" : "&") +
              "options=-csearch_path%3D" + schema_;
  }
  ~TestDb() {
    if (!schema_.empty()) {
      try {
        store::open_db(base_)->exec("DROP SCHEMA " + schema_ + " CASCADE");
      } catch (...) {
      }
    }
  }
  bool available() const { return !target_.empty(); }
  const std::string& target() const { return target_; }

 private:
  std::string backend_;
  TempDir dir_;
  std::string base_, schema_, target_;
};

}  // namespace ggfleet::test
