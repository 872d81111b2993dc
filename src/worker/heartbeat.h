// What a worker's heartbeat carries. A heartbeat proves the worker alive; its three parts — the
// resources (GPUs, RAM, cache), the instance reports and the memory its processes hold — change
// rarely in a running fleet. Sending them every beat made every heartbeat a database write on the
// server; a heartbeat without them (`{}`) is answered from the server's memory. So each part is
// sent when it changed in a way the server acts on since the server last acknowledged it, and
// every part at least once per full period (a lost write, or another server's memory, is mended by
// then). Each period is drawn between half and one and a half `full_every`, so workers started
// together do not send their full reports together.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

namespace ggfleet::worker {

// Whether the server would see `before` and `after` as the same report. Objects and arrays
// compare member by member; numbers that measure what moves all the time compare with a
// tolerance by their key: "used" (GPU or RAM bytes in use) 64 MiB, "bytes" and "host_bytes" (a
// process's memory) 1 % or 1 MiB, "last_use_ms" 60 s, "download_bytes_per_s" 10 %. Anything else
// must be equal.
bool same_for_the_server(const nlohmann::json& before, const nlohmann::json& after);

class HeartbeatDelta {
 public:
  using Clock = std::chrono::steady_clock;
  // `seed` draws the periods (a worker's name hashed, say).
  HeartbeatDelta(std::chrono::milliseconds full_every, std::uint32_t seed)
      : full_every_(full_every), draw_(seed) {}

  struct Beat {
    nlohmann::json body;  // `{}` when nothing changed
    bool full = false;    // every part: the period ran out, or nothing is known yet
  };
  // What to send now, from `parts` (an object of the parts the worker has: "resources",
  // "instances", "memory"): the parts that changed since acknowledged (an empty list the server
  // never had is no change), or all of them when a full report is due.
  Beat next(const nlohmann::json& parts, Clock::time_point now) const;

  // The server answered `sent` (from next(), at `now`) with 200: its parts are what it knows. A
  // full report starts the next period.
  void acknowledged(const Beat& sent, Clock::time_point now);

  // The worker registered (again) at `now`, its registration carrying `resources`: the server
  // knows those and nothing else of it; the period starts.
  void registered(const nlohmann::json& resources, Clock::time_point now);

  // The next body carries every part.
  void forget();
  // The next body carries `part`.
  void forget(const std::string& part) { known_.erase(part); }

  // When the next full report is due (Clock::time_point::min() when at once).
  Clock::time_point full_due() const { return full_due_; }

 private:
  void start_period(Clock::time_point now);
  std::chrono::milliseconds full_every_;
  std::mt19937 draw_;
  std::map<std::string, nlohmann::json> known_;  // part -> as last acknowledged
  Clock::time_point full_due_ = Clock::time_point::min();
};

}  // namespace ggfleet::worker
