// Planning time and peak heap of the planner for DeepSeek-R1 UD-IQ2_XXS (183 GB, context 8192)
// on fleets of 2, 16, 128 and 1,000 workers with 8 mixed GPUs each (up to 8,000 GPUs).
//
//   build/release/bench/plan_bench [--benchmark_repetitions=3]
//
// Fleets are generated (seeded): each worker gets 8 GPUs drawn from a mix of data-centre and
// consumer cards, some memory already used, a CPU and RAM; a few links are faster or slower than
// the default. Counters: peak_heap_bytes (most heap live at once during one plan), layouts
// (layouts estimated and predicted), mains (main workers searched).
#include <benchmark/benchmark.h>

#include <filesystem>
#include <memory>
#include <random>

#include "cluster/catalog.h"
#include "gguf/reader.h"
#include "heap_counter.h"
#include "model/profile.h"
#include "model/synth.h"
#include "plan/plan.h"

namespace {

using namespace ggfleet;

struct Fixture {
  std::filesystem::path dir;
  std::unique_ptr<estimate::ModelMemory> model;
  Fixture() {
    std::random_device rd;
    dir = std::filesystem::temp_directory_path() / ("ggfleet-plan-bench-" + std::to_string(rd()));
    model::SynthOptions o;
    o.shards = 4;
    const std::string path = model::synth("deepseek-r1-ud-iq2_xxs", dir.string(), o).front();
    const gguf::Model m = gguf::Model::open(path);
    model =
        std::make_unique<estimate::ModelMemory>(estimate::ModelMemory::from(m, model::profile(m)));
  }
  ~Fixture() { std::filesystem::remove_all(dir); }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

cluster::Cluster fleet(int workers) {
  static const char* kinds[] = {
      "NVIDIA H100 SXM", "NVIDIA A100 80GB", "NVIDIA L40S", "NVIDIA GeForce RTX 4090",
      "NVIDIA L4",       "NVIDIA A10",       "NVIDIA H200", "NVIDIA GeForce RTX 3090"};
  std::mt19937 rng(static_cast<std::uint32_t>(workers));
  std::uniform_int_distribution<int> pick(0, 7), percent(0, 99);
  cluster::Cluster c;
  for (int i = 0; i < workers; ++i) {
    cluster::Worker w;
    w.name = "w" + std::to_string(i);
    w.address = w.name;
    w.cpu.cores = 16u << (pick(rng) % 3);
    w.cpu.memory_bandwidth_bytes_per_s = 50e9 + 25e9 * (pick(rng) % 6);
    w.ram_bytes = (256ull << 30) << (pick(rng) % 2);
    w.reserved_vram_bytes = 1ull << 30;
    for (int g = 0; g < 8; ++g) {
      const auto spec = cluster::find_gpu(kinds[pick(rng)]);
      cluster::Gpu gpu;
      gpu.name = spec->name;
      gpu.vram_bytes = spec->vram_bytes;
      gpu.memory_bandwidth_bytes_per_s = spec->memory_bandwidth_bytes_per_s;
      gpu.fp16_flops = spec->fp16_flops;
      gpu.int8_ops = spec->int8_ops;
      gpu.used_bytes = percent(rng) < 30 ? gpu.vram_bytes / 4 : 0;
      w.gpus.push_back(gpu);
    }
    c.workers.push_back(std::move(w));
  }
  for (int i = 0; i + 1 < workers; i += 7) {
    c.links[{"w" + std::to_string(i), "w" + std::to_string(i + 1)}] = {100e9 / 8, 20e-6};
  }
  return c;
}

void BM_PlanDeepSeek(benchmark::State& state) {
  const int workers = static_cast<int>(state.range(0));
  const cluster::Cluster cl = fleet(workers);
  plan::Request r;
  r.model_path = "deepseek.gguf";
  r.context.context_tokens = 8192;
  const estimate::ModelMemory& m = *fixture().model;
  plan::Plan last;
  for (auto _ : state) {
    last = plan::make_plan(m, cl, r);
    benchmark::DoNotOptimize(last);
  }
  state.counters["gpus"] = workers * 8;
  state.counters["layouts"] = static_cast<double>(last.layouts_evaluated);
  state.counters["mains"] = static_cast<double>(last.mains_evaluated);
  state.counters["tg"] =
      last.feasible ? last.replicas[0].chosen.prediction.generation_tokens_per_s : 0;
  state.counters["peak_heap_bytes"] = static_cast<double>(
      bench::measure_peak_heap([&] { benchmark::DoNotOptimize(plan::make_plan(m, cl, r)); }));
}
BENCHMARK(BM_PlanDeepSeek)->Arg(2)->Arg(16)->Arg(128)->Arg(1000)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
