#include "cli/client_cmd.h"

#include <httplib.h>

#include <pthread.h>

#include <cctype>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include "cluster/units.h"

namespace ggfleet::cli {
namespace {

// `text` with every byte but A-Z a-z 0-9 - . _ ~ written as %XX: safe as a path segment or a
// query value.
std::string percent_encoded(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

using nlohmann::json;

std::string base_url(const ClientOptions& o) {
  if (!o.server.empty()) return o.server;
  const char* env = std::getenv("GGFLEET_SERVER");
  return env && *env ? env : "http://127.0.0.1:8080";
}

std::string api_key(const ClientOptions& o) {
  if (!o.key.empty()) return o.key;
  const char* env = std::getenv("GGFLEET_API_KEY");
  return env ? env : "";
}

std::string cell(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "-";
  return v.dump();
}

// A table with the given columns (JSON keys) of `rows`.
void print_table(const json& rows, const std::vector<std::pair<std::string, std::string>>& cols) {
  std::vector<std::size_t> width;
  for (const auto& [title, key] : cols) width.push_back(title.size());
  std::vector<std::vector<std::string>> cells;
  for (const json& r : rows) {
    std::vector<std::string> line;
    for (std::size_t c = 0; c < cols.size(); ++c) {
      line.push_back(cell(r.value(cols[c].second, json())));
      width[c] = std::max(width[c], line.back().size());
    }
    cells.push_back(line);
  }
  for (std::size_t c = 0; c < cols.size(); ++c)
    std::printf("%-*s  ", static_cast<int>(width[c]), cols[c].first.c_str());
  std::printf("\n");
  for (const auto& line : cells) {
    for (std::size_t c = 0; c < cols.size(); ++c)
      std::printf("%-*s  ", static_cast<int>(width[c]), line[c].c_str());
    std::printf("\n");
  }
}

}  // namespace

int run_server(server::ServerConfig config) {
  // SIGINT and SIGTERM are taken by this thread with sigwait (threads started below inherit the
  // mask), so stopping runs outside a signal handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  server::Server s(std::move(config));
  const int port = s.start();
  if (!s.generated_admin_key().empty()) {
    std::cout << "admin key (shown once, stored hashed): " << s.generated_admin_key() << std::endl;
  }
  if (!s.generated_join_token().empty()) {
    std::cout << "join token for workers (shown once): " << s.generated_join_token() << std::endl;
  }
  std::cout << "ggfleet server listening on port " << port << " (store: " << s.store().backend()
            << "); workers' heartbeats on port " << s.worker_port() << std::endl;
  if (s.store().backend() == "sqlite") {
    std::cout << "store: SQLite, single server (for several servers, share one PostgreSQL "
                 "database: --db postgres://...)"
              << std::endl;
  } else {
    std::cout << "store: PostgreSQL, pool of " << s.store().pool_size()
              << " connections; other servers may share it (ggfleet server --status)" << std::endl;
  }
  int received = 0;
  sigwait(&signals, &received);
  std::cout << "stopping (signal " << received << ")" << std::endl;
  s.stop();
  return 0;
}

int run_server_status(const server::ServerConfig& config) {
  store::Store store(config.db.empty() ? config.data_dir + "/ggfleet.db" : config.db, 1);
  const json j = server::servers_json(store);
  const std::int64_t now = j["now_ms"];
  std::cout << "store: " << store.backend() << "\n";
  if (j["leader"].is_null()) {
    std::cout << "leader: none (no server holds the scheduler lease)\n";
  } else {
    std::cout << "leader: " << j["leader"]["id"].get<std::string>() << " since "
              << (now - j["leader"]["since_ms"].get<std::int64_t>()) / 1000
              << " s ago (lease token " << j["leader"]["token"] << ")\n";
  }
  std::cout << "servers seen in the last minute: " << j["servers"].size() << "\n";
  for (const json& s : j["servers"]) {
    std::cout << "  " << s["id"].get<std::string>() << "  " << s["url"].get<std::string>()
              << "  up " << (now - s["started_ms"].get<std::int64_t>()) / 1000 << " s, seen "
              << (now - s["last_seen_ms"].get<std::int64_t>()) / 1000 << " s ago"
              << (s["leader"].get<bool>() ? "  (leader)" : "") << "\n";
  }
  return 0;
}

json call(const ClientOptions& o, const std::string& method, const std::string& path,
          const json& body) {
  // Several servers (comma-separated) are tried in order: the next when one cannot be connected
  // to, or, for a GET, does not answer (a write that may have arrived is not sent twice).
  std::vector<std::string> servers;
  const std::string all = base_url(o);
  for (std::size_t at = 0; at <= all.size();) {
    const std::size_t comma = std::min(all.find(',', at), all.size());
    if (comma > at) servers.push_back(all.substr(at, comma - at));
    at = comma + 1;
  }
  if (servers.empty()) throw std::runtime_error("no server URL given");
  const std::string key = api_key(o);
  auto send = [&](const std::string& server) {
    httplib::Client client(server);
    client.set_connection_timeout(servers.size() > 1 ? 2 : 5);
    client.set_read_timeout(60);
    client.set_tcp_nodelay(true);
    if (!key.empty()) client.set_bearer_token_auth(key.c_str());
    return method == "GET"      ? client.Get(path.c_str())
           : method == "DELETE" ? client.Delete(path.c_str())
           : method == "PATCH"
               ? client.Patch(path.c_str(), body.dump(), "application/json")
               : client.Post(path.c_str(), body.is_null() ? "{}" : body.dump(), "application/json");
  };
  std::string failures;
  std::optional<httplib::Result> answered;
  for (const std::string& server : servers) {
    httplib::Result one = send(server);
    if (one) {
      answered.emplace(std::move(one));
      break;
    }
    failures += (failures.empty() ? "" : "; ") + server + ": " + httplib::to_string(one.error());
    if (method != "GET" && one.error() != httplib::Error::Connection) break;
  }
  if (!answered) throw std::runtime_error("cannot reach " + failures);
  const httplib::Result& r = *answered;
  const json j = json::parse(r->body, nullptr, false);
  if (r->status >= 400) {
    const std::string why =
        !j.is_discarded() && j.contains("error") ? j["error"].get<std::string>() : r->body;
    throw std::runtime_error(method + " " + path + ": " + std::to_string(r->status) + ": " + why);
  }
  if (j.is_discarded())
    throw std::runtime_error(method + " " + path + ": the server did not answer JSON");
  return j;
}

int run_deploy(const ClientOptions& o, const std::string& name, const std::string& model,
               std::int64_t replicas, const json& options) {
  const json d =
      call(o, "POST", "/v1/deployments",
           {{"name", name}, {"model", model}, {"replicas", replicas}, {"options", options}});
  if (o.json) {
    std::cout << d.dump(2) << "\n";
  } else {
    std::cout << "deployment " << name << " created (" << replicas
              << " replica(s)); `ggfleet ls instances` shows where they run\n";
  }
  return 0;
}

int run_ls(const ClientOptions& o, const std::string& what) {
  const std::string w = what.empty() ? "deployments" : what;
  if (w != "workers" && w != "deployments" && w != "instances") {
    throw std::invalid_argument("ls takes workers, deployments or instances, not '" + w + "'");
  }
  const json j = call(o, "GET", "/v1/" + w);
  if (o.json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  json rows = j[w];
  if (w == "workers") {
    for (json& r : rows) r["gpus"] = r["resources"].value("gpus", json::array()).size();
    print_table(rows,
                {{"NAME", "name"}, {"ADDRESS", "address"}, {"STATUS", "status"}, {"GPUS", "gpus"}});
  } else if (w == "deployments") {
    for (json& r : rows) r["states"] = r["instances"].dump();
    print_table(
        rows,
        {{"NAME", "name"}, {"MODEL", "model"}, {"REPLICAS", "replicas"}, {"INSTANCES", "states"}});
  } else {
    // Generation and prompt tokens/s: the plan's, and llama-server's own timings of the
    // single-stream requests served so far (their number in parentheses).
    const auto speeds = [](const json& speed) {
      const auto one = [&](const char* key) {
        const auto it = speed.find(key);
        if (it == speed.end() || !it->is_number()) return std::string("-");
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.1f", it->get<double>());
        return std::string(buf);
      };
      return one("generation_tokens_per_s") + " tg / " + one("prompt_tokens_per_s") + " pp";
    };
    for (json& r : rows) {
      r["predicted_text"] = speeds(r.value("predicted", json::object()));
      const json measured = r.value("measured", json());
      r["measured_text"] =
          measured.is_object()
              ? speeds(measured) + " (" + std::to_string(measured.value("samples", 0)) + ")"
              : std::string("-");
    }
    print_table(rows, {{"ID", "id"},
                       {"DEPLOYMENT", "deployment"},
                       {"STATE", "state"},
                       {"MAIN", "main_worker"},
                       {"PREDICTED", "predicted_text"},
                       {"MEASURED", "measured_text"},
                       {"REASON", "reason"}});
  }
  return 0;
}

int run_models(const ClientOptions& o, const std::string& worker) {
  const json j = call(o, "GET", "/v1/workers");
  json rows = json::array();
  for (const json& w : j.value("workers", json::array())) {
    if (!worker.empty() && w.value("name", "") != worker) continue;
    const json models = w.value("resources", json::object()).value("models", json::object());
    for (const json& f : models.value("files", json::array())) {
      json r = f;
      r["worker"] = w.value("name", "");
      std::string names;
      for (const json& n : f.value("names", json::array()))
        names += (names.empty() ? "" : ",") + n.get<std::string>();
      r["names_text"] = names;
      r["size_text"] = cluster::format_bytes(f.value("size_bytes", std::uint64_t{0}));
      const auto when = static_cast<std::time_t>(f.value("last_use_ms", std::int64_t{0}) / 1000);
      char text[32] = "-";
      if (when > 0) std::strftime(text, sizeof text, "%Y-%m-%d %H:%M", std::gmtime(&when));
      r["last_use_text"] = text;
      r["in_use_text"] = f.value("in_use", false) ? "yes" : "no";
      rows.push_back(r);
    }
  }
  if (o.json) {
    std::cout << rows.dump(2) << "\n";
    return 0;
  }
  print_table(rows, {{"WORKER", "worker"},
                     {"KEY", "key"},
                     {"FILES", "names_text"},
                     {"SIZE", "size_text"},
                     {"LAST USE (UTC)", "last_use_text"},
                     {"IN USE", "in_use_text"}});
  return 0;
}

int run_models_rm(const ClientOptions& o, const std::string& worker, const std::string& key) {
  const json j = call(o, "DELETE",
                      "/v1/workers/" + percent_encoded(worker) + "/models/" + percent_encoded(key));
  std::cout << (o.json ? j.dump(2)
                       : "asked " + worker + " to remove " + key +
                             " (done at its next heartbeat; `ggfleet models` shows it gone)")
            << "\n";
  return 0;
}

int run_rm(const ClientOptions& o, const std::string& deployment) {
  const json j = call(o, "DELETE", "/v1/deployments/" + percent_encoded(deployment));
  std::cout << (o.json ? j.dump(2) : "deleted " + deployment) << "\n";
  return 0;
}

int run_scale(const ClientOptions& o, const std::string& deployment, std::int64_t replicas) {
  const json j =
      call(o, "PATCH", "/v1/deployments/" + percent_encoded(deployment), {{"replicas", replicas}});
  std::cout << (o.json ? j.dump(2) : deployment + " scaled to " + std::to_string(replicas)) << "\n";
  return 0;
}

int run_calibration_export(const ClientOptions& o, const std::string& output) {
  const json j = call(o, "GET", "/v1/calibration");
  const json file = j.value("calibration", json::object());
  if (output.empty() || output == "-") {
    std::cout << file.dump(2) << "\n";
    return 0;
  }
  // Written beside the target and renamed: a failed write leaves no half file behind.
  const std::string tmp = output + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << file.dump(2) << "\n";
    out.close();
    if (!out) {
      std::filesystem::remove(tmp);
      throw std::runtime_error("cannot write " + output);
    }
  }
  std::filesystem::rename(tmp, output);
  std::cout << "wrote " << file.value("factors", json::array()).size() << " factor(s) to " << output
            << "\n";
  return 0;
}

int run_events(const ClientOptions& o, const EventsQuery& q) {
  std::string path = "/v1/events?limit=" + std::to_string(q.limit) +
                     (q.after > 0 ? "&after=" + std::to_string(q.after) : "&order=desc");
  if (!q.subject.empty()) path += "&subject=" + percent_encoded(q.subject);
  const json j = call(o, "GET", path);
  if (o.json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  json rows = j["events"];
  for (json& e : rows) {
    const std::time_t t = static_cast<std::time_t>(e.value("time_ms", std::int64_t{0}) / 1000);
    std::tm utc{};
    gmtime_r(&t, &utc);
    char when[32];
    std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &utc);
    e["time"] = std::string(when);
  }
  print_table(rows, {{"ID", "id"},
                     {"TIME (UTC)", "time"},
                     {"KIND", "kind"},
                     {"SUBJECT", "subject"},
                     {"MESSAGE", "message"}});
  return 0;
}

}  // namespace ggfleet::cli
