// Parse time and peak heap of our GGUF reader against ggml's gguf_init_from_file (no_alloc), on
// the DeepSeek-R1 preset (4 sparse shards, 129k-token vocabulary) and the Llama-3-70B preset.
//
//   build/release/bench/gguf_parse_bench [--benchmark_repetitions=5]
//
// Each benchmark reports `peak_heap_bytes`: the most heap bytes live at once during one parse
// (operator new/delete are counted in this binary; ggml's GGUF code allocates through them too).
#include <benchmark/benchmark.h>
#include <gguf.h>
#include <malloc.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "gguf/reader.h"
#include "heap_counter.h"
#include "model/synth.h"

namespace {

struct Fixture {
  std::filesystem::path dir;
  std::vector<std::string> deepseek;
  std::vector<std::string> llama70b;
  Fixture() {
    std::random_device rd;
    dir = std::filesystem::temp_directory_path() / ("ggfleet-bench-" + std::to_string(rd()));
    ggfleet::model::SynthOptions o;  // sparse: full-size files cost no disk
    deepseek = ggfleet::model::synth("deepseek-r1-ud-iq2_xxs", dir.string(), o);
    llama70b = ggfleet::model::synth("llama3-70b-q4_k_m", dir.string(), o);
  }
  ~Fixture() { std::filesystem::remove_all(dir); }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void parse_ours(const std::vector<std::string>& shards) {
  const auto model = ggfleet::gguf::Model::open(shards.front());
  benchmark::DoNotOptimize(model.tensors().size());
}

void parse_ggml(const std::vector<std::string>& shards) {
  for (const std::string& s : shards) {
    gguf_init_params params{};
    params.no_alloc = true;
    gguf_context* ctx = gguf_init_from_file(s.c_str(), params);
    if (!ctx) std::abort();
    benchmark::DoNotOptimize(gguf_get_n_tensors(ctx));
    gguf_free(ctx);
  }
}

void run(benchmark::State& state, const std::vector<std::string>& shards,
         void (*parse)(const std::vector<std::string>&)) {
  state.counters["peak_heap_bytes"] =
      static_cast<double>(ggfleet::bench::measure_peak_heap([&] { parse(shards); }));
  for (auto _ : state) parse(shards);
}

void BM_DeepSeekR1_ours(benchmark::State& s) {
  run(s, fixture().deepseek, parse_ours);
}
void BM_DeepSeekR1_ggml(benchmark::State& s) {
  run(s, fixture().deepseek, parse_ggml);
}
void BM_Llama3_70B_ours(benchmark::State& s) {
  run(s, fixture().llama70b, parse_ours);
}
void BM_Llama3_70B_ggml(benchmark::State& s) {
  run(s, fixture().llama70b, parse_ggml);
}

BENCHMARK(BM_DeepSeekR1_ours)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_DeepSeekR1_ggml)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Llama3_70B_ours)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Llama3_70B_ggml)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
