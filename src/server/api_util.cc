#include "server/api_util.h"

#include <httplib.h>

#include <algorithm>

namespace ggfleet::server {

using nlohmann::json;

const std::regex kName("^[a-z0-9][a-z0-9-]{0,62}$");

json parse_body(const httplib::Request& req) {
  if (req.body.empty()) throw HttpError{400, "a JSON object body is required"};
  json j = json::parse(req.body, nullptr, false);
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
  if (with_assignment) j["assignment"] = parse_or(i.assignment_json, json::object());
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
  res.set_content(j.dump(), "application/json");
}

}  // namespace ggfleet::server
