// Planning time, layouts evaluated and peak heap of the planner, for three models on two kinds of
// generated (seeded) fleets, with the search before issue 18 (`reference`) beside today's (`fast`)
// in the same run:
//
//   build/release/bench/plan_bench [--benchmark_filter=hetero] [--benchmark_repetitions=3]
//
// Models: DeepSeek-R1 UD-IQ2_XXS (183 GB, 4 shards), Llama 3 70B Q4_K_M (dense, 40 GB) and Qwen3
// 30B-A3B Q4_K_M (MoE, 17 GB), context 8192.
// Fleets (bench/fleets.h): mixed/N, the fleet of the first benchmark, where identical workers
// are common; hetero/N, where no two workers are alike (used memory drawn per GPU, five GPU
// models, a few fast CPUs and many weak ones).
// Counters: layouts (layouts estimated), mains (main workers searched), tg (predicted tokens/s
// of the plan), tg_vs_reference (fast only: its tg over the reference search's on the same
// fleet), peak_heap_bytes (most heap live at once during one plan).
#include <benchmark/benchmark.h>

#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <string>

#include "fleets.h"
#include "gguf/reader.h"
#include "heap_counter.h"
#include "model/profile.h"
#include "model/synth.h"
#include "plan/plan.h"

namespace {

using namespace ggfleet;

struct Models {
  std::filesystem::path dir;
  std::map<std::string, std::unique_ptr<estimate::ModelMemory>> by_name;
  Models() {
    std::random_device rd;
    dir = std::filesystem::temp_directory_path() / ("ggfleet-plan-bench-" + std::to_string(rd()));
    for (const auto& [name, shards] :
         std::map<std::string, std::uint32_t>{{"deepseek-r1-ud-iq2_xxs", 4},
                                              {"llama3-70b-q4_k_m", 1},
                                              {"qwen3-30b-a3b-q4_k_m", 1}}) {
      model::SynthOptions o;
      o.shards = shards;
      const std::string path = model::synth(name, (dir / name).string(), o).front();
      const gguf::Model m = gguf::Model::open(path);
      by_name[name] = std::make_unique<estimate::ModelMemory>(
          estimate::ModelMemory::from(m, model::profile(m)));
    }
  }
  ~Models() { std::filesystem::remove_all(dir); }
};

const estimate::ModelMemory& model_named(const std::string& name) {
  static Models models;
  return *models.by_name.at(name);
}

void run_plan(benchmark::State& state, const std::string& model_name, const cluster::Cluster& cl,
              plan::SearchMode mode) {
  plan::Request r;
  r.model_path = model_name + ".gguf";
  r.context.context_tokens = 8192;
  r.search = mode;
  const estimate::ModelMemory& m = model_named(model_name);
  plan::Plan last;
  for (auto _ : state) {
    last = plan::make_plan(m, cl, r);
    benchmark::DoNotOptimize(last);
  }
  std::size_t gpus = 0;
  for (const cluster::Worker& w : cl.workers) gpus += w.gpus.size();
  state.counters["gpus"] = static_cast<double>(gpus);
  state.counters["layouts"] = static_cast<double>(last.layouts_evaluated);
  state.counters["mains"] = static_cast<double>(last.mains_evaluated);
  const double tg = last.feasible ? last.replicas[0].chosen.prediction.generation_tokens_per_s : 0;
  state.counters["tg"] = tg;
  if (mode == plan::SearchMode::kFast) {
    plan::Request old = r;
    old.search = plan::SearchMode::kReference;
    const plan::Plan ref = plan::make_plan(m, cl, old);
    const double ref_tg =
        ref.feasible ? ref.replicas[0].chosen.prediction.generation_tokens_per_s : 0;
    state.counters["tg_vs_reference"] = ref_tg > 0 ? tg / ref_tg : (tg > 0 ? 99 : 1);
  }
  state.counters["peak_heap_bytes"] = static_cast<double>(
      bench::measure_peak_heap([&] { benchmark::DoNotOptimize(plan::make_plan(m, cl, r)); }));
}

void register_all() {
  static std::map<std::string, cluster::Cluster> fleets;
  for (const int gpus : {16, 128, 1024, 8000}) {
    fleets["mixed/" + std::to_string(gpus)] = bench::mixed_fleet(gpus);
    fleets["hetero/" + std::to_string(gpus)] =
        bench::heterogeneous_fleet(gpus, static_cast<std::uint32_t>(gpus));
  }
  for (const char* kind : {"hetero", "mixed"}) {
    for (const char* model :
         {"deepseek-r1-ud-iq2_xxs", "llama3-70b-q4_k_m", "qwen3-30b-a3b-q4_k_m"}) {
      for (const int gpus : {16, 128, 1024, 8000}) {
        const std::string fleet = std::string(kind) + "/" + std::to_string(gpus);
        for (const auto& [mode, label] : {std::pair{plan::SearchMode::kReference, "reference"},
                                          std::pair{plan::SearchMode::kFast, "fast"}}) {
          const cluster::Cluster* cl = &fleets.at(fleet);
          const std::string name = std::string(model) + "/" + fleet + "/" + label;
          benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& s) {
            run_plan(s, model, *cl, mode);
          })->Unit(benchmark::kMillisecond);
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
