// Routes of /v1/workers: registration, heartbeats, assignments (long polls), list, drain, remove.
#include <arpa/inet.h>
#include <httplib.h>

#include <map>
#include <regex>
#include <set>

#include "server/api_util.h"
#include "server/assignments.h"
#include "server/auth.h"
#include "server/server.h"

namespace ggfleet::server {

using nlohmann::json;

namespace {

// A worker's address as others will dial it (llama-server --rpc host:port, the proxy): a host
// name, an IPv4 address or an IPv6 address (brackets taken off: they are added where a port
// follows). 400 for anything else, e.g. "a,b", which would split an --rpc list.
std::string valid_address(std::string a) {
  if (a.size() > 2 && a.front() == '[' && a.back() == ']') a = a.substr(1, a.size() - 2);
  in6_addr v6{};
  if (inet_pton(AF_INET6, a.c_str(), &v6) == 1) return a;
  static const std::regex kHost(
      R"(([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)");
  if (a.size() <= 253 && std::regex_match(a, kHost)) return a;
  throw HttpError{400, "'address' must be a host name, an IPv4 or an IPv6 address, not '" +
                           valid_utf8(a, 80) + "'"};
}

// A worker's reported resources, checked as the planner will read them: 400 with the reason.
void checked_resources(const std::string& name, const std::string& address, const json& labels,
                       const json& resources) {
  try {
    cluster::worker_from_json(name, address, labels, resources);
  } catch (const cluster::ClusterError& e) {
    throw HttpError{400, e.what()};
  }
}

// What ggfleet's instances hold on each worker, for the list of workers: per worker the claims
// {instance, deployment, gpu (-1: RAM), bytes, lent (the GPU is lent over RPC to another main)}.
std::map<std::string, json> claims_by_worker(store::Store& store) {
  std::map<std::string, std::string> deployment_of;
  for (const store::InstanceRow& i : store.instances()) deployment_of[i.id] = i.deployment;
  std::map<std::string, json> out;
  for (const store::ClaimRow& c : store.claims()) {
    json& list = out[c.worker];
    if (list.is_null()) list = json::array();
    list.push_back({{"instance", c.instance},
                    {"deployment", deployment_of[c.instance]},
                    {"gpu", c.gpu},
                    {"bytes", c.bytes},
                    {"lent", c.rpc}});
  }
  return out;
}

// A worker as the API lists it: its row and what ggfleet's instances claim there.
json worker_view(const store::WorkerRow& w, const std::map<std::string, json>& claims) {
  json j = worker_json(w);
  const auto it = claims.find(w.name);
  j["claims"] = it != claims.end() ? it->second : json::array();
  return j;
}

}  // namespace

void Server::worker_routes() {
  httplib::Server& s = *http_;
  // Workers.
  s.Post(
      "/v1/workers/register",
      handle("/v1/workers/register", true, [this](const auto& req, auto& res, const Principal& p) {
        allow(p, {KeyRole::kJoin, KeyRole::kAdmin});
        const json b = parse_body(req);
        only(b, {"name", "address", "labels", "resources", "worker_key", "stale_processes"});
        const std::string name = required_string(b, "name");
        if (!std::regex_match(name, kName))
          throw HttpError{400, "'name' must match [a-z0-9][a-z0-9-]{0,62}"};
        const std::string address =
            valid_address(b.contains("address") ? required_string(b, "address") : name);
        const json labels = b.value("labels", json::object());
        const json resources = b.value("resources", json::object());
        if (!labels.is_object()) throw HttpError{400, "'labels' must be an object of strings"};
        checked_resources(name, address, labels, resources);
        const std::string presented =
            b.contains("worker_key") ? required_string(b, "worker_key") : "";
        std::vector<std::string> stale;
        if (b.contains("stale_processes")) {
          if (!b["stale_processes"].is_array())
            throw HttpError{400, "'stale_processes' must be an array of strings"};
          for (const json& v : b["stale_processes"]) {
            if (!v.is_string())
              throw HttpError{400, "'stale_processes' must be an array of strings"};
            stale.push_back(v.get<std::string>().substr(0, 200));
          }
        }
        const std::string key = new_secret("ggw_");
        const std::int64_t registered_ms = store::now_ms();
        store_->transaction([&] {
          const std::optional<store::WorkerRow> old = store_->worker(name);
          // A live worker keeps its name: only one that holds its credentials (the same
          // worker restarted) may register under it again. An unreachable one may be
          // replaced.
          if (old && old->status != WorkerStatus::kUnreachable) {
            const std::optional<store::KeyRow> k =
                presented.empty() ? std::nullopt : store_->key_by_hash(sha256_hex(presented));
            if (!k || key_role(k->role) != KeyRole::kWorker || k->worker != name) {
              throw HttpError{409, "a worker named " + name + " is registered (" + old->address +
                                       ", status " + text(old->status) +
                                       ") and this one does not hold its credentials: give this "
                                       "worker another --name, or remove the other first (DELETE "
                                       "/v1/workers/" +
                                       name + ")"};
            }
          }
          for (const store::KeyRow& k : store_->keys()) {
            if (key_role(k.role) == KeyRole::kWorker && k.worker == name) forget_key(k.id);
          }
          store_->put_worker({name, address, labels.dump(), WorkerStatus::kReady, resources.dump(),
                              registered_ms, old ? old->registered_ms : registered_ms});
          store_->put_key(
              {"worker-" + name, name, sha256_hex(key), "worker", name, store::now_ms()});
          store_->event("worker.registered", name,
                        "registered from " + address +
                            (old && old->status == WorkerStatus::kUnreachable
                                 ? " (replacing an unreachable worker of that name)"
                                 : ""));
          if (!stale.empty()) {
            std::string list;
            for (const std::string& entry : stale) list += (list.empty() ? "" : ", ") + entry;
            store_->event("worker.stale_processes", name,
                          "stopped processes an earlier run left behind: " + list);
          }
        });
        // Its first heartbeats, seconds from now, are answered from memory like the later
        // ones: its key and its liveness (just written) are known here.
        remember_principal(sha256_hex(key), {KeyRole::kWorker, name, "worker-" + name},
                           std::chrono::steady_clock::now());
        wrote_liveness(name, registered_ms);
        wake_scheduler();
        // Heartbeats and polls have a listener of their own (gateway.h).
        reply(res, {{"name", name}, {"key", key}, {"worker_port", gateway_->worker_port()}}, 201);
      }));
  s.Post(
      R"(/v1/workers/([a-z0-9-]+)/heartbeat)",
      handle(
          "/v1/workers/{name}/heartbeat", true,
          [this](const auto& req, auto& res, const Principal& p) {
            const std::string name = req.matches[1];
            self_or(p, name);
            if (p.role == KeyRole::kUser)
              throw HttpError{403, "only the worker itself reports its status"};
            const json b = parse_body(req);
            only(b, {"resources", "instances", "memory"});
            std::optional<store::WorkerRow> w = store_->worker(name);
            if (!w) throw HttpError{404, "no worker named " + name};
            if (b.contains("resources")) {
              checked_resources(name, w->address, parse_or(w->labels_json, json::object()),
                                b["resources"]);
              w->resources_json = b["resources"].dump();
            }
            struct Report {
              std::string id, reason, log;
              json download;  // {phase, done_bytes, total_bytes, rate_bytes_per_s, eta_s, ...}
              InstanceState state = InstanceState::kStarting;
              std::int64_t restarts = -1;
              std::int64_t port = -1;         // the placement it is about (its llama-server port)
              std::int64_t listen_port = -1;  // where llama-server really listens
              bool gave_up = false;           // restarts exhausted on this worker
            };
            std::vector<Report> reports;
            if (b.contains("instances")) {
              if (!b["instances"].is_array()) throw HttpError{400, "'instances' must be an array"};
              for (const json& i : b["instances"]) {
                if (!i.is_object()) throw HttpError{400, "each instance report must be an object"};
                only(i, {"id", "state", "reason", "log_tail", "restarts", "port", "listen_port",
                         "gave_up", "download"});
                Report r;
                r.id = required_string(i, "id");
                const std::string word = required_string(i, "state");
                const std::optional<InstanceState> state = instance_state(word);
                // What an agent reports: never pending or assigned (the server's own).
                if (!state || *state == InstanceState::kPending ||
                    *state == InstanceState::kAssigned)
                  throw HttpError{400, "unknown instance state '" + word + "'"};
                r.state = *state;
                if (i.contains("reason")) {
                  if (!i["reason"].is_string()) throw HttpError{400, "'reason' must be a string"};
                  r.reason = valid_utf8(i["reason"].get<std::string>(), 4096);
                }
                if (i.contains("log_tail")) {
                  if (!i["log_tail"].is_string())
                    throw HttpError{400, "'log_tail' must be a string"};
                  r.log = valid_utf8(i["log_tail"].get<std::string>(), 65536);
                }
                if (i.contains("port")) r.port = integer_in(i, "port", 0, 65535);
                if (i.contains("listen_port"))
                  r.listen_port = integer_in(i, "listen_port", 1, 65535);
                if (i.contains("gave_up")) {
                  if (!i["gave_up"].is_boolean())
                    throw HttpError{400, "'gave_up' must be true or false"};
                  r.gave_up = i["gave_up"].get<bool>();
                }
                if (i.contains("restarts")) r.restarts = integer_in(i, "restarts", 0, 1000000);
                if (i.contains("download")) {
                  const json& d = i["download"];
                  if (!d.is_object()) throw HttpError{400, "'download' must be an object"};
                  only(d, {"phase", "done_bytes", "total_bytes", "fetched_bytes", "refetched_bytes",
                           "interruptions", "rate_bytes_per_s", "eta_s", "error"});
                  for (auto it = d.begin(); it != d.end(); ++it) {
                    const std::string& k = it.key();
                    const json& v = it.value();
                    if (k == "phase" || k == "error") {
                      if (!v.is_string()) throw HttpError{400, "'download." + k + "' must be text"};
                      r.download[k] = valid_utf8(v.get<std::string>(), 4096);
                    } else {
                      if (!v.is_number() || v.get<double>() < 0)
                        throw HttpError{400, "'download." + k + "' must be a number >= 0"};
                      r.download[k] = v;
                    }
                  }
                }
                reports.push_back(r);
              }
            }
            // Memory its processes hold, per instance: {id, port, host_bytes, devices:
            // [{gpu, bytes}]} (the port names the placement, as for the reports).
            struct Held {
              std::string id;
              std::int64_t port = -1;
              std::vector<std::pair<std::string, double>> bytes;  // "WORKER:GPU|host", bytes
            };
            std::vector<Held> held;
            if (b.contains("memory")) {
              if (!b["memory"].is_array()) throw HttpError{400, "'memory' must be an array"};
              for (const json& m : b["memory"]) {
                if (!m.is_object()) throw HttpError{400, "each memory report must be an object"};
                only(m, {"id", "port", "host_bytes", "devices"});
                Held h;
                h.id = required_string(m, "id");
                if (m.contains("port")) h.port = integer_in(m, "port", 0, 65535);
                if (m.contains("host_bytes")) {
                  h.bytes.emplace_back(
                      name + ":host",
                      static_cast<double>(integer_in(m, "host_bytes", 0, std::int64_t{1} << 50)));
                }
                const json devices = m.value("devices", json::array());
                if (!devices.is_array()) throw HttpError{400, "'devices' must be an array"};
                for (const json& d : devices) {
                  if (!d.is_object()) throw HttpError{400, "each device must be an object"};
                  only(d, {"gpu", "bytes"});
                  h.bytes.emplace_back(
                      name + ":" + std::to_string(integer_in(d, "gpu", 0, 4096)),
                      static_cast<double>(integer_in(d, "bytes", 0, std::int64_t{1} << 50)));
                }
                held.push_back(std::move(h));
              }
            }
            for (const Held& h : held) {
              const std::optional<store::InstanceRow> i = store_->instance(h.id);
              if (!i || i->state == InstanceState::kPending) continue;
              if (h.port >= 0 &&
                  h.port != parse_or(i->assignment_json, json::object()).value("server_port", -1))
                continue;  // an earlier placement's
              for (const auto& [what, bytes] : h.bytes) measurements_->memory(h.id, what, bytes);
            }
            const bool was_unreachable = w->status == WorkerStatus::kUnreachable;
            bool any_changed = false, replanned = false;
            // Liveness is written when it gets old (a third of the heartbeat timeout: the
            // scheduler's judgement of silence stays exact to that), not every beat: most
            // heartbeats of a quiet fleet then cost one read, not a committed write.
            const std::int64_t now_ms = store::now_ms();
            const bool quiet =
                reports.empty() && !was_unreachable && !b.contains("resources") &&
                now_ms - w->last_heartbeat_ms < config_.scheduler.heartbeat_timeout_ms / 3;
            if (!quiet)
              store_->transaction([&] {
                // A heartbeat lost with a database crash is sent again in seconds: its commit
                // need not wait for the disk.
                store_->relax_commit();
                w->last_heartbeat_ms = now_ms;
                if (was_unreachable) {
                  w->status = WorkerStatus::kReady;
                  store_->event("worker.ready", name, "heartbeats again");
                }
                store_->put_worker(*w);
                for (const Report& r : reports) {
                  std::optional<store::InstanceRow> i = store_->instance(r.id);
                  if (!i || i->main_worker != name || i->state == InstanceState::kPending)
                    continue;  // not (or no longer) its own
                  if (r.port >= 0 &&
                      r.port !=
                          parse_or(i->assignment_json, json::object()).value("server_port", -1)) {
                    continue;  // about an earlier placement of this instance
                  }
                  if (r.state == InstanceState::kStopped) continue;
                  if (r.gave_up) {
                    // Crashed too often here: plan it again, away from this worker.
                    replan(*store_, *i,
                           "llama-server failed " + std::to_string(r.restarts) + " times on " +
                               name + " (" + r.reason + "); re-planning elsewhere",
                           name);
                    any_changed = true;
                    replanned = true;
                    continue;
                  }
                  json assignment = parse_or(i->assignment_json, json::object());
                  if (r.listen_port > 0 && assignment.value("listen_port", -1) != r.listen_port) {
                    assignment["listen_port"] = r.listen_port;  // the proxy connects there
                    i->assignment_json = dump(assignment);
                    any_changed = true;
                  }
                  measurements_->download(i->id, r.download);
                  const bool changed = i->state != r.state ||
                                       (r.state == InstanceState::kError && i->reason != r.reason);
                  i->state = r.state;
                  if (!r.reason.empty() || r.state == InstanceState::kRunning) i->reason = r.reason;
                  if (!r.log.empty()) i->log_tail = r.log;
                  if (r.restarts >= 0) i->restarts = r.restarts;
                  i->updated_ms = store::now_ms();
                  store_->put_instance(*i);
                  if (changed)
                    store_->event("instance." + text(r.state), i->id,
                                  r.reason.empty() ? text(r.state) : r.reason);
                  any_changed = any_changed || changed;
                }
              });
            wrote_liveness(name, w->status == WorkerStatus::kUnreachable ? -1
                                 : quiet                                 ? w->last_heartbeat_ms
                                                                         : now_ms);
            if (any_changed) ++routes_generation_;
            if (was_unreachable || replanned) wake_scheduler();
            json answer = {{"assignment_version", published_version()}};
            // Back from unreachable: what its instances are now may not be what it last sent
            // (agents send only what changed).
            if (was_unreachable) answer["send_all"] = true;
            // Cache files an admin asked this worker to remove (DELETE .../models/KEY), on
            // whichever server: the published board says whether the store holds any.
            bool removals = false;
            {
              std::lock_guard<std::mutex> lock(mu_);
              removals = assignments_ && assignments_->removals.count(name) > 0;
            }
            if (removals) {
              const std::vector<std::string> keys = store_->take_model_removals(name);
              if (!keys.empty()) answer["remove_models"] = keys;
              publish_if_changed();  // (taking them moved the version)
            }
            reply(res, answer);
          }));
  s.Get(R"(/v1/workers/([a-z0-9-]+)/assignments)",
        handle("/v1/workers/{name}/assignments", true,
               [this](const auto& req, auto& res, const Principal& p) {
                 const std::string name = req.matches[1];
                 self_or(p, name);
                 std::int64_t since = -1;
                 int wait_s = 0;
                 try {
                   if (req.has_param("since")) since = std::stoll(req.get_param_value("since"));
                   if (req.has_param("wait"))
                     wait_s =
                         std::clamp(std::stoi(req.get_param_value("wait")), 0, config_.max_wait_s);
                 } catch (const std::exception&) {
                   throw HttpError{400, "since and wait must be integers"};
                 }
                 int retry_after_ms = 0;
                 std::shared_ptr<const Assignments> seen;
                 if (wait_s > 0) {
                   // A poll waits until this worker's own assignments change, not for every
                   // change in the fleet, and reads the published snapshot, not the store.
                   // Waiting holds an HTTP thread: only so many polls wait, the rest come back
                   // with retry_after_ms.
                   const int slots =
                       config_.long_poll_slots >= 0 ? config_.long_poll_slots : config_.threads / 2;
                   auto news = [&] { return assignments_->news_for(name, since); };
                   std::unique_lock<std::mutex> lock(mu_);
                   if (assignments_ && !news()) {
                     if (long_polls_ < slots) {
                       ++long_polls_;
                       assign_cv_.wait_for(lock, std::chrono::seconds(wait_s),
                                           [&] { return stopping_.load() || news(); });
                       --long_polls_;
                     } else {
                       retry_after_ms = config_.long_poll_retry_ms;
                     }
                   }
                 }
                 if (since >= 0) {
                   // A poll that says what it has seen reads the published board (the gateway
                   // answers most long polls from it itself: Gateway's board_poll), unless the
                   // board is older than that: then the store below.
                   std::lock_guard<std::mutex> lock(mu_);
                   if (assignments_ && assignments_->version >= since) seen = assignments_;
                 }
                 std::int64_t version = 0;
                 json list = json::array();
                 if (seen) {
                   version = seen->version;
                   const auto it = seen->by_worker.find(name);
                   if (it != seen->by_worker.end()) list = it->second;
                 } else {
                   store_->snapshot([&] {
                     version = store_->assignment_version();
                     std::map<std::string, json> mine =
                         assignments_by_worker(store_->instances(), store_->claims(), name);
                     if (mine.count(name)) list = std::move(mine[name]);
                   });
                 }
                 reply(res, poll_answer(version, std::move(list), p.role == KeyRole::kWorker,
                                        retry_after_ms));
               }));
  s.Get("/v1/workers",
        handle("/v1/workers", true, [this](const auto&, auto& res, const Principal& p) {
          allow(p, {KeyRole::kAdmin, KeyRole::kUser});
          json list = json::array();
          const std::map<std::string, json> claims = claims_by_worker(*store_);
          for (const store::WorkerRow& w : store_->workers())
            list.push_back(worker_view(w, claims));
          reply(res, {{"workers", list}});
        }));
  s.Get(R"(/v1/workers/([a-z0-9-]+))",
        handle("/v1/workers/{name}", true, [this](const auto& req, auto& res, const Principal& p) {
          const std::string name = req.matches[1];
          self_or(p, name);
          const std::optional<store::WorkerRow> w = store_->worker(name);
          if (!w) throw HttpError{404, "no worker named " + name};
          reply(res, worker_view(*w, claims_by_worker(*store_)));
        }));
  s.Post(R"(/v1/workers/([a-z0-9-]+)/drain)",
         handle("/v1/workers/{name}/drain", true,
                [this](const auto& req, auto& res, const Principal& p) {
                  allow(p, {KeyRole::kAdmin, KeyRole::kUser});
                  const std::string name = req.matches[1];
                  bool found = false;
                  store_->transaction([&] {
                    found = store_->set_worker_status(name, WorkerStatus::kDraining);
                    if (found)
                      store_->event("worker.draining", name,
                                    "no new instances will be placed here");
                  });
                  if (!found) throw HttpError{404, "no worker named " + name};
                  reply(res, {{"name", name}, {"status", "draining"}});
                }));
  s.Delete(R"(/v1/workers/([a-z0-9-]+)/models/([a-z0-9-]{1,80}))",
           handle("/v1/workers/{name}/models/{key}", true,
                  [this](const auto& req, auto& res, const Principal& p) {
                    allow(p, {KeyRole::kAdmin});
                    const std::string name = req.matches[1], key = req.matches[2];
                    const std::optional<store::WorkerRow> w = store_->worker(name);
                    if (!w) throw HttpError{404, "no worker named " + name};
                    const json files = parse_or(w->resources_json, json::object())
                                           .value("models", json::object())
                                           .value("files", json::array());
                    const auto f = std::find_if(files.begin(), files.end(), [&](const json& e) {
                      return e.is_object() && e.value("key", "") == key;
                    });
                    if (f == files.end())
                      throw HttpError{404, "the cache of worker " + name + " holds no file " + key};
                    if (f->value("in_use", false))
                      throw HttpError{409, "file " + key + " on worker " + name +
                                               " is held by a running instance"};
                    if (!store_->ask_model_removal(name, key))
                      throw HttpError{404, "no worker named " + name};
                    publish_if_changed();  // (the other servers hear it from the store)
                    store_->event("worker.model_removal", name,
                                  "asked to remove " + key + " from its cache");
                    reply(res, {{"worker", name}, {"key", key}, {"status", "requested"}}, 202);
                  }));
  s.Delete(
      R"(/v1/workers/([a-z0-9-]+))",
      handle("/v1/workers/{name}", true, [this](const auto& req, auto& res, const Principal& p) {
        allow(p, {KeyRole::kAdmin});
        const std::string name = req.matches[1];
        bool found = false;
        store_->transaction([&] {
          found = store_->remove_worker(name);
          wrote_liveness(name, -1);
          for (const store::KeyRow& k : store_->keys()) {
            if (key_role(k.role) == KeyRole::kWorker && k.worker == name) forget_key(k.id);
          }
          if (found) store_->event("worker.removed", name, "removed; its instances are re-planned");
        });
        if (!found) throw HttpError{404, "no worker named " + name};
        wake_scheduler();
        reply(res, {{"removed", name}});
      }));
}

}  // namespace ggfleet::server
