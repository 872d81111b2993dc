// Routes of /v1/cluster: the servers that share this store and which one leads the scheduling
// loop (and since when).
#include <httplib.h>

#include "server/api_util.h"
#include "server/server.h"

namespace ggfleet::server {

using nlohmann::json;

json servers_json(store::Store& store) {
  const std::optional<store::Lease> lease = store.lease(kSchedulerLease);
  const std::int64_t now = store.clock_ms();
  const bool led = lease && !lease->holder.empty() && lease->expires_ms >= now;
  json list = json::array();
  for (const store::ServerRow& s : store.servers()) {
    list.push_back({{"id", s.id},
                    {"url", s.url},
                    {"started_ms", s.started_ms},
                    {"last_seen_ms", s.last_seen_ms},
                    {"leader", led && lease->holder == s.id}});
  }
  json out = {{"servers", list}, {"now_ms", now}};
  out["leader"] = led ? json{{"id", lease->holder},
                             {"since_ms", lease->since_ms},
                             {"token", lease->token},
                             {"expires_ms", lease->expires_ms}}
                      : json(nullptr);
  return out;
}

void Server::cluster_routes() {
  httplib::Server& s = *http_;
  s.Get("/v1/cluster/servers",
        handle("/v1/cluster/servers", true, [this](const auto&, auto& res, const Principal& p) {
          allow(p, {KeyRole::kAdmin, KeyRole::kUser});
          json out = servers_json(*store_);
          out["this"] = server_id_;
          reply(res, out);
        }));
}

}  // namespace ggfleet::server
