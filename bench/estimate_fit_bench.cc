// Cost of one estimate and of each fit helper on a 61-block model (the DeepSeek-R1 preset) over a
// 4-device layout, as the planner calls them.
//
//   build/release/bench/estimate_fit_bench
#include <benchmark/benchmark.h>

#include <filesystem>
#include <random>

#include "estimate/fit.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"

namespace {

using namespace ggfleet;

struct Setup {
  estimate::ModelMemory memory;
  estimate::Layout layout;
  Setup() {
    std::random_device rd;
    const auto dir =
        std::filesystem::temp_directory_path() / ("ggfleet-fit-bench-" + std::to_string(rd()));
    const auto path = model::synth("deepseek-r1-ud-iq2_xxs", dir.string(), {}).front();
    const gguf::Model m = gguf::Model::open(path);
    memory = estimate::ModelMemory::from(m, model::profile(m));
    std::filesystem::remove_all(dir);
    // worker1's two L40S as RPC, and two local GPUs; 47 GiB free each.
    layout.devices = {{"RPC0", estimate::Backend::kCuda, true, 47ull << 30},
                      {"RPC1", estimate::Backend::kCuda, true, 47ull << 30},
                      {"CUDA0", estimate::Backend::kCuda, false, 47ull << 30},
                      {"CUDA1", estimate::Backend::kCuda, false, 47ull << 30}};
    layout.context.context_tokens = 8192;
  }
};

Setup& setup() {
  static Setup s;
  return s;
}

void BM_Estimate(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(estimate::estimate(setup().memory, setup().layout));
}
void BM_MaxGpuLayers(benchmark::State& state) {
  std::int32_t ngl = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(ngl = estimate::max_gpu_layers(setup().memory, setup().layout));
  state.counters["ngl"] = ngl;
}
void BM_MaxGpuLayersPartial(benchmark::State& state) {
  estimate::Layout l = setup().layout;
  for (auto& d : l.devices)
    d.free_bytes = 40ull << 30;  // 160 GiB for a 170 GiB model: a binary search
  std::int32_t ngl = 0;
  for (auto _ : state) benchmark::DoNotOptimize(ngl = estimate::max_gpu_layers(setup().memory, l));
  state.counters["ngl"] = ngl;
}
void BM_FitTensorSplit(benchmark::State& state) {
  estimate::Layout l = setup().layout;
  for (auto& d : l.devices) d.free_bytes = 60ull << 30;  // enough for the whole model
  bool found = false;
  for (auto _ : state) {
    const auto split = estimate::fit_tensor_split(setup().memory, l);
    found = split.has_value();
    benchmark::DoNotOptimize(split);
  }
  state.counters["found"] = found;
}

BENCHMARK(BM_Estimate)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_MaxGpuLayers)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_MaxGpuLayersPartial)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_FitTensorSplit)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
