// What every route of the control plane shares: its errors, who is calling, JSON bodies read
// strictly (unknown fields and wrong types are 400s) and the JSON shapes of the store's rows.
// Internal to src/server/.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <string>
#include <string_view>

#include "cluster/states.h"

#include "store/store.h"

namespace httplib {
struct Request;
struct Response;
}  // namespace httplib

namespace ggfleet::server {

// A failed request: the status and the message for {"error": ...}.
struct HttpError {
  int status;
  std::string message;
};

// Who sent a request (from its API key).
struct Principal {
  std::optional<KeyRole> role;  // nullopt: an unauthenticated route
  std::string worker;
  std::string key_id;  // the key's id
};

extern const std::regex kName;  // names of workers and deployments

// JSON as text, whatever its strings hold: invalid UTF-8 is written as U+FFFD, never thrown on.
std::string dump(const nlohmann::json& j);

// `s` with invalid UTF-8 replaced by U+FFFD, cut to at most `max_bytes` on a character boundary.
// The one rule for strings that enter from outside (heartbeats, logs, files, request bodies).
std::string valid_utf8(std::string_view s, std::size_t max_bytes = SIZE_MAX);

// JSON nested deeper than this is refused at parse time (400), never walked recursively.
constexpr int kMaxJsonDepth = 64;

// The body as a JSON object; 400 if it is empty, not JSON, not an object or nested too deeply.
nlohmann::json parse_body(const httplib::Request& req);
// 400 for a field of `j` not in `keys`.
void only(const nlohmann::json& j, std::initializer_list<const char*> keys);
std::string required_string(const nlohmann::json& j, const char* key);  // 400 if missing/empty
std::int64_t integer_in(const nlohmann::json& j, const char* key, std::int64_t lo,
                        std::int64_t hi);  // 400 outside [lo, hi]
nlohmann::json parse_or(const std::string& text, nlohmann::json fallback);

nlohmann::json worker_json(const store::WorkerRow& w);
nlohmann::json deployment_json(const store::DeploymentRow& d,
                               const std::vector<store::InstanceRow>& instances);
nlohmann::json instance_json(const store::InstanceRow& i, bool with_assignment);
nlohmann::json event_json(const store::EventRow& e);

// 403 unless `p` has one of `roles`.
void allow(const Principal& p, std::initializer_list<KeyRole> roles);
// 403 unless `p` is an admin or user, or the worker `worker` itself.
void self_or(const Principal& p, const std::string& worker);
void reply(httplib::Response& res, const nlohmann::json& j, int status = 200);

}  // namespace ggfleet::server
