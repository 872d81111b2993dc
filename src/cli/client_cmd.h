// `ggfleet server` and the client verbs that call its API: deploy, ls, rm, scale, events.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "server/server.h"

namespace ggfleet::cli {

struct ClientOptions {
  std::string server;  // base URL; "" = $GGFLEET_SERVER or http://127.0.0.1:8080
  std::string key;     // "" = $GGFLEET_API_KEY
  bool json = false;
};

// Runs `ggfleet server` until SIGINT/SIGTERM. Prints generated keys once.
int run_server(server::ServerConfig config);
// `ggfleet server --status`: the servers sharing the configured store and the leader.
int run_server_status(const server::ServerConfig& config);

// Calls the API; throws std::runtime_error with the server's {"error"} message on failure.
nlohmann::json call(const ClientOptions& o, const std::string& method, const std::string& path,
                    const nlohmann::json& body = nullptr);

int run_deploy(const ClientOptions& o, const std::string& name, const std::string& model,
               std::int64_t replicas, const nlohmann::json& options);
int run_ls(const ClientOptions& o, const std::string& what);
int run_rm(const ClientOptions& o, const std::string& deployment);
int run_scale(const ClientOptions& o, const std::string& deployment, std::int64_t replicas);
struct EventsQuery {
  std::string subject;     // "" = every subject
  std::int64_t after = 0;  // > 0: the events after this id, oldest first; else the newest first
  std::int64_t limit = 50;
};
// Events as a table (ID, TIME in UTC, KIND, SUBJECT, MESSAGE) or JSON.
int run_events(const ClientOptions& o, const EventsQuery& q);
// `ggfleet models`: what each worker's download cache holds (GET /v1/workers), a row per file:
// worker, key, names, size, last use (UTC), whether an instance holds it; `worker` "" = all.
int run_models(const ClientOptions& o, const std::string& worker);
// `ggfleet models rm KEY --worker W`: asks the worker to remove a file no instance holds.
int run_models_rm(const ClientOptions& o, const std::string& worker, const std::string& key);
// `ggfleet calibration export`: the factors the server learned (GET /v1/calibration), as the file
// `ggfleet plan --calibration` reads; to stdout when `output` is "" or "-".
int run_calibration_export(const ClientOptions& o, const std::string& output);

}  // namespace ggfleet::cli
