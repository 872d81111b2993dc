#include "server/learning.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace ggfleet::server {

using nlohmann::json;

namespace {

constexpr const char* kDocument = "fleet";

bool same_factors(const std::map<std::string, perf::Factor>& a,
                  const std::map<std::string, perf::Factor>& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [key, f] : a) {
    const auto it = b.find(key);
    if (it == b.end() || std::abs(it->second.value / f.value - 1) > 1e-3) return false;
  }
  return true;
}

}  // namespace

Learner::Learner(perf::LearnOptions options, std::int64_t period_ms)
    : options_(options), period_ms_(period_ms) {}

perf::Corrections Learner::corrections() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

json Learner::view() const {
  std::lock_guard<std::mutex> lock(mu_);
  return {{"calibration", perf::corrections_json(current_)},
          {"explanation", perf::describe(current_)},
          {"observations", observations_}};
}

namespace {

// The stored document: every server's observations (placements that are gone included) and the
// factors last fitted. Unreadable parts are skipped (and dropped at the next write).
void read_document(store::Store& store, std::vector<perf::Observation>& observations,
                   perf::Corrections& corrections) {
  const std::optional<std::string> body = store.calibration(kDocument);
  if (!body) return;
  const json doc = json::parse(*body, nullptr, false);
  if (!doc.is_object()) return;
  for (const json& o : doc.value("observations", json::array())) {
    try {
      observations.push_back(perf::observation_from_json(o));
    } catch (const std::runtime_error&) {
    }
  }
  try {
    corrections = perf::corrections_from_json(doc.value("corrections", json::object()));
  } catch (const std::runtime_error&) {
  }
}

}  // namespace

bool Learner::update(store::Store& store, const Measurements& m) {
  const auto now = std::chrono::steady_clock::now();
  if (loaded_ && now - last_ < std::chrono::milliseconds(period_ms_)) return false;
  last_ = now;
  const std::int64_t now_ms = store::now_ms();

  const bool first = !loaded_;
  bool stored_any = false;
  if (first) {  // what an earlier run (or another server) learned applies from the start
    loaded_ = true;
    std::vector<perf::Observation> observations;
    perf::Corrections stored;
    read_document(store, observations, stored);
    stored_any = !stored.empty();
    std::lock_guard<std::mutex> lock(mu_);
    current_ = stored;
    observations_ = observations.size();
    for (const auto& [kind, map] :
         {std::pair{"generation", &stored.generation}, {"prompt", &stored.prompt}}) {
      for (const auto& [key, f] : *map) announced_[std::string(kind) + " " + key] = f.value;
    }
  }

  // New evidence: placements measured since the last update, with the basis of their
  // prediction from their assignment (the measured placement must still be the current one).
  std::vector<perf::Observation> fresh;
  std::set<std::string> current_ids;
  std::optional<std::map<std::string, store::InstanceRow>> instances;
  for (const auto& [id, d] : m.delivered()) {
    if (d.placement.empty() || (d.generation_samples <= 0 && d.prompt_samples <= 0)) continue;
    const std::string obs_id = id + "@" + d.placement;
    current_ids.insert(obs_id);
    const double samples = d.generation_samples + d.prompt_samples;
    if (const auto it = used_.find(obs_id); it != used_.end() && it->second == samples) continue;
    if (!instances) {
      instances.emplace();
      for (store::InstanceRow& i : store.instances()) (*instances)[i.id] = std::move(i);
    }
    const auto inst = instances->find(id);
    if (inst == instances->end()) continue;
    if (Measurements::placement_of(inst->second.assignment_json) != d.placement) continue;
    const json a = json::parse(inst->second.assignment_json, nullptr, false);
    if (!a.is_object() || !a.contains("basis")) continue;
    perf::Observation o;
    try {
      o.basis = perf::basis_from_json(a["basis"]);
    } catch (const std::runtime_error&) {
      continue;
    }
    o.id = obs_id;
    o.updated_ms = now_ms;
    if (d.generated_tokens > 0 && d.generation_s > 0) {
      o.measured_generation_s = d.generation_s / d.generated_tokens;
      o.generation_samples = d.generation_samples;
    }
    if (d.prompt_tokens > 0 && d.prompt_s > 0) {
      o.measured_prompt_s = d.prompt_s / d.prompt_tokens;
      o.prompt_samples = d.prompt_samples;
    }
    fresh.push_back(std::move(o));
    used_[obs_id] = samples;
  }
  std::erase_if(used_, [&](const auto& kv) { return !current_ids.count(kv.first); });
  if (fresh.empty()) return stored_any;  // a restart: the stored factors are news

  // Merged into what is stored now (another server may have written since).
  std::vector<perf::Observation> observations;
  perf::Corrections ignored;
  read_document(store, observations, ignored);
  for (perf::Observation& o : fresh) {
    const auto same = std::find_if(observations.begin(), observations.end(),
                                   [&](const perf::Observation& x) { return x.id == o.id; });
    if (same != observations.end()) {
      *same = std::move(o);
    } else {
      observations.push_back(std::move(o));
    }
  }
  observations = perf::retained(std::move(observations), now_ms, kMaxObservations, options_);
  const perf::Corrections learned = perf::learn(observations, now_ms, options_);
  json list = json::array();
  for (const perf::Observation& o : observations) list.push_back(perf::observation_json(o));
  store.put_calibration(
      kDocument,
      json{{"observations", list}, {"corrections", perf::corrections_json(learned)}}.dump());
  bool changed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    changed = !same_factors(learned.generation, current_.generation) ||
              !same_factors(learned.prompt, current_.prompt);
    current_ = learned;
    observations_ = observations.size();
  }
  // Announced: factors that are new, moved by more than kAnnounce, or no longer apply.
  std::set<std::string> now_keys;
  std::vector<std::string> news;
  for (const auto& [kind, map] :
       {std::pair{"generation", &learned.generation}, {"prompt", &learned.prompt}}) {
    for (const auto& [key, f] : *map) {
      const std::string k = std::string(kind) + " " + key;
      now_keys.insert(k);
      const auto it = announced_.find(k);
      if (it == announced_.end() || std::abs(f.value / it->second - 1) > kAnnounce) {
        news.push_back(perf::describe_factor(key, kind, f));
        announced_[k] = f.value;
      }
    }
  }
  for (auto it = announced_.begin(); it != announced_.end();) {
    if (now_keys.count(it->first)) {
      ++it;
      continue;
    }
    news.push_back(it->first + ": no longer applies");
    it = announced_.erase(it);
  }
  if (!news.empty()) {
    std::string message = "learned from " + std::to_string(observations.size()) + " placement(s): ";
    for (std::size_t i = 0; i < news.size(); ++i) message += (i ? "; " : "") + news[i];
    store.event("calibration.updated", "fleet", message);
  }
  return changed || first;  // on the first pass the scheduler has no factors yet
}

}  // namespace ggfleet::server
