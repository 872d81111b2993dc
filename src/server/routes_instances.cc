// Routes of /v1/instances (list, get, logs), POST /v1/plan (the planner on the live fleet, with
// the learned factors), GET /v1/calibration and /v1/events.
#include <httplib.h>

#include <regex>
#include <set>
#include <sstream>

#include "plan/calibrated.h"
#include "plan/report.h"
#include "server/api_util.h"
#include "server/server.h"

namespace ggfleet::server {

using nlohmann::json;

namespace {

// The plan's prediction of an instance: generation and prompt tokens/s.
json predicted_json(const store::InstanceRow& i) {
  const json a = parse_or(i.assignment_json, json::object());
  json prediction = a.is_object() && a.contains("plan") && a["plan"].is_object()
                        ? a["plan"].value("prediction", json::object())
                        : json::object();
  if (!prediction.is_object()) prediction = json::object();
  return {{"generation_tokens_per_s", i.predicted_tokens_per_s},
          {"prompt_tokens_per_s", prediction.value("prompt_tokens_per_s", 0.0)}};
}

}  // namespace

json Server::instance_view(const store::InstanceRow& i, bool with_assignment) {
  json j = instance_json(i, with_assignment);
  j["predicted"] = predicted_json(i);
  j["measured"] = measurements_->view(i.id);  // null until a request was answered
  j["memory"] = measurements_->memory_view(i.id, parse_or(i.assignment_json, json::object()));
  j["download"] = measurements_->download_view(i.id);  // null unless one is under way or failed
  return j;
}

std::string Server::render_speeds() {
  std::ostringstream o;
  o << "# HELP ggfleet_instance_predicted_tokens_per_second The plan's prediction.\n"
       "# TYPE ggfleet_instance_predicted_tokens_per_second gauge\n"
       "# HELP ggfleet_instance_measured_tokens_per_second llama-server's timings of "
       "single-stream requests.\n"
       "# TYPE ggfleet_instance_measured_tokens_per_second gauge\n";
  for (const store::InstanceRow& i : store_->instances()) {
    if (i.state != InstanceState::kRunning) continue;
    const json predicted = predicted_json(i);
    const json measured = measurements_->view(i.id);
    for (const char* kind : {"generation", "prompt"}) {
      const std::string key = std::string(kind) + "_tokens_per_s";
      const std::string labels =
          "{instance=\"" + i.id + "\",deployment=\"" + i.deployment + "\",kind=\"" + kind + "\"} ";
      o << "ggfleet_instance_predicted_tokens_per_second" << labels << predicted[key].get<double>()
        << "\n";
      if (measured.is_object() && measured[key].is_number())
        o << "ggfleet_instance_measured_tokens_per_second" << labels << measured[key].get<double>()
          << "\n";
    }
  }
  return o.str();
}

void Server::instance_routes() {
  httplib::Server& s = *http_;
  // Instances.
  s.Get("/v1/instances",
        handle("/v1/instances", true, [this](const auto& req, auto& res, const Principal& p) {
          allow(p, {KeyRole::kAdmin, KeyRole::kUser});
          json list = json::array();
          for (const store::InstanceRow& i : store_->instances(req.get_param_value("deployment"))) {
            list.push_back(instance_view(i, false));
          }
          reply(res, {{"instances", list}});
        }));
  s.Get(R"(/v1/instances/([a-z0-9-]+))",
        handle("/v1/instances/{id}", true, [this](const auto& req, auto& res, const Principal& p) {
          allow(p, {KeyRole::kAdmin, KeyRole::kUser});
          const std::optional<store::InstanceRow> i = store_->instance(req.matches[1]);
          if (!i) throw HttpError{404, "no instance " + std::string(req.matches[1])};
          reply(res, instance_view(*i, true));
        }));
  s.Get(R"(/v1/instances/([a-z0-9-]+)/logs)",
        handle("/v1/instances/{id}/logs", true,
               [this](const auto& req, auto& res, const Principal& p) {
                 allow(p, {KeyRole::kAdmin, KeyRole::kUser});
                 const std::optional<store::InstanceRow> i = store_->instance(req.matches[1]);
                 if (!i) throw HttpError{404, "no instance " + std::string(req.matches[1])};
                 reply(res, {{"id", i->id}, {"log", i->log_tail}});
               }));

  // A dry run of the planner on the live fleet.
  s.Post(
      "/v1/plan", handle("/v1/plan", true, [this](const auto& req, auto& res, const Principal& p) {
        allow(p, {KeyRole::kAdmin, KeyRole::kUser});
        const json b = parse_body(req);
        only(b, {"model", "options", "replicas"});
        const std::string model = required_string(b, "model");
        plan::Request r = plan::request_from_options(b.value("options", json::object()), model);
        if (b.contains("replicas"))
          r.replicas = static_cast<std::uint32_t>(integer_in(b, "replicas", 1, 1000));
        const std::shared_ptr<const estimate::ModelMemory> m = checked_model(model);
        plan::add_download(r, scheduler_->model_files(model));  // planned from the header alone
        const cluster::Cluster fleet = live_cluster(store_->workers(), store_->claims());
        const perf::Corrections corrections = learner_->corrections();
        try {
          plan::Plan made;
          const plan::CalibrationNote note = plan::plan_calibrated(*m, fleet, corrections, r, made);
          json j = plan::plan_json(made, perf::corrected(fleet, corrections));
          j["calibration"] = plan::calibration_note_json(note);
          reply(res, j);
        } catch (const plan::PlanError& e) {
          throw HttpError{400, e.what()};
        }
      }));

  // What the fleet learned from its measurements: the file `ggfleet plan --calibration` reads.
  s.Get("/v1/calibration",
        handle("/v1/calibration", true, [this](const auto&, auto& res, const Principal& p) {
          allow(p, {KeyRole::kAdmin, KeyRole::kUser});
          reply(res, learner_->view());
        }));

  s.Get("/v1/events",
        handle("/v1/events", true, [this](const auto& req, auto& res, const Principal& p) {
          allow(p, {KeyRole::kAdmin, KeyRole::kUser});
          std::int64_t after = 0, before = 0;
          std::size_t limit = 200;
          const std::string order = req.has_param("order") ? req.get_param_value("order") : "asc";
          if (order != "asc" && order != "desc")
            throw HttpError{400, "order must be asc (oldest first) or desc (newest first)"};
          try {
            if (req.has_param("after")) after = std::stoll(req.get_param_value("after"));
            if (req.has_param("before")) before = std::stoll(req.get_param_value("before"));
            if (req.has_param("limit"))
              limit = static_cast<std::size_t>(
                  std::clamp(std::stoi(req.get_param_value("limit")), 1, 1000));
          } catch (const std::exception&) {
            throw HttpError{400, "after and limit must be integers"};
          }
          json list = json::array();
          for (const store::EventRow& e : store_->events(
                   after, limit, req.get_param_value("subject"), order == "desc", before))
            list.push_back(event_json(e));
          reply(res, {{"events", list}});
        }));
}

}  // namespace ggfleet::server
