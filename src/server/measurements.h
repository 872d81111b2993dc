// The measured side of every prediction: what each instance really delivers, summed from
// llama-server's own `timings` of the requests the proxy relayed. Requests that ran alone on
// their instance (single-stream, as the planner predicts) are kept apart from those that shared
// it with others. Summaries live in memory (the proxy's hot path never waits for the store) and
// are written to the store by flush(), one row per instance and writer (this object: one start
// of one server). Several servers proxy and hear heartbeats for the same instances: what each
// shows is the sum of every writer's row for the instance's current placement, its own included,
// so no server's requests or memory reports overwrite another's.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "server/gateway.h"
#include "store/store.h"

namespace ggfleet::server {

class Measurements {
 public:
  // `writer` names this object's rows in the store; a fresh random name when empty.
  explicit Measurements(std::string writer = "");
  const std::string& writer() const { return writer_; }

  // Generation speed counts requests that generated at least this many tokens; prompt speed,
  // requests that processed at least this many prompt tokens (shorter ones are mostly fixed
  // cost, and the planner predicts a 512-token prompt).
  static constexpr double kMinGeneratedTokens = 2;
  static constexpr double kMinPromptTokens = 32;
  // The deviation event: the last kWindow single-stream requests together more than
  // kDeviation away from the predicted generation speed.
  static constexpr std::size_t kWindow = 20;
  // Requests kept per instance for the chart of measured speed over time.
  static constexpr std::size_t kHistory = 120;
  static constexpr double kDeviation = 0.25;

  // One answered request of `instance`. Never blocks on I/O.
  void record(const std::string& instance, const Timings& t);

  // What the API shows as an instance's "measured": generation and prompt tokens/s of
  // single-stream requests and their sample counts, the same for concurrent ones, and the
  // recent single-stream window, and the history of the last kHistory requests (time_ms, their
  // rates, alone). Null when nothing was measured.
  nlohmann::json view(const std::string& instance) const;

  // Memory a worker measured for `instance`'s processes there: `what` is "WORKER:GPU" (a GPU as
  // the plan numbers it) or "WORKER:host" (llama-server's RAM). Keeps the latest and the peak.
  void memory(const std::string& instance, const std::string& what, double bytes);

  // The API's "memory": per device of the plan (and the main's host) the estimate, the latest
  // measured bytes and the peak (null until measured). `assignment` is the instance's.
  nlohmann::json memory_view(const std::string& instance, const nlohmann::json& assignment) const;

  // The download progress its main worker reported last (null: none under way), to whichever
  // server: the latest report of any writer.
  void download(const std::string& instance, nlohmann::json progress);
  nlohmann::json download_view(const std::string& instance) const;

  // A device whose measured peak exceeds its estimate by more than this share gets the event
  // instance.memory_over_estimate (once per placement and device).
  static constexpr double kMemoryOver = 0.05;

  // Per instance: the placement its sums belong to (the assignment's "placement"; a new
  // placement starts them again) and its single-stream sums. What the learner fits.
  struct Delivered {
    std::string placement;
    double generation_samples = 0, generated_tokens = 0, generation_s = 0;
    double prompt_samples = 0, prompt_tokens = 0, prompt_s = 0;
  };
  std::map<std::string, Delivered> delivered() const;
  // An assignment's "placement" (unique per placement); "" when it has none.
  static std::string placement_of(const std::string& assignment_json);
  static std::string placement_in(const nlohmann::json& assignment);  // the same, parsed

  // Writes the summaries that changed to the store (a summary whose instance was placed anew since
  // starts again: its numbers belonged to the old layout), forgets instances that are gone, reads
  // the rows of the other writers (other servers, or this one before a restart) for each
  // instance's current placement, and records an event when the recent single-stream generation
  // speed this writer measured moves more than kDeviation away from the prediction
  // (instance.speed_deviation) or back within it (instance.speed_ok). A writer starts from the
  // state the others announced, so one that takes over an instance does not announce it again.
  void flush(store::Store& store);

 private:
  struct Memory {
    double latest = 0, peak = 0;
    std::int64_t at_ms = 0;  // when `latest` was reported
  };
  struct Sums {
    double requests = 0;  // every request counted here
    double generation_samples = 0, generated_tokens = 0, generation_s = 0;
    double prompt_samples = 0, prompt_tokens = 0, prompt_s = 0;
  };
  struct Summary {
    Sums alone, shared;
    std::deque<std::pair<double, double>> recent;  // (tokens, seconds) of the last kWindow alone
    bool deviating = false;                        // the event was raised and not yet cleared
    bool dirty = false;                            // changed since the last flush
    std::string placement;                         // of the instance when last flushed
    std::map<std::string, Memory> memory;          // "WORKER:GPU" -> its figures
    std::vector<std::string> memory_over;          // devices whose excess was announced
    // The last kHistory requests with a rate: {time_ms, generation_tokens_per_s,
    // prompt_tokens_per_s (each null below the sample thresholds), alone}.
    std::deque<nlohmann::json> history;
    std::int64_t flushed_ms = 0;  // when its row was last written
    nlohmann::json download;      // the last download progress reported (null: none)
    std::int64_t download_at_ms = 0;
  };
  // `b` (another writer's row of the same instance and placement) added to `a`: sums and
  // windows joined, the later of the two latest memory figures, the larger peak, the announced
  // state of the row written last.
  static void merge(Summary& a, const Summary& b);
  // A new summary of this writer continues the others' announced state. REQUIRES: mu_.
  void adopt(const std::string& instance, Summary& s) const;
  // This writer's summary and the others' together; nullopt when neither has one. REQUIRES: mu_.
  std::optional<Summary> combined(const std::string& instance) const;
  // (what, estimated bytes) of every device of an assignment's plan and of its main's host.
  static std::vector<std::pair<std::string, double>> estimates(const nlohmann::json& assignment);
  static void add(Sums& s, const Timings& t);
  static nlohmann::json sums_json(const Sums& s);
  static Sums sums_from(const nlohmann::json& j);
  static nlohmann::json summary_json(const Summary& s);
  static Summary summary_from(const nlohmann::json& j);

  mutable std::mutex mu_;
  std::string writer_;
  std::map<std::string, Summary> mine_;        // measured by this server's proxy and heartbeats
  std::map<std::string, Summary> from_store_;  // the other writers' rows, merged
  std::chrono::steady_clock::time_point last_read_;  // of the store's rows, by flush()
};

}  // namespace ggfleet::server
