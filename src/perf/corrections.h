// Corrections the fleet learns from its own measurements: how much slower (or faster) than the
// speed model each GPU model, each worker's CPU and each link between two workers really is.
//
// A prediction is a sum of parts (perf.h); some parts are scaled by a factor that the cluster
// carries (Gpu/Cpu *_time_factor, Link::call_time_factor): predicted seconds per token =
// rest + sum over factors k of factor_k * part_k. Every running placement whose measured speed
// is known is an Observation of that sum. learn() fits the factors to all observations at once
// (weighted least squares on relative error, pulled toward 1 by a prior, so that a factor seen
// in one placement only explains what that placement shows), with each observation's weight its
// number of requests halved every half-life. A factor applies only once enough requests stand
// behind it. Pure: no I/O.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "cluster/cluster.h"
#include "perf/perf.h"

namespace ggfleet::perf {

// A predicted time split by factor: seconds = rest_s + sum of factor(key) * parts_s[key].
struct Basis {
  std::map<std::string, double> parts_s;  // factor key -> seconds at factor 1
  double rest_s = 0;                      // seconds no factor scales (as predicted)
  // The predicted seconds under `factors` (keys missing there count as 1).
  double seconds(const std::map<std::string, double>& factors) const;
};

// A prediction's bases, per generated token and per prompt token (prompt_tokens the prediction
// was made for). A link has one factor, learned from generation; it scales its prompt part too.
struct PredictionBasis {
  Basis generation;  // seconds per generated token
  Basis prompt;      // seconds per prompt token
};
PredictionBasis basis_of(const Prediction& p, std::uint32_t prompt_tokens);
nlohmann::json basis_json(const PredictionBasis& b);
// Throws std::runtime_error on a malformed document.
PredictionBasis basis_from_json(const nlohmann::json& j);

// What one placement of one instance delivered.
struct Observation {
  std::string id;  // one per instance placement
  std::int64_t updated_ms = 0;
  PredictionBasis basis;
  double measured_generation_s = 0;  // seconds per generated token (single-stream requests)
  double generation_samples = 0;     // requests behind it
  double measured_prompt_s = 0;      // seconds per prompt token
  double prompt_samples = 0;
};
nlohmann::json observation_json(const Observation& o);
Observation observation_from_json(const nlohmann::json& j);  // throws std::runtime_error

struct Factor {
  double value = 1;    // measured time / predicted time of the parts it scales
  double samples = 0;  // requests behind it, after decay
};

struct Corrections {
  std::map<std::string, Factor> generation;  // factor key -> factor; only those that apply
  std::map<std::string, Factor> prompt;
  std::int64_t updated_ms = 0;
  bool empty() const { return generation.empty() && prompt.empty(); }
  std::map<std::string, double> generation_values() const;
  std::map<std::string, double> prompt_values() const;  // with the links' generation factors
};

// {"format": "ggfleet-calibration-1", "updated_ms": N, "factors": [{"key", "kind": "generation"
// | "prompt", "value", "samples"}]}: what `ggfleet calibration export` writes and
// `ggfleet plan --calibration` reads.
nlohmann::json corrections_json(const Corrections& c);
// Throws std::runtime_error naming what is wrong: another format, a key that is not gpu:/cpu:/
// link:A|B, a value that is not a positive finite number.
Corrections corrections_from_json(const nlohmann::json& j);

struct LearnOptions {
  double min_samples = 20;           // requests (after decay) before a factor applies
  double half_life_s = 7 * 86400.0;  // an observation's weight halves in this time
  double min_share = 0.1;            // an observation is evidence for a factor whose parts
                                     // are at least this share of its predicted time
  double prior_samples = 4;          // the pull toward 1, in requests
  double min_factor = 0.02, max_factor = 1000;  // a simulated GPU on a CPU is ~100x slow
};

// Fits the factors to `observations` as of `now_ms`. Observations without measurements count
// for nothing.
Corrections learn(const std::vector<Observation>& observations, std::int64_t now_ms,
                  const LearnOptions& options = {});

// Observations still worth keeping at `now_ms`: those whose weight has not decayed below 1 %,
// newest first, at most `limit`.
std::vector<Observation> retained(std::vector<Observation> observations, std::int64_t now_ms,
                                  std::size_t limit, const LearnOptions& options = {});

// `cluster` with the factors set on its GPUs (by model name), CPUs (by worker) and links (by the
// pair of workers; a pair without its own link gets the default link with the factor).
cluster::Cluster corrected(cluster::Cluster cluster, const Corrections& c);

// One factor for people: "gpu:NVIDIA H100 SXM generation: 2.10x the predicted time
// (24 requests)"; describe() gives one such line per factor.
std::string describe_factor(const std::string& key, const std::string& kind, const Factor& f);
std::vector<std::string> describe(const Corrections& c);

}  // namespace ggfleet::perf
