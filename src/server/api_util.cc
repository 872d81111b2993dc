#include "server/api_util.h"

#include <httplib.h>

#include <algorithm>

namespace ggfleet::server {

using nlohmann::json;

const std::regex kName("^[a-z0-9][a-z0-9-]{0,62}$");

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string valid_utf8(std::string_view s, std::size_t max_bytes) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(std::min(s.size(), max_bytes));
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t n = c < 0x80           ? 1
                    : (c >> 5) == 0x6  ? 2
                    : (c >> 4) == 0xE  ? 3
                    : (c >> 3) == 0x1E ? 4
                                       : 0;
    bool ok = n > 0 && i + n <= s.size();
    for (std::size_t k = 1; ok && k < n; ++k)
      ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    if (ok && n > 1) {
      // Overlong forms, surrogates and code points past U+10FFFF are invalid too.
      std::uint32_t cp = c & (0xFF >> (n + 1));
      for (std::size_t k = 1; k < n; ++k)
        cp = cp << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3F);
      static constexpr std::uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= kMin[n] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    const std::string_view piece = ok ? s.substr(i, n) : kReplacement;
    if (out.size() + piece.size() > max_bytes) break;
    out += piece;
    i += ok ? n : 1;
  }
  return out;
}

json parse_body(const httplib::Request& req) {
  if (req.body.empty()) throw HttpError{400, "a JSON object body is required"};
  bool too_deep = false;
  json j = json::parse(
      req.body,
      [&](int depth, json::parse_event_t, json&) {
        if (depth > kMaxJsonDepth) too_deep = true;
        return !too_deep;
      },
      false);
  if (too_deep)
    throw HttpError{400, "the body nests deeper than " + std::to_string(kMaxJsonDepth) + " levels"};
  if (j.is_discarded()) throw HttpError{400, "the body is not valid JSON"};
  if (!j.is_object()) throw HttpError{400, "the body must be a JSON object"};
  return j;
}

void only(const json& j, std::initializer_list<const char*> keys) {
  for (const auto& item : j.items()) {
    const std::string& k = item.key();
    if (std::none_of(keys.begin(), keys.end(), [&](const char* known) { return k == known; })) {
      throw HttpError{400, "unknown field '" + k + "'"};
    }
  }
}

std::string required_string(const json& j, const char* key) {
  if (!j.contains(key)) throw HttpError{400, std::string("'") + key + "' is required"};
  if (!j[key].is_string() || j[key].get<std::string>().empty()) {
    throw HttpError{400, std::string("'") + key + "' must be a non-empty string"};
  }
  return j[key].get<std::string>();
}

std::int64_t integer_in(const json& j, const char* key, std::int64_t lo, std::int64_t hi) {
  if (!j[key].is_number_integer() || j[key].get<std::int64_t>() < lo ||
      j[key].get<std::int64_t>() > hi) {
    throw HttpError{400, std::string("'") + key + "' must be an integer from " +
                             std::to_string(lo) + " to " + std::to_string(hi)};
  }
  return j[key].get<std::int64_t>();
}

json parse_or(const std::string& text, json fallback) {
  json j = json::parse(text, nullptr, false);
  return j.is_discarded() ? fallback : j;
}

json worker_json(const store::WorkerRow& w) {
  return {{"name", w.name},
          {"address", w.address},
          {"labels", parse_or(w.labels_json, json::object())},
          {"status", text(w.status)},
          {"resources", parse_or(w.resources_json, json::object())},
          {"last_heartbeat_ms", w.last_heartbeat_ms},
          {"registered_ms", w.registered_ms}};
}

json deployment_json(const store::DeploymentRow& d,
                     const std::vector<store::InstanceRow>& instances) {
  json states = json::object();
  for (const store::InstanceRow& i : instances)
    states[text(i.state)] = states.value(text(i.state), 0) + 1;
  return {{"name", d.name},
          {"model", d.model},
          {"replicas", d.replicas},
          {"options", parse_or(d.options_json, json::object())},
          {"instances", states},
          {"created_ms", d.created_ms},
          {"updated_ms", d.updated_ms}};
}

json instance_json(const store::InstanceRow& i, bool with_assignment) {
  json j = {{"id", i.id},
            {"deployment", i.deployment},
            {"state", text(i.state)},
            {"main_worker", i.main_worker},
            {"reason", i.reason},
            {"restarts", i.restarts},
            {"predicted_tokens_per_s", i.predicted_tokens_per_s},
            {"created_ms", i.created_ms},
            {"updated_ms", i.updated_ms}};
  if (with_assignment) {
    json a = parse_or(i.assignment_json, json::object());
    if (a.is_object()) a.erase("instance_key");  // the proxy's secret, never shown
    j["assignment"] = std::move(a);
  }
  return j;
}

json event_json(const store::EventRow& e) {
  return {{"id", e.id},
          {"time_ms", e.time_ms},
          {"kind", e.kind},
          {"subject", e.subject},
          {"message", e.message}};
}

void allow(const Principal& p, std::initializer_list<KeyRole> roles) {
  if (!p.role || std::find(roles.begin(), roles.end(), *p.role) == roles.end()) {
    throw HttpError{403, p.role ? "a " + std::string(name(*p.role)) + " key may not do this"
                                : std::string("a key is needed for this")};
  }
}

void self_or(const Principal& p, const std::string& worker) {
  if (p.role == KeyRole::kAdmin || p.role == KeyRole::kUser) return;
  if (p.role == KeyRole::kWorker && p.worker == worker) return;
  throw HttpError{403, p.role == KeyRole::kWorker ? "a worker key may only speak for its own worker"
                                                  : "not allowed"};
}

void reply(httplib::Response& res, const json& j, int status) {
  res.status = status;
  res.set_content(dump(j), "application/json");
}

}  // namespace ggfleet::server
