// The speed model's fitted constants: efficiency factors and per-call overheads that are not
// physics. Their values live in one data file, src/perf/calibration.json, beside the llama-bench
// measurements they were fitted to; the build embeds that file (no file I/O at run time).
// bench/perf_calibrate refits them from bench/data/perf and rewrites the file.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ggfleet::perf {

struct Constants {
  // Generation (one token per evaluation).
  double gpu_bandwidth_efficiency = 0.6;  // of the catalog memory bandwidth (matvec)
  double gpu_layer_s = 40e-6;             // per offloaded layer and evaluation
  double kquant_read_factor = 1.2;  // time per byte of super-block types relative to Q4_0/Q8_0/F16
  double codebook_read_factor = 2.8;  // the same for the codebook I-quants (IQ1_*, IQ2_*, IQ3_*)
  double token_s = 200e-6;            // per evaluation: graph build, sync, embedding
  double split_s = 30e-6;             // per change of device along the layers
  double cpu_thread_bandwidth_bytes_per_s = 6e9;  // one CPU thread's matvec streaming rate
  double cpu_layer_s = 50e-6;                     // per CPU layer and evaluation (thread sync)
  double rpc_call_s = 300e-6;  // per run of layers on an RPC device and evaluation, beyond the RTT
  double rpc_layer_s = 20e-6;  // per layer on an RPC device and evaluation (graph serialisation)
  // Prompt processing (micro-batches).
  double gpu_matmul_efficiency = 0.25;  // of the FP16 dense peak, very wide matrices
  double gpu_matmul_half_width = 4096;  // embedding width at which it is half that
  double gpu_matmul_half_rows = 64;     // rows (tokens) per product at which it is half its peak
  double gpu_expert_matmul_efficiency = 0.4;  // routed experts' grouped products: this share of
                                              // the dense products' efficiency
  double gpu_expert_matmul_half_rows = 16;    // tokens per expert at which that is half its peak
  double gpu_layer_prompt_s = 100e-6;         // per offloaded layer and micro-batch
  double op_offload_bandwidth_bytes_per_s = 7e9;          // CPU weights copied to the main GPU
  double op_offload_pinned_bandwidth_bytes_per_s = 50e9;  // the same from pinned host buffers
  double cpu_thread_flops = 70e9;                         // one CPU thread's quantized matmul rate
  double rpc_transfer_bandwidth_bytes_per_s = 1e9;        // activations through the RPC protocol
  // Start-up.
  double rpc_load_bandwidth_bytes_per_s = 0.3e9;  // weights sent to an rpc-server at load
};

// One constant's name in calibration.json and where it lives in Constants.
struct ConstantField {
  const char* name;
  double Constants::*member;
  enum class Fit { kGeneration, kPrompt, kNone } fit;  // which measurements fit it
  const char* source;  // kNone: where its value comes from; else nullptr
};
const std::vector<ConstantField>& constant_fields();

// Reads {"constants": {"name": {"value": x, ...}, ...}}; every field must be present, positive
// and finite. Throws std::runtime_error naming the field otherwise.
Constants constants_from_json(const nlohmann::json& calibration);

// The constants in src/perf/calibration.json as built in (parsed on first use).
const Constants& calibrated_constants();

// The embedded calibration.json text.
const std::string& calibration_json_text();

}  // namespace ggfleet::perf
