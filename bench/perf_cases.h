// The speed-calibration data set: llama-bench runs on two H200 (bench/data/perf/*.jsonl, made by
// bench/run_perf_matrix) turned into layouts and scenarios the speed model can predict.
// Shared by bench/perf_calibrate (fits src/perf/calibration.json, prints the error table) and
// tests/perf/perf_accuracy_test (checks the shipped constants against the same data in CI).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cluster/cluster.h"
#include "estimate/estimate.h"
#include "perf/perf.h"

namespace ggfleet::perfdata {

// One configuration of the matrix: its prompt (pp) and generation (tg) results.
struct Measurement {
  std::string config;  // "gpu+rpc/m8/ts1/1"
  std::string set;     // "base" (results.jsonl) or "extra" (results-extra.jsonl)
  std::string model_tag;
  std::string devices;        // llama-bench's "RPC0/CUDA0", "none"
  std::vector<double> split;  // empty = default
  std::int32_t gpu_layers = 99;
  std::uint32_t threads = 16;
  std::uint32_t n_prompt = 0, n_gen = 0;
  double pp_tokens_per_s = 0, tg_tokens_per_s = 0;
  double added_latency_s = 0;  // one-way delay added by bench/delay_proxy.py
  bool via_proxy = false;
  // Why the pp figure says nothing about real models (not fitted, not in the error goals), or "".
  // The synthetic MoE has zero weights, so every token picks the same experts: its prompt runs
  // touch 8 of 128 experts where a real prompt touches nearly all of them.
  std::string prompt_caveat;
};

// Reads results.jsonl and results-extra.jsonl of `dir` (bench/data/perf). Throws on bad lines.
std::vector<Measurement> load_measurements(const std::string& dir);

// Facts about the machine the data came from that are not constants of the model.
struct Host {
  std::uint32_t cpu_cores = 32;
  double cpu_memory_bandwidth_bytes_per_s = 140e9;  // fitted with the constants
  double loopback_latency_s = 15e-6;                // one way, TCP over loopback
  double proxy_latency_s = 220e-6;                  // one way, added by delay_proxy.py itself
};

struct Case {
  Measurement m;
  const estimate::ModelMemory* model = nullptr;
  cluster::Cluster cluster;
  estimate::Layout layout;
  estimate::Estimate estimate;
  perf::Scenario generation;  // tg: depth = half the generated tokens
  perf::Scenario prompt;      // pp: prompt_tokens = n_prompt
};

class Dataset {
 public:
  // Writes (or reuses) the synthetic models under `model_dir` and builds every case.
  Dataset(std::vector<Measurement> measurements, const std::string& model_dir, const Host& host);
  std::deque<Case>& cases() { return cases_; }
  // Replaces the host facts in every case's cluster.
  void set_host(const Host& host);
  const Host& host() const { return host_; }

 private:
  std::map<std::string, std::unique_ptr<estimate::ModelMemory>> models_;
  std::deque<Case> cases_;
  Host host_;
};

// The rates the model predicts for a case: {tg tokens/s, pp tokens/s}.
std::pair<double, double> predict_case(const Case& c, const perf::Constants& constants);

// Cross-validation fold of a configuration (0..folds-1), stable across runs.
std::uint32_t fold_of(const std::string& config, std::uint32_t folds);

}  // namespace ggfleet::perfdata
