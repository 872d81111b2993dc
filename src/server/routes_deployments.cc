// Routes of /v1/deployments: create, list, get, PATCH (replicas, options, model), delete.
#include <httplib.h>

#include <regex>
#include <set>

#include "server/api_util.h"
#include "server/server.h"

namespace ggfleet::server {

using nlohmann::json;

void Server::deployment_routes() {
  httplib::Server& s = *http_;
  // Deployments.
  s.Post("/v1/deployments",
         handle("/v1/deployments", true, [this](const auto& req, auto& res, const Principal& p) {
           allow(p, {KeyRole::kAdmin, KeyRole::kUser});
           const json b = parse_body(req);
           only(b, {"name", "model", "replicas", "options"});
           const std::string name = required_string(b, "name");
           if (!std::regex_match(name, kName))
             throw HttpError{400, "'name' must match [a-z0-9][a-z0-9-]{0,62}"};
           const std::string model = required_string(b, "model");
           const std::int64_t replicas =
               b.contains("replicas") ? integer_in(b, "replicas", 0, 1000) : 1;
           const json options = b.value("options", json::object());
           check_deployment(model, options, p);
           store::DeploymentRow d{
               name, model, options.dump(), replicas, store::now_ms(), store::now_ms(), 1};
           bool created = false;
           store_->transaction([&] {
             created = store_->create_deployment(d);
             if (created)
               store_->event("deployment.created", name,
                             model + ", " + std::to_string(replicas) + " replica(s)");
           });
           if (!created) throw HttpError{409, "a deployment named " + name + " exists"};
           wake_scheduler();
           reply(res, deployment_json(d, {}), 201);
         }));
  s.Get("/v1/deployments",
        handle("/v1/deployments", true, [this](const auto&, auto& res, const Principal& p) {
          allow(p, {KeyRole::kAdmin, KeyRole::kUser});
          json list = json::array();
          for (const store::DeploymentRow& d : store_->deployments())
            list.push_back(deployment_json(d, store_->instances(d.name)));
          reply(res, {{"deployments", list}});
        }));
  s.Get(R"(/v1/deployments/([a-z0-9-]+))",
        handle("/v1/deployments/{name}", true,
               [this](const auto& req, auto& res, const Principal& p) {
                 allow(p, {KeyRole::kAdmin, KeyRole::kUser});
                 const std::optional<store::DeploymentRow> d = store_->deployment(req.matches[1]);
                 if (!d) throw HttpError{404, "no deployment named " + std::string(req.matches[1])};
                 json j = deployment_json(*d, store_->instances(d->name));
                 json list = json::array();
                 for (const store::InstanceRow& i : store_->instances(d->name))
                   list.push_back(instance_json(i, false));
                 j["instance_list"] = list;
                 reply(res, j);
               }));
  s.Patch(R"(/v1/deployments/([a-z0-9-]+))",
          handle("/v1/deployments/{name}", true,
                 [this](const auto& req, auto& res, const Principal& p) {
                   allow(p, {KeyRole::kAdmin, KeyRole::kUser});
                   const json b = parse_body(req);
                   only(b, {"replicas", "options", "model"});
                   std::optional<store::DeploymentRow> d = store_->deployment(req.matches[1]);
                   if (!d)
                     throw HttpError{404, "no deployment named " + std::string(req.matches[1])};
                   const std::int64_t replicas_before = d->replicas;
                   if (b.contains("replicas")) d->replicas = integer_in(b, "replicas", 0, 1000);
                   // Only a real change of model or options re-plans; the same values change
                   // nothing.
                   bool replan = false;
                   if (b.contains("model")) {
                     const std::string model = required_string(b, "model");
                     replan = replan || model != d->model;
                     d->model = model;
                   }
                   if (b.contains("options")) {
                     if (!b["options"].is_object())
                       throw HttpError{400, "'options' must be an object"};
                     replan = replan || b["options"] != parse_or(d->options_json, json::object());
                     d->options_json = b["options"].dump();
                   }
                   if (!replan && d->replicas == replicas_before) {
                     reply(res, deployment_json(*d, store_->instances(d->name)));  // nothing to do
                     return;
                   }
                   if (replan)
                     check_deployment(d->model, parse_or(d->options_json, json::object()), p);
                   d->updated_ms = store::now_ms();
                   // New model or options: a new generation. The scheduler rolls it out replica by
                   // replica: new instances first, an old one removed as each new one runs.
                   if (replan) ++d->generation;
                   store_->transaction([&] {
                     if (!store_->update_deployment(*d))
                       throw HttpError{404, "no deployment named " + d->name};
                     store_->event("deployment.updated", d->name,
                                   "replicas " + std::to_string(d->replicas) +
                                       (replan ? ", generation " + std::to_string(d->generation) +
                                                     " rolling out"
                                               : ""));
                   });
                   ++routes_generation_;  // instances may be gone: the proxy must see it now
                   wake_scheduler();      // it publishes the new assignments
                   reply(res, deployment_json(*d, store_->instances(d->name)));
                 }));
  s.Delete(R"(/v1/deployments/([a-z0-9-]+))",
           handle("/v1/deployments/{name}", true,
                  [this](const auto& req, auto& res, const Principal& p) {
                    allow(p, {KeyRole::kAdmin, KeyRole::kUser});
                    const std::string name = req.matches[1];
                    bool found = false;
                    store_->transaction([&] {
                      found = store_->delete_deployment(name);
                      if (found) {
                        store_->bump_assignment_version();
                        store_->event("deployment.deleted", name, "deleted with its instances");
                      }
                    });
                    if (!found) throw HttpError{404, "no deployment named " + name};
                    ++routes_generation_;  // the proxy must answer 404 from now on
                    wake_scheduler();      // it publishes the new assignments
                    reply(res, {{"deleted", name}});
                  }));
}

}  // namespace ggfleet::server
