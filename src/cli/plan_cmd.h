// `ggfleet plan`: the best layout for a model on a cluster file, its alternatives, why unused
// workers are unused, and the command line each worker would run.
#pragma once

#include <string>
#include <vector>

#include "cli/estimate_cmd.h"
#include "perf/corrections.h"
#include "plan/plan.h"

namespace ggfleet::cli {

struct PlanRequest {
  std::string cluster_file;
  EstimateRequest options;  // model, context, cache types, flash attention, -ngl, split, json
  std::uint32_t replicas = 1;
  std::string policy = "spread";
  bool no_distributed = false;
  bool no_cpu_offload = false;
  bool no_expert_offload = false;
  std::uint32_t max_rpc_servers = 16;
  std::vector<std::string> selector;  // key=value
  std::vector<std::string> gpus;      // worker:gpu
  std::string main_worker;            // fixed main, "" = the planner's choice
  std::vector<std::string> extra_args;
  std::uint32_t threads = 0;
  std::uint32_t prompt_tokens = 512;
  double tie_tolerance = 0.02;
  std::string calibration_file;  // learned factors (`ggfleet calibration export`); "" = none
};

// The deployment options (plan/options.h) the flags ask for, only those that differ from the
// defaults: what `ggfleet deploy` sends and `ggfleet plan` plans. Throws plan::PlanError.
nlohmann::json options_json(const PlanRequest& r);

// The planner's request from the command line: plan::request_from_options(options_json(r)) with
// the replicas and prompt length. Throws std::invalid_argument (plan::PlanError among them).
plan::Request build_request(const PlanRequest& r);

std::string plan_text(const plan::Plan& p, const cluster::Cluster& cluster,
                      std::uint32_t prompt_tokens);

// The factors of a calibration file (perf::corrections_from_json). Throws std::runtime_error
// naming the file and what is wrong.
perf::Corrections load_calibration(const std::string& path);

// Runs the command; returns 0 when every replica was placed, 3 when the model does not fit (the
// reason is printed), and throws on bad input.
int run_plan(const PlanRequest& request);

}  // namespace ggfleet::cli
