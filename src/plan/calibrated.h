// Plans under learned corrections (perf/corrections.h), explained against the speed model
// alone: which factors applied, what the chosen layout would be predicted without them, and —
// when the model alone would choose another layout — that layout with both its predictions.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "perf/corrections.h"
#include "plan/plan.h"

namespace ggfleet::plan {

struct CalibrationNote {
  std::vector<std::string> factors;               // perf::describe of the corrections
  double corrected_tokens_per_s = 0;              // the chosen layout, with the factors
  double uncorrected_tokens_per_s = 0;            // the same layout, speed model alone
  bool model_alone_differs = false;               // the model alone would choose another layout:
  std::string model_alone_main;                   //   its main worker,
  double model_alone_tokens_per_s = 0;            //   its prediction without the factors
  double model_alone_corrected_tokens_per_s = 0;  // and with them
  std::string sentence;                           // all of it for people
};

// Plans `request` on `perf::corrected(raw, corrections)` and explains it. `plan` receives the
// corrected plan. Throws what make_plan throws.
CalibrationNote plan_calibrated(const estimate::ModelMemory& model, const cluster::Cluster& raw,
                                const perf::Corrections& corrections, const Request& request,
                                Plan& plan,
                                const perf::Constants& constants = perf::calibrated_constants());

nlohmann::json calibration_note_json(const CalibrationNote& n);

}  // namespace ggfleet::plan
