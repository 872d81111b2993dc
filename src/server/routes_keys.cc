// Routes of /v1/keys: create, list, delete (admin only).
#include <httplib.h>

#include <regex>
#include <set>

#include "server/api_util.h"
#include "server/auth.h"
#include "server/server.h"

namespace ggfleet::server {

using nlohmann::json;

void Server::key_routes() {
  httplib::Server& s = *http_;
  // API keys.
  s.Post("/v1/keys",
         handle("/v1/keys", true, [this](const auto& req, auto& res, const Principal& p) {
           allow(p, {KeyRole::kAdmin});
           const json b = parse_body(req);
           only(b, {"name", "role"});
           const std::string name = required_string(b, "name");
           const std::string role = b.contains("role") ? required_string(b, "role") : "user";
           const std::optional<KeyRole> r = key_role(role);
           if (!r || *r == KeyRole::kWorker)  // worker keys are made at registration only
             throw HttpError{400, "role must be user, admin or join"};
           const std::string secret = new_secret(*r == KeyRole::kJoin ? "ggj_" : "ggf_");
           const std::string id = "key-" + store_->next_id("keys");
           store_->put_key({id, name, sha256_hex(secret), role, "", store::now_ms()});
           reply(res, {{"id", id}, {"name", name}, {"role", role}, {"key", secret}}, 201);
         }));
  // Who the caller's key is: what a client (the dashboard) shows and which pages it offers.
  s.Get("/v1/whoami",
        handle("/v1/whoami", true, [this](const auto&, auto& res, const Principal& p) {
          std::string key_name;
          for (const store::KeyRow& k : store_->keys()) {
            if (k.id == p.key_id) key_name = k.name;
          }
          reply(res, {{"id", p.key_id},
                      {"name", key_name},
                      {"role", p.role ? std::string(name(*p.role)) : ""},
                      {"worker", p.worker}});
        }));
  s.Get("/v1/keys", handle("/v1/keys", true, [this](const auto&, auto& res, const Principal& p) {
          allow(p, {KeyRole::kAdmin});
          json list = json::array();
          for (const store::KeyRow& k : store_->keys()) {
            list.push_back({{"id", k.id},
                            {"name", k.name},
                            {"role", k.role},
                            {"worker", k.worker},
                            {"created_ms", k.created_ms}});
          }
          reply(res, {{"keys", list}});
        }));
  s.Delete(R"(/v1/keys/([A-Za-z0-9-]+))",
           handle("/v1/keys/{id}", true, [this](const auto& req, auto& res, const Principal& p) {
             allow(p, {KeyRole::kAdmin});
             {
               std::lock_guard<std::mutex> lock(cache_mu_);
               key_cache_.clear();
             }
             if (!store_->delete_key(req.matches[1]))
               throw HttpError{404, "no key " + std::string(req.matches[1])};
             reply(res, {{"deleted", std::string(req.matches[1])}});
           }));
}

}  // namespace ggfleet::server
