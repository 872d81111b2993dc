#include "perf/constants.h"

#include <cmath>
#include <stdexcept>

namespace ggfleet::perf {

extern const char* const kCalibrationJson;  // generated from src/perf/calibration.json

const std::vector<ConstantField>& constant_fields() {
  using F = ConstantField::Fit;
  static const std::vector<ConstantField> fields = {
      {"gpu_bandwidth_efficiency", &Constants::gpu_bandwidth_efficiency, F::kGeneration, nullptr},
      {"gpu_layer_s", &Constants::gpu_layer_s, F::kGeneration, nullptr},
      {"kquant_read_factor", &Constants::kquant_read_factor, F::kGeneration, nullptr},
      {"token_s", &Constants::token_s, F::kGeneration, nullptr},
      {"split_s", &Constants::split_s, F::kGeneration, nullptr},
      {"cpu_thread_bandwidth_bytes_per_s", &Constants::cpu_thread_bandwidth_bytes_per_s,
       F::kGeneration, nullptr},
      {"cpu_layer_s", &Constants::cpu_layer_s, F::kGeneration, nullptr},
      {"rpc_call_s", &Constants::rpc_call_s, F::kGeneration, nullptr},
      {"rpc_layer_s", &Constants::rpc_layer_s, F::kGeneration, nullptr},
      {"gpu_matmul_efficiency", &Constants::gpu_matmul_efficiency, F::kPrompt, nullptr},
      {"gpu_matmul_half_width", &Constants::gpu_matmul_half_width, F::kPrompt, nullptr},
      {"gpu_layer_prompt_s", &Constants::gpu_layer_prompt_s, F::kPrompt, nullptr},
      {"op_offload_bandwidth_bytes_per_s", &Constants::op_offload_bandwidth_bytes_per_s, F::kPrompt,
       nullptr},
      {"cpu_thread_flops", &Constants::cpu_thread_flops, F::kPrompt, nullptr},
      {"rpc_transfer_bandwidth_bytes_per_s", &Constants::rpc_transfer_bandwidth_bytes_per_s,
       F::kPrompt, nullptr},
      {"codebook_read_factor", &Constants::codebook_read_factor, F::kNone,
       "not fitted by perf_calibrate (bench/data/perf has no codebook I-quants): set by hand to "
       "the H200 runs of a deepseek-r1 shape with IQ3_XXS experts, bench/data/expert-offload/ds-*"},
      {"op_offload_pinned_bandwidth_bytes_per_s",
       &Constants::op_offload_pinned_bandwidth_bytes_per_s, F::kNone,
       "not fitted by perf_calibrate (bench/data/perf loads weights mapped): set by hand to the "
       "H200 runs of bench/data/expert-offload/r2-extra-* (8 CPU blocks, -lm none against mmap)"},
      {"gpu_matmul_half_rows", &Constants::gpu_matmul_half_rows, F::kNone,
       "not fitted by perf_calibrate (bench/data/perf ran every prompt at -ub 512): set by hand to "
       "the H200 runs of bench/data/moe-batches (all-GPU prompts at -ub 32 to 2048, a dense model "
       "and two mixtures of experts)"},
      {"gpu_expert_matmul_efficiency", &Constants::gpu_expert_matmul_efficiency, F::kNone,
       "not fitted by perf_calibrate (bench/data/perf ran every prompt at -ub 512): set by hand to "
       "the H200 runs of bench/data/moe-batches (all-GPU prompts at -ub 32 to 2048, a dense model "
       "and two mixtures of experts)"},
      {"gpu_expert_matmul_half_rows", &Constants::gpu_expert_matmul_half_rows, F::kNone,
       "not fitted by perf_calibrate (bench/data/perf ran every prompt at -ub 512): set by hand to "
       "the H200 runs of bench/data/moe-batches (all-GPU prompts at -ub 32 to 2048, a dense model "
       "and two mixtures of experts)"},
      {"rpc_load_bandwidth_bytes_per_s", &Constants::rpc_load_bandwidth_bytes_per_s, F::kNone,
       "not fitted: issue 4's observation of weights loaded over RPC on two H200 (0.3 GB/s)"},
  };
  return fields;
}

Constants constants_from_json(const nlohmann::json& calibration) {
  Constants c;
  if (!calibration.is_object() || !calibration.contains("constants") ||
      !calibration["constants"].is_object()) {
    throw std::runtime_error("calibration: no \"constants\" object");
  }
  const nlohmann::json& all = calibration["constants"];
  for (const ConstantField& f : constant_fields()) {
    if (!all.contains(f.name) || !all[f.name].contains("value") ||
        !all[f.name]["value"].is_number()) {
      throw std::runtime_error(std::string("calibration: constant ") + f.name +
                               " is missing or has no numeric value");
    }
    const double v = all[f.name]["value"].get<double>();
    if (!std::isfinite(v) || v <= 0) {
      throw std::runtime_error(std::string("calibration: constant ") + f.name +
                               " must be positive and finite");
    }
    c.*f.member = v;
  }
  return c;
}

const std::string& calibration_json_text() {
  static const std::string text(kCalibrationJson);
  return text;
}

const Constants& calibrated_constants() {
  static const Constants c = constants_from_json(nlohmann::json::parse(calibration_json_text()));
  return c;
}

}  // namespace ggfleet::perf
