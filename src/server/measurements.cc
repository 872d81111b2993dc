#include "server/measurements.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <set>

namespace ggfleet::server {

using nlohmann::json;

namespace {

// tokens / seconds, or null without samples.
json rate(double tokens, double seconds) {
  return seconds > 0 && tokens > 0 ? json(tokens / seconds) : json(nullptr);
}

std::string fixed1(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

std::int64_t count(double n) {
  return static_cast<std::int64_t>(n);
}

double number(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0;
}

}  // namespace

Measurements::Measurements(std::string writer) : writer_(std::move(writer)) {
  if (writer_.empty()) {
    std::random_device random;
    char name[32];
    std::snprintf(name, sizeof name, "writer-%08x%08x", random(), random());
    writer_ = name;
  }
}

void Measurements::adopt(const std::string& instance, Summary& s) const {
  const auto st = from_store_.find(instance);
  if (st == from_store_.end()) return;
  s.placement = st->second.placement;
  s.deviating = st->second.deviating;
  s.memory_over = st->second.memory_over;
}

void Measurements::add(Sums& s, const Timings& t) {
  ++s.requests;
  if (t.generated_tokens >= kMinGeneratedTokens && t.generation_s > 0) {
    ++s.generation_samples;
    s.generated_tokens += t.generated_tokens;
    s.generation_s += t.generation_s;
  }
  if (t.prompt_tokens >= kMinPromptTokens && t.prompt_s > 0) {
    ++s.prompt_samples;
    s.prompt_tokens += t.prompt_tokens;
    s.prompt_s += t.prompt_s;
  }
}

void Measurements::record(const std::string& instance, const Timings& t) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, fresh] = mine_.try_emplace(instance);
  Summary& s = it->second;
  if (fresh) adopt(instance, s);
  add(t.alone ? s.alone : s.shared, t);
  if (t.alone && t.generated_tokens >= kMinGeneratedTokens && t.generation_s > 0) {
    s.recent.emplace_back(t.generated_tokens, t.generation_s);
    if (s.recent.size() > kWindow) s.recent.pop_front();
  }
  const json generation = t.generated_tokens >= kMinGeneratedTokens
                              ? rate(t.generated_tokens, t.generation_s)
                              : json(nullptr);
  const json prompt =
      t.prompt_tokens >= kMinPromptTokens ? rate(t.prompt_tokens, t.prompt_s) : json(nullptr);
  if (!generation.is_null() || !prompt.is_null()) {
    s.history.push_back({{"time_ms", store::now_ms()},
                         {"generation_tokens_per_s", generation},
                         {"prompt_tokens_per_s", prompt},
                         {"alone", t.alone}});
    if (s.history.size() > kHistory) s.history.pop_front();
  }
  s.dirty = true;
}

void Measurements::memory(const std::string& instance, const std::string& what, double bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto [it, fresh] = mine_.try_emplace(instance);
  Summary& s = it->second;
  if (fresh) adopt(instance, s);
  const std::int64_t now = store::now_ms();
  auto [m, added] = s.memory.try_emplace(what, Memory{bytes, bytes, now});
  const double before = m->second.latest;
  m->second.latest = bytes;
  m->second.at_ms = now;
  // Written when it moves (a new peak, or 1 % from what was written), not every heartbeat.
  if (added || bytes > m->second.peak || std::abs(bytes - before) > 0.01 * before) s.dirty = true;
  m->second.peak = std::max(m->second.peak, bytes);
}

void Measurements::merge(Summary& a, const Summary& b) {
  for (auto [x, y] : {std::pair{&a.alone, &b.alone}, {&a.shared, &b.shared}}) {
    x->requests += y->requests;
    x->generation_samples += y->generation_samples;
    x->generated_tokens += y->generated_tokens;
    x->generation_s += y->generation_s;
    x->prompt_samples += y->prompt_samples;
    x->prompt_tokens += y->prompt_tokens;
    x->prompt_s += y->prompt_s;
  }
  a.recent.insert(a.recent.end(), b.recent.begin(), b.recent.end());
  while (a.recent.size() > kWindow) a.recent.pop_front();
  if (b.flushed_ms > a.flushed_ms) {
    a.deviating = b.deviating;
    a.flushed_ms = b.flushed_ms;
  }
  if (a.placement.empty()) a.placement = b.placement;
  if (b.download_at_ms > a.download_at_ms) {
    a.download = b.download;
    a.download_at_ms = b.download_at_ms;
  }
  for (const auto& [what, m] : b.memory) {
    auto [x, added] = a.memory.try_emplace(what, m);
    if (added) continue;
    if (m.at_ms > x->second.at_ms) {
      x->second.latest = m.latest;
      x->second.at_ms = m.at_ms;
    }
    x->second.peak = std::max(x->second.peak, m.peak);
  }
  for (const std::string& d : b.memory_over) {
    if (std::find(a.memory_over.begin(), a.memory_over.end(), d) == a.memory_over.end())
      a.memory_over.push_back(d);
  }
  if (!b.history.empty()) {
    std::vector<json> points(a.history.begin(), a.history.end());
    points.insert(points.end(), b.history.begin(), b.history.end());
    std::stable_sort(points.begin(), points.end(), [](const json& p, const json& q) {
      return p.value("time_ms", std::int64_t{0}) < q.value("time_ms", std::int64_t{0});
    });
    const std::size_t drop = points.size() > kHistory ? points.size() - kHistory : 0;
    a.history.assign(points.begin() + static_cast<std::ptrdiff_t>(drop), points.end());
  }
}

std::optional<Measurements::Summary> Measurements::combined(const std::string& instance) const {
  const auto mine = mine_.find(instance);
  const auto others = from_store_.find(instance);
  if (mine == mine_.end()) {
    if (others == from_store_.end()) return std::nullopt;
    return others->second;
  }
  Summary s = mine->second;
  if (others != from_store_.end() && (s.placement.empty() || others->second.placement.empty() ||
                                      s.placement == others->second.placement))
    merge(s, others->second);
  return s;
}

namespace {

// An assignment's plan.layout; an empty object when it has none.
json layout_of(const json& assignment) {
  if (!assignment.is_object()) return json::object();
  const auto plan = assignment.find("plan");
  if (plan == assignment.end() || !plan->is_object()) return json::object();
  const auto layout = plan->find("layout");
  return layout != plan->end() && layout->is_object() ? *layout : json::object();
}

}  // namespace

std::vector<std::pair<std::string, double>> Measurements::estimates(const json& assignment) {
  std::vector<std::pair<std::string, double>> out;
  const json layout = layout_of(assignment);
  const json devices = layout.value("devices", json::array());
  for (const json& d : devices.is_array() ? devices : json::array()) {
    if (!d.is_object()) continue;
    out.emplace_back(d.value("worker", "") + ":" + std::to_string(d.value("gpu", 0)),
                     d.value("vram_bytes", 0.0));
  }
  const std::string main = layout.value("main_worker", "");
  const json host = layout.value("host", json::object());
  if (!main.empty() && host.is_object())
    out.emplace_back(main + ":host", host.value("total_bytes", 0.0));
  return out;
}

json Measurements::memory_view(const std::string& instance, const json& assignment) const {
  std::map<std::string, Memory> measured;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (const std::optional<Summary> s = combined(instance)) measured = s->memory;
  }
  json names = json::object();  // "WORKER:GPU" -> the device's name in llama.cpp's order
  const json devices = layout_of(assignment).value("devices", json::array());
  for (const json& d : devices.is_array() ? devices : json::array()) {
    if (d.is_object())
      names[d.value("worker", "") + ":" + std::to_string(d.value("gpu", 0))] = d.value("name", "");
  }
  json out = json::array();
  for (const auto& [what, estimated] : estimates(assignment)) {
    const auto colon = what.rfind(':');
    const bool host = what.compare(colon + 1, std::string::npos, "host") == 0;
    json row = {{"device", host ? "host" : names.value(what, what)},
                {"worker", what.substr(0, colon)},
                {"estimated_bytes", estimated},
                {"measured_bytes", nullptr},
                {"peak_bytes", nullptr}};
    if (!host) row["gpu"] = std::stoi(what.substr(colon + 1));
    if (const auto m = measured.find(what); m != measured.end()) {
      row["measured_bytes"] = m->second.latest;
      row["peak_bytes"] = m->second.peak;
    }
    out.push_back(std::move(row));
  }
  return out;
}

json Measurements::sums_json(const Sums& s) {
  return {{"requests", s.requests},
          {"generation_samples", s.generation_samples},
          {"generated_tokens", s.generated_tokens},
          {"generation_s", s.generation_s},
          {"prompt_samples", s.prompt_samples},
          {"prompt_tokens", s.prompt_tokens},
          {"prompt_s", s.prompt_s}};
}

Measurements::Sums Measurements::sums_from(const json& j) {
  Sums s;
  if (!j.is_object()) return s;
  s.requests = number(j, "requests");
  s.generation_samples = number(j, "generation_samples");
  s.generated_tokens = number(j, "generated_tokens");
  s.generation_s = number(j, "generation_s");
  s.prompt_samples = number(j, "prompt_samples");
  s.prompt_tokens = number(j, "prompt_tokens");
  s.prompt_s = number(j, "prompt_s");
  return s;
}

json Measurements::summary_json(const Summary& s) {
  json recent = json::array();
  for (const auto& [tokens, seconds] : s.recent) recent.push_back({tokens, seconds});
  json memory = json::object();
  for (const auto& [what, m] : s.memory) memory[what] = {m.latest, m.peak, m.at_ms};
  return {{"alone", sums_json(s.alone)},
          {"shared", sums_json(s.shared)},
          {"recent", recent},
          {"deviating", s.deviating},
          {"placement", s.placement},
          {"memory", memory},
          {"memory_over", s.memory_over},
          {"history", s.history},
          {"flushed_ms", s.flushed_ms},
          {"download", s.download},
          {"download_at_ms", s.download_at_ms}};
}

Measurements::Summary Measurements::summary_from(const json& j) {
  Summary s;
  if (!j.is_object()) return s;
  s.alone = sums_from(j.value("alone", json::object()));
  s.shared = sums_from(j.value("shared", json::object()));
  for (const json& r : j.value("recent", json::array())) {
    if (r.is_array() && r.size() == 2 && r[0].is_number() && r[1].is_number())
      s.recent.emplace_back(r[0].get<double>(), r[1].get<double>());
  }
  s.deviating = j.value("deviating", false);
  const auto placement = j.find("placement");
  if (placement != j.end() && placement->is_string()) s.placement = placement->get<std::string>();
  const json memory = j.value("memory", json::object());
  if (memory.is_object()) {
    for (const auto& [what, m] : memory.items()) {
      // [latest, peak, at_ms] ([latest, peak] from before several servers)
      if (m.is_array() && m.size() >= 2 && m[0].is_number() && m[1].is_number())
        s.memory[what] = {m[0].get<double>(), m[1].get<double>(),
                          m.size() > 2 && m[2].is_number_integer() ? m[2].get<std::int64_t>() : 0};
    }
  }
  for (const json& d : j.value("memory_over", json::array())) {
    if (d.is_string()) s.memory_over.push_back(d.get<std::string>());
  }
  for (const json& h : j.value("history", json::array())) {
    if (h.is_object() && h.value("time_ms", json()).is_number_integer() &&
        s.history.size() < kHistory)
      s.history.push_back(h);
  }
  const auto flushed = j.find("flushed_ms");
  if (flushed != j.end() && flushed->is_number_integer())
    s.flushed_ms = flushed->get<std::int64_t>();
  const auto download = j.find("download");
  const auto download_at = j.find("download_at_ms");
  if (download_at != j.end() && download_at->is_number_integer()) {
    s.download = download != j.end() && download->is_object() ? *download : json();
    s.download_at_ms = download_at->get<std::int64_t>();
  }
  return s;
}

std::string Measurements::placement_of(const std::string& assignment_json) {
  return placement_in(json::parse(assignment_json, nullptr, false));
}

std::string Measurements::placement_in(const json& a) {
  if (!a.is_object()) return "";
  const auto it = a.find("placement");
  if (it == a.end()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

std::map<std::string, Measurements::Delivered> Measurements::delivered() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::set<std::string> ids;
  for (const auto& [id, s] : mine_) ids.insert(id);
  for (const auto& [id, s] : from_store_) ids.insert(id);
  std::map<std::string, Delivered> out;
  for (const std::string& id : ids) {
    const Summary s = *combined(id);
    out[id] = {s.placement,          s.alone.generation_samples, s.alone.generated_tokens,
               s.alone.generation_s, s.alone.prompt_samples,     s.alone.prompt_tokens,
               s.alone.prompt_s};
  }
  return out;
}

json Measurements::view(const std::string& instance) const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::optional<Summary> found = combined(instance);
  if (!found) return nullptr;
  const Summary& s = *found;
  double recent_tokens = 0, recent_s = 0;
  for (const auto& [tokens, seconds] : s.recent) {
    recent_tokens += tokens;
    recent_s += seconds;
  }
  return {{"generation_tokens_per_s", rate(s.alone.generated_tokens, s.alone.generation_s)},
          {"prompt_tokens_per_s", rate(s.alone.prompt_tokens, s.alone.prompt_s)},
          {"samples", count(s.alone.requests)},
          {"generation_samples", count(s.alone.generation_samples)},
          {"prompt_samples", count(s.alone.prompt_samples)},
          {"recent_generation_tokens_per_s", rate(recent_tokens, recent_s)},
          {"recent_samples", s.recent.size()},
          {"concurrent",
           {{"generation_tokens_per_s", rate(s.shared.generated_tokens, s.shared.generation_s)},
            {"prompt_tokens_per_s", rate(s.shared.prompt_tokens, s.shared.prompt_s)},
            {"samples", count(s.shared.requests)}}},
          {"history", s.history}};
}

void Measurements::flush(store::Store& store) {
  // Nothing new here: the other servers' rows are read every few seconds only.
  const auto started = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(mu_);
    const bool any_dirty =
        std::any_of(mine_.begin(), mine_.end(), [](const auto& kv) { return kv.second.dirty; });
    if (!any_dirty && started - last_read_ < std::chrono::seconds(5)) return;
    last_read_ = started;
  }
  // The store is read and written outside the lock: record() runs on the proxy's loop.
  std::map<std::string, double> alive;  // instance -> its predicted generation tokens/s
  const std::vector<store::InstanceRow> instances = store.instances();
  std::map<std::string, const std::string*> assignments;  // read only for changed summaries
  for (const store::InstanceRow& i : instances) {
    alive[i.id] = i.predicted_tokens_per_s;
    assignments[i.id] = &i.assignment_json;
  }
  std::map<std::string, Summary> changed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = mine_.begin(); it != mine_.end();) {
      if (!alive.count(it->first)) {
        it = mine_.erase(it);  // deleted: its row went with it
        continue;
      }
      if (it->second.dirty) {
        changed[it->first] = it->second;
        it->second.dirty = false;
      }
      ++it;
    }
  }
  std::map<std::string, bool> deviating;      // instance -> its new state, where it changed
  std::map<std::string, std::string> placed;  // instance -> placement, where it changed
  std::map<std::string, std::vector<std::string>> over;  // instance -> devices newly announced
  for (auto& [id, s] : changed) {
    const json assignment = json::parse(*assignments[id], nullptr, false);
    const std::string placement = placement_in(assignment);
    if (placement != s.placement) {
      if (!s.placement.empty()) {  // placed anew: the numbers so far were another layout's
        Summary fresh;
        fresh.placement = placement;
        s = fresh;
      }
      s.placement = placement;
      placed[id] = placement;
    }
    double tokens = 0, seconds = 0;
    for (const auto& [t, sec] : s.recent) {
      tokens += t;
      seconds += sec;
    }
    const double predicted = alive[id];
    if (s.recent.size() >= kWindow && seconds > 0 && predicted > 0) {
      const double measured = tokens / seconds;
      const double off = measured / predicted - 1;
      const bool now = std::abs(off) > kDeviation;
      if (now != s.deviating) {
        s.deviating = now;
        deviating[id] = now;
        store.event(now ? "instance.speed_deviation" : "instance.speed_ok", id,
                    "measured " + fixed1(measured) + " tokens/s over the last " +
                        std::to_string(s.recent.size()) + " single-stream requests, predicted " +
                        fixed1(predicted) + " (" + (off >= 0 ? "+" : "") + fixed1(100 * off) +
                        " %)");
      }
    }
    if (!s.memory.empty()) {
      for (const auto& [what, estimated] : estimates(assignment)) {
        const auto m = s.memory.find(what);
        if (m == s.memory.end() || estimated <= 0 ||
            m->second.peak <= (1 + kMemoryOver) * estimated ||
            std::find(s.memory_over.begin(), s.memory_over.end(), what) != s.memory_over.end())
          continue;
        s.memory_over.push_back(what);
        over[id].push_back(what);
        char msg[256];
        std::snprintf(msg, sizeof msg, "%s: measured %.1f MiB, estimated %.1f MiB (+%.1f %%)",
                      what.c_str(), m->second.peak / 1048576.0, estimated / 1048576.0,
                      100 * (m->second.peak / estimated - 1));
        store.event("instance.memory_over_estimate", id, msg);
      }
    }
    s.flushed_ms = store::now_ms();
    store.put_measurement(id, writer_, summary_json(s).dump());
  }
  // The other writers' rows, each instance's for its current placement merged into one.
  std::map<std::string, Summary> others;
  for (const auto& [id, rows] : store.measurements()) {
    const auto a = assignments.find(id);
    if (a == assignments.end()) continue;  // deleted since the instances were read
    std::string placement;
    bool parsed = false;
    for (const auto& [writer, body] : rows) {
      if (writer == writer_) continue;
      const Summary s = summary_from(json::parse(body, nullptr, false));
      if (!parsed) {
        placement = placement_of(*a->second);
        parsed = true;
      }
      if (!s.placement.empty() && s.placement != placement) continue;  // another layout's
      auto [o, first] = others.try_emplace(id, s);
      if (!first) merge(o->second, s);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [id, now] : deviating) {
    if (const auto it = mine_.find(id); it != mine_.end()) it->second.deviating = now;
  }
  for (const auto& [id, devices] : over) {
    if (const auto it = mine_.find(id); it != mine_.end()) {
      for (const std::string& d : devices) {
        if (std::find(it->second.memory_over.begin(), it->second.memory_over.end(), d) ==
            it->second.memory_over.end())
          it->second.memory_over.push_back(d);
      }
    }
  }
  for (const auto& [id, placement] : placed) {
    const auto it = mine_.find(id);
    if (it == mine_.end()) continue;
    if (!it->second.placement.empty() && it->second.placement != placement) {
      // Placed anew: the restarted summary replaces this one (requests recorded while this
      // flush ran go with the old numbers: they cannot be told apart).
      const Summary& flushed = changed[id];
      it->second.alone = flushed.alone;
      it->second.shared = flushed.shared;
      it->second.recent = flushed.recent;
      it->second.deviating = flushed.deviating;
      it->second.memory = flushed.memory;
      it->second.memory_over = flushed.memory_over;
    }
    it->second.placement = placement;
  }
  from_store_ = std::move(others);
}

void Measurements::download(const std::string& instance, json progress) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = mine_.find(instance);
  if (it == mine_.end()) {
    // Most reports have no download: no summary is started for them, unless a download some
    // writer showed ended.
    const auto others = from_store_.find(instance);
    if (progress.is_null() && (others == from_store_.end() || others->second.download.is_null()))
      return;
    it = mine_.try_emplace(instance).first;
    adopt(instance, it->second);
  }
  Summary& s = it->second;
  if (progress == s.download && s.download_at_ms > 0) return;
  s.download = std::move(progress);
  s.download_at_ms = store::now_ms();
  s.dirty = true;
}

json Measurements::download_view(const std::string& instance) const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::optional<Summary> s = combined(instance);
  return s ? s->download : json();
}

}  // namespace ggfleet::server
