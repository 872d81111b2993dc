// Fits the speed model's constants to the llama-bench calibration data and prints the error table.
//
//   build/release/bench/perf_calibrate [--data bench/data/perf] [--models DIR] [--folds 4]
//                                      [--write src/perf/calibration.json]
//
// Generation constants (and two facts of the measuring host: its CPU memory bandwidth and the
// delay relay's own latency) are fitted to the tg rows, then prompt constants to the pp rows,
// minimising squared log error. Held-out error: the configurations are split into folds (by a
// hash of their names); each fold is predicted by constants fitted on the others.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "perf/calibrate.h"
#include "perf/constants.h"
#include "perf_cases.h"

using namespace ggfleet;

namespace {

struct Fit {
  perf::Constants constants;
  perfdata::Host host;
};

// Fits on the cases for which `use` is true.
Fit fit(perfdata::Dataset& data, const std::vector<bool>& use, const Fit& start) {
  Fit f = start;
  std::vector<double*> gen_params, prompt_params;
  for (const perf::ConstantField& field : perf::constant_fields()) {
    if (field.fit == perf::ConstantField::Fit::kGeneration)
      gen_params.push_back(&(f.constants.*field.member));
    if (field.fit == perf::ConstantField::Fit::kPrompt)
      prompt_params.push_back(&(f.constants.*field.member));
  }
  gen_params.push_back(&f.host.cpu_memory_bandwidth_bytes_per_s);
  gen_params.push_back(&f.host.proxy_latency_s);
  auto objective = [&](std::vector<double*>& params, bool generation) {
    return [&, generation](const std::vector<double>& x) {
      for (std::size_t i = 0; i < x.size(); ++i) *params[i] = x[i];
      if (generation) data.set_host(f.host);
      double sum = 0;
      std::size_t i = 0;
      for (const perfdata::Case& c : data.cases()) {
        if (use[i++]) {
          const auto [tg, pp] = perfdata::predict_case(c, f.constants);
          const double measured = generation                  ? c.m.tg_tokens_per_s
                                  : c.m.prompt_caveat.empty() ? c.m.pp_tokens_per_s
                                                              : 0.0;
          if (measured > 0) sum += perf::log_error2(generation ? tg : pp, measured);
        }
      }
      return sum;
    };
  };
  for (bool generation : {true, false}) {
    std::vector<double*>& params = generation ? gen_params : prompt_params;
    std::vector<double> x0;
    for (double* p : params) x0.push_back(*p);
    const std::vector<double> best = perf::minimise_positive(objective(params, generation), x0);
    for (std::size_t i = 0; i < best.size(); ++i) *params[i] = best[i];
    data.set_host(f.host);
  }
  return f;
}

double pct(double predicted, double measured) {
  return 100.0 * (predicted - measured) / measured;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Row {
  std::string config, set;
  double tg = 0, tg_fit = 0, tg_held = 0, pp = 0, pp_fit = 0, pp_held = 0;
  std::string caveat;  // pp not representative (see perfdata::Measurement::prompt_caveat)
};

// Pairs of configurations of one model where the measured rate differs by >= 10% and the
// prediction orders them the other way.
int ranking_violations(const std::vector<Row>& rows, const std::vector<perfdata::Case*>& cases,
                       bool generation, bool held, std::vector<std::string>* out) {
  int bad = 0;
  for (std::size_t a = 0; a < rows.size(); ++a) {
    for (std::size_t b = 0; b < rows.size(); ++b) {
      if (cases[a]->m.model_tag != cases[b]->m.model_tag) continue;
      const double ma = generation ? rows[a].tg : rows[a].pp,
                   mb = generation ? rows[b].tg : rows[b].pp;
      const double pa = generation ? (held ? rows[a].tg_held : rows[a].tg_fit)
                                   : (held ? rows[a].pp_held : rows[a].pp_fit);
      const double pb = generation ? (held ? rows[b].tg_held : rows[b].tg_fit)
                                   : (held ? rows[b].pp_held : rows[b].pp_fit);
      if (ma <= 0 || mb <= 0) continue;
      if (!generation && (!rows[a].caveat.empty() || !rows[b].caveat.empty())) continue;
      if (ma >= 1.1 * mb && !(pa > pb)) {
        ++bad;
        if (out) out->push_back(rows[a].config + " > " + rows[b].config);
      }
    }
  }
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  std::string data_dir = GGFLEET_SOURCE_DIR "/bench/data/perf";
  std::string model_dir = "/tmp/ggfleet-perf-models";
  std::string write_path;
  std::uint32_t folds = 4;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--data")
      data_dir = next();
    else if (a == "--models")
      model_dir = next();
    else if (a == "--write")
      write_path = next();
    else if (a == "--folds")
      folds = static_cast<std::uint32_t>(std::stoul(next()));
    else {
      std::cerr << "usage: perf_calibrate [--data DIR] [--models DIR] [--folds N] [--write FILE]\n";
      return 2;
    }
  }
  perfdata::Dataset data(perfdata::load_measurements(data_dir), model_dir, perfdata::Host{});
  const std::size_t n = data.cases().size();
  const Fit start{perf::Constants{}, perfdata::Host{}};
  const Fit all = fit(data, std::vector<bool>(n, true), start);

  std::vector<Row> rows(n);
  std::vector<perfdata::Case*> cases;
  for (perfdata::Case& c : data.cases()) cases.push_back(&c);
  data.set_host(all.host);
  for (std::size_t i = 0; i < n; ++i) {
    const auto [tg, pp] = perfdata::predict_case(*cases[i], all.constants);
    rows[i] = {cases[i]->m.config,
               cases[i]->m.set,
               cases[i]->m.tg_tokens_per_s,
               tg,
               0,
               cases[i]->m.pp_tokens_per_s,
               pp,
               0,
               cases[i]->m.prompt_caveat};
  }
  for (std::uint32_t k = 0; k < folds; ++k) {
    std::vector<bool> use(n);
    for (std::size_t i = 0; i < n; ++i) use[i] = perfdata::fold_of(cases[i]->m.config, folds) != k;
    const Fit part = fit(data, use, all);
    data.set_host(part.host);
    for (std::size_t i = 0; i < n; ++i) {
      if (use[i]) continue;
      const auto [tg, pp] = perfdata::predict_case(*cases[i], part.constants);
      rows[i].tg_held = tg;
      rows[i].pp_held = pp;
    }
  }
  data.set_host(all.host);

  std::printf("%-30s %-5s | %9s %9s %7s %9s %7s | %9s %9s %7s %9s %7s\n", "configuration", "set",
              "tg meas", "tg fit", "err%", "tg held", "err%", "pp meas", "pp fit", "err%",
              "pp held", "err%");
  std::vector<double> e_tg_fit, e_tg_held, e_pp_fit, e_pp_held;
  for (const Row& r : rows) {
    std::printf(
        "%-30s %-5s | %9.2f %9.2f %+7.1f %9.2f %+7.1f | %9.1f %9.1f %+7.1f %9.1f %+7.1f%s\n",
        r.config.c_str(), r.set.c_str(), r.tg, r.tg_fit, pct(r.tg_fit, r.tg), r.tg_held,
        pct(r.tg_held, r.tg), r.pp, r.pp_fit, pct(r.pp_fit, r.pp), r.pp_held, pct(r.pp_held, r.pp),
        r.caveat.empty() ? "" : " *");
    e_tg_fit.push_back(std::abs(pct(r.tg_fit, r.tg)));
    e_tg_held.push_back(std::abs(pct(r.tg_held, r.tg)));
    if (!r.caveat.empty()) continue;
    e_pp_fit.push_back(std::abs(pct(r.pp_fit, r.pp)));
    e_pp_held.push_back(std::abs(pct(r.pp_held, r.pp)));
  }
  auto worst = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  std::vector<std::string> rank_tg, rank_pp, rank_tg_held, rank_pp_held;
  const int v_tg = ranking_violations(rows, cases, true, false, &rank_tg);
  const int v_pp = ranking_violations(rows, cases, false, false, &rank_pp);
  const int v_tg_held = ranking_violations(rows, cases, true, true, &rank_tg_held);
  const int v_pp_held = ranking_violations(rows, cases, false, true, &rank_pp_held);
  std::printf(
      "\n* pp not fitted and not counted: synthetic MoE, every token routes to the same experts\n");
  std::printf("%zu configurations, %u folds\n", n, folds);
  std::printf(
      "tg128 |err|: fitted on all: median %.1f%% worst %.1f%%; held out: median %.1f%% worst "
      "%.1f%%\n",
      median(e_tg_fit), worst(e_tg_fit), median(e_tg_held), worst(e_tg_held));
  std::printf(
      "pp512 |err|: fitted on all: median %.1f%% worst %.1f%%; held out: median %.1f%% worst "
      "%.1f%%\n",
      median(e_pp_fit), worst(e_pp_fit), median(e_pp_held), worst(e_pp_held));
  std::printf(
      "ranking (same model, measured >= 10%% apart, predicted the other way): tg %d (held out %d), "
      "pp %d (held out %d)\n",
      v_tg, v_tg_held, v_pp, v_pp_held);
  for (const std::string& s : rank_tg) std::printf("  tg inversion: %s\n", s.c_str());
  for (const std::string& s : rank_pp) std::printf("  pp inversion: %s\n", s.c_str());
  for (const std::string& s : rank_tg_held) std::printf("  tg held-out inversion: %s\n", s.c_str());
  for (const std::string& s : rank_pp_held) std::printf("  pp held-out inversion: %s\n", s.c_str());

  if (!write_path.empty()) {
    nlohmann::ordered_json j;
    j["what"] =
        "Fitted constants of ggfleet's speed model (src/perf) and the measurements they came from.";
    j["fitted_by"] = "build/release/bench/perf_calibrate --write src/perf/calibration.json";
    j["measurements_from"] = {"bench/data/perf/results.jsonl",
                              "bench/data/perf/results-extra.jsonl"};
    j["machine"] =
        "2x NVIDIA H200 (one host, 32 CPU cores), CUDA build of llama.cpp from node-llama-cpp "
        "3.22.1, "
        "llama-bench -p 512 -n 128 (bench/run_perf_matrix)";
    nlohmann::ordered_json constants;
    for (const perf::ConstantField& field : perf::constant_fields()) {
      nlohmann::ordered_json c;
      c["value"] = all.constants.*field.member;
      c["fitted_to"] =
          field.fit == perf::ConstantField::Fit::kGeneration ? "tg rows of every configuration"
          : field.fit == perf::ConstantField::Fit::kPrompt   ? "pp rows of every configuration"
                                                             : field.source;
      constants[field.name] = c;
    }
    j["constants"] = constants;
    j["measuring_host"] = {
        {"cpu_memory_bandwidth_bytes_per_s", all.host.cpu_memory_bandwidth_bytes_per_s},
        {"delay_proxy_latency_s", all.host.proxy_latency_s},
        {"loopback_latency_s", all.host.loopback_latency_s},
        {"note",
         "facts of the measuring machine fitted with the generation constants, not used "
         "elsewhere"}};
    j["error"] = {{"tg_median_pct", median(e_tg_fit)},
                  {"tg_worst_pct", worst(e_tg_fit)},
                  {"tg_held_out_median_pct", median(e_tg_held)},
                  {"tg_held_out_worst_pct", worst(e_tg_held)},
                  {"pp_median_pct", median(e_pp_fit)},
                  {"pp_worst_pct", worst(e_pp_fit)},
                  {"pp_held_out_median_pct", median(e_pp_held)},
                  {"pp_held_out_worst_pct", worst(e_pp_held)},
                  {"folds", folds}};
    nlohmann::ordered_json ms = nlohmann::ordered_json::array();
    for (const Row& r : rows) {
      ms.push_back({{"config", r.config},
                    {"set", r.set},
                    {"tg_measured", r.tg},
                    {"tg_predicted", r.tg_fit},
                    {"tg_held_out", r.tg_held},
                    {"pp_measured", r.pp},
                    {"pp_predicted", r.pp_fit},
                    {"pp_held_out", r.pp_held},
                    {"pp_caveat", r.caveat}});
    }
    j["measurements"] = ms;
    std::ofstream(write_path) << j.dump(2) << "\n";
    std::printf("wrote %s\n", write_path.c_str());
  }
  return 0;
}
