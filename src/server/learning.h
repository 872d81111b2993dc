// The fleet learns from its own measurements: every running placement whose single-stream speed
// was measured becomes an observation of its prediction's parts (the basis kept in its
// assignment); the observations of all placements, past ones included, are kept in the store
// (bounded, decaying) and perf::learn fits the correction factors the scheduler and the planner
// use for every later plan. An event says when the factors change.
//
// Thread safety: update() runs on the scheduling loop's thread; corrections() and view() from
// any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>

#include "perf/corrections.h"
#include "server/measurements.h"
#include "store/store.h"

namespace ggfleet::server {

class Learner {
 public:
  static constexpr std::size_t kMaxObservations = 500;
  // A factor that moves this much (relative) since the last event is announced again.
  static constexpr double kAnnounce = 0.1;

  explicit Learner(perf::LearnOptions options = {}, std::int64_t period_ms = 2000);

  // At most once per period: turns the measured placements of `m` into observations, merges
  // them with the stored ones, refits and stores the result. Returns true when the factors
  // changed (then a "calibration.updated" event names them), and on the first call when there
  // are factors (stored ones, or learned then).
  bool update(store::Store& store, const Measurements& m);

  // The factors in force (the stored ones until the first update).
  perf::Corrections corrections() const;

  // GET /v1/calibration: {"calibration": the file `ggfleet calibration export` writes,
  // "explanation": one line per factor, "observations": how many placements stand behind them}.
  nlohmann::json view() const;

 private:
  perf::LearnOptions options_;
  std::int64_t period_ms_;
  std::chrono::steady_clock::time_point last_{};
  bool loaded_ = false;
  std::map<std::string, double> used_;       // observation id -> samples when last merged
  std::map<std::string, double> announced_;  // "kind key" -> value of the last event
  mutable std::mutex mu_;
  perf::Corrections current_;
  std::size_t observations_ = 0;
};

}  // namespace ggfleet::server
