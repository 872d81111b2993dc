#include "worker/heartbeat.h"

#include <algorithm>
#include <cmath>

namespace ggfleet::worker {

namespace {

using nlohmann::json;

constexpr double kMiB = 1024.0 * 1024.0;

// How far two values of `key` may lie apart and still be the same report.
double tolerance(const std::string& key, double a, double b) {
  const double larger = std::max(std::abs(a), std::abs(b));
  if (key == "used") return 64 * kMiB;
  if (key == "bytes" || key == "host_bytes") return std::max(kMiB, 0.01 * larger);
  if (key == "last_use_ms") return 60000;
  if (key == "download_bytes_per_s") return 0.1 * larger;
  return 0;
}

bool same(const json& a, const json& b, const std::string& key) {
  if (a.is_number() && b.is_number()) {
    const double x = a.get<double>(), y = b.get<double>();
    return std::abs(x - y) <= tolerance(key, x, y);
  }
  if (a.type() != b.type()) return false;
  if (a.is_object()) {
    if (a.size() != b.size()) return false;
    for (auto it = a.begin(); it != a.end(); ++it) {
      const auto other = b.find(it.key());
      if (other == b.end() || !same(it.value(), *other, it.key())) return false;
    }
    return true;
  }
  if (a.is_array()) {
    if (a.size() != b.size()) return false;
    for (std::size_t k = 0; k < a.size(); ++k) {
      if (!same(a[k], b[k], key)) return false;
    }
    return true;
  }
  return a == b;
}

}  // namespace

bool same_for_the_server(const json& before, const json& after) {
  return same(before, after, "");
}

HeartbeatDelta::Beat HeartbeatDelta::next(const json& parts, Clock::time_point now) const {
  Beat beat{json::object(), now >= full_due_};
  for (auto it = parts.begin(); it != parts.end(); ++it) {
    const auto known = known_.find(it.key());
    // An empty list the server never had says nothing to it (no reports, no memory held).
    if (!beat.full && known == known_.end() && it.value().empty()) continue;
    if (beat.full || known == known_.end() || !same_for_the_server(known->second, it.value()))
      beat.body[it.key()] = it.value();
  }
  return beat;
}

void HeartbeatDelta::acknowledged(const Beat& sent, Clock::time_point now) {
  for (auto it = sent.body.begin(); it != sent.body.end(); ++it) known_[it.key()] = it.value();
  if (sent.full) start_period(now);
}

void HeartbeatDelta::registered(const json& resources, Clock::time_point now) {
  known_.clear();
  known_["resources"] = resources;
  start_period(now);
}

void HeartbeatDelta::forget() {
  known_.clear();
  full_due_ = Clock::time_point::min();
}

void HeartbeatDelta::start_period(Clock::time_point now) {
  std::uniform_real_distribution<double> factor(0.5, 1.5);
  full_due_ =
      now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(
                factor(draw_) * static_cast<double>(full_every_.count())));
}

}  // namespace ggfleet::worker
