#include "cli/plan_cmd.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "cli/predict_cmd.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/source.h"
#include "perf/corrections.h"
#include "plan/calibrated.h"
#include "plan/options.h"
#include "plan/report.h"

namespace ggfleet::cli {
namespace {

// ", experts of N blocks in host RAM" when the layout keeps some experts there, else "".
std::string experts_text(const plan::Candidate& c) {
  const std::uint32_t n = c.estimate.host_expert_blocks;
  return n > 0 ? ", experts of " + std::to_string(n) + " blocks in host RAM" : "";
}

std::string fixed(double v, int digits) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

nlohmann::json options_json(const PlanRequest& r) {
  const estimate::ContextOptions defaults;
  const estimate::ContextOptions& c = r.options.context;
  nlohmann::json o = nlohmann::json::object();
  if (c.context_tokens != defaults.context_tokens) o["context"] = c.context_tokens;
  if (c.parallel != defaults.parallel) o["parallel"] = c.parallel;
  if (c.batch_tokens != defaults.batch_tokens) o["batch_size"] = c.batch_tokens;
  if (c.ubatch_tokens != defaults.ubatch_tokens) o["ubatch_size"] = c.ubatch_tokens;
  if (c.kv_unified) o["kv_unified"] = true;
  if (c.swa_full) o["swa_full"] = true;
  if (!c.kv_offload) o["kv_offload"] = false;
  if (!c.mmap) o["mmap"] = false;
  if (r.options.cache_type_k != "f16") o["cache_type_k"] = r.options.cache_type_k;
  if (r.options.cache_type_v != "f16") o["cache_type_v"] = r.options.cache_type_v;
  if (r.options.flash_attn != "auto") o["flash_attn"] = r.options.flash_attn;
  if (r.policy != "spread") o["policy"] = r.policy;
  if (r.no_distributed) o["allow_distributed"] = false;
  if (r.no_cpu_offload) o["allow_cpu_offload"] = false;
  if (r.no_expert_offload) o["expert_offload"] = false;
  if (r.max_rpc_servers != 16) o["max_rpc_servers"] = r.max_rpc_servers;
  for (const std::string& kv : r.selector) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      throw plan::PlanError("--selector wants KEY=VALUE, not '" + kv + "'");
    o["selector"][kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  if (!r.gpus.empty()) o["gpus"] = r.gpus;
  if (!r.main_worker.empty()) o["main"] = r.main_worker;
  if (r.options.gpu_layers != kFitGpuLayers) o["ngl"] = r.options.gpu_layers;
  if (!r.options.tensor_split.empty()) o["tensor_split"] = r.options.tensor_split;
  if (!r.extra_args.empty()) o["extra_args"] = r.extra_args;
  if (r.threads > 0) o["threads"] = r.threads;
  if (r.tie_tolerance != 0.02) o["tie_tolerance"] = r.tie_tolerance;
  return o;
}

plan::Request build_request(const PlanRequest& r) {
  plan::Request q = plan::request_from_options(options_json(r), r.options.model);
  q.replicas = r.replicas;
  q.prompt_tokens = r.prompt_tokens;
  return q;
}

std::string plan_text(const plan::Plan& p, const cluster::Cluster& cluster,
                      std::uint32_t prompt_tokens) {
  std::ostringstream o;
  if (p.replicas.empty()) {
    o << p.reason << "\n";
    return o.str();
  }
  for (std::size_t i = 0; i < p.replicas.size(); ++i) {
    const plan::Candidate& c = p.replicas[i].chosen;
    std::set<std::string> workers{c.main_worker};
    for (const perf::DevicePlace& pl : c.places) workers.insert(pl.worker);
    o << (p.replicas.size() > 1 ? "replica " + std::to_string(i + 1) + ": " : "plan: ")
      << "main worker " << c.main_worker << ", " << c.layout.devices.size() << " GPU(s) on "
      << workers.size() << " worker(s), " << c.cpu_layers() << " layer(s) on the main's CPU"
      << experts_text(c) << "\n";
    if (i == 0) {
      if (const std::string why = plan::why_main(p); !why.empty())
        o << "why " << c.main_worker << ": " << why << "\n";
      for (const std::string& note : p.notes) o << note << "\n";
    }
    o << prediction_text({c.layout, c.places}, cluster, c.estimate, c.prediction, prompt_tokens);
    o << "commands:\n";
    for (const plan::Command& cmd : p.replicas[i].commands)
      o << "  [" << cmd.worker << "] " << cmd.line() << "\n";
    o << "\n";
  }
  if (!p.alternatives.empty()) {
    o << "alternatives:\n";
    const double best = p.replicas[0].chosen.prediction.generation_tokens_per_s;
    for (const plan::Candidate& a : p.alternatives) {
      o << "  " << a.label << ": " << fixed(a.prediction.generation_tokens_per_s, 2)
        << " tokens/s (" << fixed(100.0 * (1 - a.prediction.generation_tokens_per_s / best), 0)
        << "% slower), " << fixed(a.prediction.prompt_tokens_per_s, 1) << " tokens/s prompt, "
        << a.layout.devices.size() << " GPU(s), " << a.cpu_layers() << " CPU layer(s)"
        << experts_text(a) << "; bottleneck " << a.prediction.bottleneck << "\n";
    }
  }
  if (!p.rejected.empty()) {
    o << "not used:\n";
    std::size_t shown = 0;
    for (const plan::Rejection& r : p.rejected) {
      if (shown++ == 20) {
        o << "  ... and " << (p.rejected.size() - 20) << " more (see --json)\n";
        break;
      }
      o << "  " << r.worker << ": " << r.reason << "\n";
    }
  }
  if (!p.feasible) o << p.reason << "\n";
  o << "(" << p.layouts_evaluated << " layouts evaluated, " << p.mains_evaluated
    << " main workers)\n";
  return o.str();
}

perf::Corrections load_calibration(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read calibration file " + path);
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) throw std::runtime_error(path + ": not JSON");
  try {
    return perf::corrections_from_json(j);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
}

int run_plan(const PlanRequest& r) {
  const cluster::Cluster cluster = cluster::load_cluster(r.cluster_file);
  plan::Request q = build_request(r);
  const model::OpenedModel opened = model::open_model_files(r.options.model);
  plan::add_download(q, opened.files);  // a URL or hf:// model: its main downloads it first
  const gguf::Model& model = opened.model;
  const estimate::ModelMemory memory = estimate::ModelMemory::from(model, model::profile(model));
  plan::Plan p;
  if (r.calibration_file.empty()) {
    p = plan::make_plan(memory, cluster, q);
    if (r.options.json) {
      std::cout << plan::plan_json(p, cluster).dump(2) << "\n";
    } else {
      std::cout << plan_text(p, cluster, r.prompt_tokens);
    }
    return p.feasible ? 0 : 3;
  }
  const perf::Corrections corrections = load_calibration(r.calibration_file);
  const plan::CalibrationNote note = plan::plan_calibrated(memory, cluster, corrections, q, p);
  const cluster::Cluster fixed = perf::corrected(cluster, corrections);
  if (r.options.json) {
    nlohmann::json j = plan::plan_json(p, fixed);
    j["calibration"] = plan::calibration_note_json(note);
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << "calibration " << r.calibration_file << ":\n";
    for (const std::string& f : note.factors) std::cout << "  " << f << "\n";
    if (note.factors.empty()) std::cout << "  (no factor has enough requests behind it yet)\n";
    if (!note.sentence.empty()) std::cout << note.sentence << "\n";
    std::cout << plan_text(p, fixed, r.prompt_tokens);
  }
  return p.feasible ? 0 : 3;
}

}  // namespace ggfleet::cli
