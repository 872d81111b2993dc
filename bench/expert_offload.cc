// Experts in host RAM against whole blocks on the CPU, measured on one GPU next to what the speed
// model predicts (bench/run_expert_offload makes the measurements on the GPU machine):
//
//   build/release/bench/expert_offload bench/data/expert-offload [--blocks 16] [--cpu-bandwidth
//   140e9] [--preset qwen3-30b-a3b-q4_k_m] [--prefix ""] [--parts]
//   build/release/bench/expert_offload bench/data/moe-batches --batches qwen-gpu.json [--blocks
//   16] [--preset ...]     prompt speed per micro-batch (bench/run_moe_batches), nothing else
//
// Reads DIR/PREFIXcmoe.json and DIR/PREFIXngl.json (llama-bench JSON; --prefix ",r2-" reads two
// sweeps and keeps each configuration's faster result), rebuilds the model's shape
// (sparse: the estimate and the speed model read only its header), and prints per configuration the
// GPU's estimated bytes, measured and predicted generation and prompt tokens/s, and which layout
// each ranks first among those that free at least as much VRAM as each whole-block level. --parts
// adds each prediction's parts (seconds per generated token, per 512-token prompt). Last, the
// planner itself on one worker whose GPU has each level's memory (plus the CUDA runtime's): the
// layout it chooses, that layout's measured speed, and its share of the best measured there.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cluster/cluster.h"
#include "estimate/estimate.h"
#include "estimate/experts.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"
#include "perf/perf.h"
#include "plan/plan.h"

namespace {

using namespace ggfleet;
namespace fs = std::filesystem;

struct Row {
  std::int32_t ngl = 99;
  std::uint32_t n_cpu_moe = 0;
  std::uint32_t threads = 16;
  bool mmap = true;  // llama-bench -lm mmap (the default) or none (llama.cpp's own buffers)
  std::uint32_t ubatch = 512, prompt = 512;  // -ub, -p
  double tg = 0, pp = 0;                     // measured tokens/s
  double tg_predicted = 0, pp_predicted = 0;
  std::uint64_t gpu_bytes = 0;  // estimated
};

// Reads llama-bench rows into `rows`, one per configuration: (-ngl, -ncmoe), and with `by_mode`
// also threads and load mode (the EXTRA runs of bench/run_expert_offload).
void read_rows(const std::string& path, std::vector<Row>& rows, bool by_mode = false) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  const nlohmann::json all = nlohmann::json::parse(in);
  for (const nlohmann::json& t : all) {
    const std::int32_t ngl = t.at("n_gpu_layers").get<std::int32_t>();
    const std::uint32_t moe = t.value("n_cpu_moe", 0u);
    const std::uint32_t threads = t.value("n_threads", 16u);
    // "auto" maps the file wherever the devices can (CUDA can): only "none" copies into buffers.
    const bool mmap = t.value("load_mode", std::string("auto")) != "none";
    const std::uint32_t ubatch = t.value("n_ubatch", 512u);
    Row* row = nullptr;
    for (Row& r : rows) {
      if (r.ngl == ngl && r.n_cpu_moe == moe && r.ubatch == ubatch &&
          (!by_mode || (r.threads == threads && r.mmap == mmap)))
        row = &r;
    }
    if (row == nullptr) {
      rows.push_back({});
      row = &rows.back();
      row->ngl = ngl;
      row->n_cpu_moe = moe;
      row->threads = threads;
      row->mmap = mmap;
      row->ubatch = ubatch;
    }
    if (t.at("n_prompt").get<std::uint32_t>() > 0)
      row->prompt = t.at("n_prompt").get<std::uint32_t>();
    // Several sweeps: the faster of them (a shared host's slow spells only ever slow a run down).
    double& rate = t.at("n_gen").get<int>() > 0 ? row->tg : row->pp;
    rate = std::max(rate, t.at("avg_ts").get<double>());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: expert_offload DIR [--blocks N] [--cpu-bandwidth BYTES_PER_S] [--preset "
                 "NAME] [--prefix P] [--parts] [--batches FILE]\n";
    return 2;
  }
  const std::string dir = argv[1];
  double cpu_bandwidth = 140e9;  // perf_cases' host default: not measured on this machine
  std::uint32_t blocks = 16;     // bench/run_expert_offload's default
  std::string preset = "qwen3-30b-a3b-q4_k_m";  // bench/run_expert_offload's default
  std::string prefix;
  bool parts = false;
  std::string batches;  // one llama-bench file of -ub runs: print its rows only
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--parts") {
      parts = true;
      continue;
    }
    if (i + 1 >= argc) break;
    const std::string value = argv[++i];
    if (arg == "--cpu-bandwidth") cpu_bandwidth = std::stod(value);
    if (arg == "--blocks") blocks = static_cast<std::uint32_t>(std::stoul(value));
    if (arg == "--preset") preset = value;
    if (arg == "--prefix") prefix = value;
    if (arg == "--batches") batches = value;
  }
  try {
    // "P1,P2": several sweeps of one model.
    std::vector<std::string> prefixes;
    for (std::size_t at = 0; at <= prefix.size();) {
      const std::size_t comma = std::min(prefix.find(',', at), prefix.size());
      prefixes.push_back(prefix.substr(at, comma - at));
      at = comma + 1;
    }
    std::vector<Row> rows;
    if (!batches.empty()) read_rows(dir + "/" + batches, rows);
    for (const std::string& one : prefixes) {
      if (!batches.empty()) break;
      read_rows(dir + "/" + one + "cmoe.json", rows);
      read_rows(dir + "/" + one + "ngl.json", rows);
    }
    const fs::path work = fs::temp_directory_path() / "ggfleet-expert-offload";
    model::SynthOptions o;
    o.blocks = blocks;
    const std::string path = model::synth(preset, work.string(), o).front();
    const gguf::Model file = gguf::Model::open(path);
    const estimate::ModelMemory m = estimate::ModelMemory::from(file, model::profile(file));

    cluster::Cluster cl;
    cluster::Worker w;
    w.name = "host";
    w.cpu.cores = 16;
    w.cpu.memory_bandwidth_bytes_per_s = cpu_bandwidth;
    w.ram_bytes = 128ull << 30;
    w.gpus = {cluster::catalog_gpu("NVIDIA H200").value()};
    cl.workers.push_back(w);

    // Predicts `r` (and prints it, with the prediction's parts when asked).
    auto predict_row = [&](Row& r, const std::string& name) {
      estimate::Layout l;
      l.devices.push_back({"CUDA0", estimate::Backend::kCuda, false, 140ull << 30, 0});
      l.gpu_layers = r.ngl > static_cast<std::int32_t>(blocks) ? -1 : r.ngl;
      l.context.context_tokens = 512 + 64;
      l.context.mmap = r.mmap;
      l.context.ubatch_tokens = r.ubatch;
      if (r.n_cpu_moe > 0) {
        l.experts.assign(m.blocks(), estimate::kExpertsWithBlock);
        for (std::uint32_t b = 0; b < r.n_cpu_moe && b < m.blocks(); ++b)
          l.experts[b] = estimate::kExpertsOnHost;
      }
      const estimate::Estimate e = estimate::estimate(m, l);
      perf::Scenario s;
      s.cluster = &cl;
      s.main_worker = "host";
      s.places = {{"host", 0}};
      s.threads = r.threads;
      s.depth_tokens = 32;
      const perf::Prediction tg = perf::predict(m, l, e, s);
      r.tg_predicted = tg.generation_tokens_per_s;
      s.depth_tokens = 0;
      s.prompt_tokens = r.prompt;
      const perf::Prediction pp = perf::predict(m, l, e, s);
      r.pp_predicted = pp.prompt_tokens_per_s;
      r.gpu_bytes = e.devices[0].total_bytes;
      std::printf("%-22s %10.0f %9.2f %9.2f %6.1f%% %9.1f %9.1f %6.1f%%\n", name.c_str(),
                  static_cast<double>(r.gpu_bytes) / (1 << 20), r.tg, r.tg_predicted,
                  100 * (r.tg_predicted / r.tg - 1), r.pp, r.pp_predicted,
                  100 * (r.pp_predicted / r.pp - 1));
      for (std::size_t i = 0; parts && i < tg.parts.size() && i < pp.parts.size(); ++i)
        std::printf("    %-36s tg %8.3f ms  pp %8.2f ms\n", tg.parts[i].what.c_str(),
                    1e3 * tg.parts[i].generation_s, 1e3 * pp.parts[i].prompt_s);
    };
    auto row_name = [&](const Row& r) {
      const std::string ub = batches.empty() ? "" : " ub " + std::to_string(r.ubatch);
      return (r.n_cpu_moe > 0 ? "experts of " + std::to_string(r.n_cpu_moe) + " on CPU"
                              : "-ngl " + std::to_string(r.ngl)) +
             ub;
    };
    std::printf("%-22s %10s %9s %9s %7s %9s %9s %7s\n", "layout", "GPU MiB", "tg meas", "tg pred",
                "err", "pp meas", "pp pred", "err");
    for (Row& r : rows) predict_row(r, row_name(r));
    if (!batches.empty()) return 0;
    // The EXTRA runs: threads and load mode (mapped file against llama.cpp's pinned buffers).
    std::vector<Row> extra;
    for (const std::string& one : prefixes) {
      for (const char* kind : {"extra-cmoe.json", "extra-ngl.json"}) {
        if (fs::exists(dir + "/" + one + kind)) read_rows(dir + "/" + one + kind, extra, true);
      }
    }
    if (!extra.empty())
      std::printf(
          "\nthreads and load mode (-lm mmap: the mapped file; none: llama.cpp's buffers)\n");
    for (Row& r : extra) {
      predict_row(r, row_name(r) + " t" + std::to_string(r.threads) + (r.mmap ? " mmap" : " none"));
    }
    // For each whole-block level: the best layout (by measured, by predicted generation speed)
    // among those that need no more VRAM.
    std::printf(
        "\nwithin the VRAM of each whole-block level: best measured / best predicted (tg)\n");
    for (const Row& level : rows) {
      if (level.n_cpu_moe > 0 || level.ngl > static_cast<std::int32_t>(blocks)) continue;
      const Row* best_measured = nullptr;
      const Row* best_predicted = nullptr;
      for (const Row& r : rows) {
        if (r.gpu_bytes > level.gpu_bytes) continue;
        if (!best_measured || r.tg > best_measured->tg) best_measured = &r;
        if (!best_predicted || r.tg_predicted > best_predicted->tg_predicted) best_predicted = &r;
      }
      auto name = [](const Row& r) {
        return r.n_cpu_moe > 0 ? "experts of " + std::to_string(r.n_cpu_moe)
                               : "-ngl " + std::to_string(r.ngl);
      };
      std::printf(
          "  -ngl %-3d (%6.0f MiB): %-16s %6.2f t/s | %-16s %6.2f t/s measured (%.2f of best)\n",
          level.ngl, static_cast<double>(level.gpu_bytes) / (1 << 20), name(*best_measured).c_str(),
          best_measured->tg, name(*best_predicted).c_str(), best_predicted->tg,
          best_predicted->tg / best_measured->tg);
    }
    // The planner on a GPU of each level's size: what it chooses and how that measured.
    std::printf("\nthe planner on one GPU of each level's memory: its choice, measured (tg)\n");
    std::vector<double> shares;
    for (const Row& level : rows) {
      if (level.n_cpu_moe > 0 || level.ngl > static_cast<std::int32_t>(blocks)) continue;
      cluster::Cluster one = cl;
      cluster::Gpu& g = one.workers[0].gpus[0];
      g.vram_bytes = level.gpu_bytes + g.runtime_bytes + (8ull << 20);
      plan::Request q;
      q.model_path = path;
      q.context.context_tokens = 512 + 64;
      q.threads = level.threads;
      q.explain = false;
      const plan::Plan p = plan::make_plan(m, one, q);
      const Row* best = nullptr;
      for (const Row& r : rows)
        if (r.gpu_bytes <= level.gpu_bytes && (!best || r.tg > best->tg)) best = &r;
      if (!p.feasible || best == nullptr) {
        std::printf("  -ngl %-3d: nothing planned (%s)\n", level.ngl, p.reason.c_str());
        continue;
      }
      const plan::Candidate& c = p.replicas[0].chosen;
      const std::uint32_t experts = c.estimate.host_expert_blocks;
      const auto ngl = static_cast<std::int32_t>(c.estimate.offloaded_layers);
      // The --n-cpu-moe N that places the same experts: blocks 0..N-1 (dense ones move nothing).
      const std::vector<std::uint32_t> host = estimate::host_expert_blocks(c.layout);
      std::uint32_t n_cpu_moe = host.empty() ? 0 : host.back() + 1;
      for (std::uint32_t b = 0; b < n_cpu_moe; ++b) {
        const bool moe = m.layers[b].expert_cuda_bytes > 0;
        if (moe && !std::binary_search(host.begin(), host.end(), b)) n_cpu_moe = 0;  // not a prefix
      }
      const Row* measured = nullptr;
      for (const Row& r : rows) {
        const bool same = experts > 0
                              ? n_cpu_moe > 0 && r.n_cpu_moe == n_cpu_moe && c.cpu_layers() == 0
                              : r.n_cpu_moe == 0 && r.ngl == ngl;
        if (same) measured = &r;
      }
      const std::string chosen =
          experts > 0 ? "experts of " + std::to_string(n_cpu_moe) : "-ngl " + std::to_string(ngl);
      if (measured == nullptr) {
        std::printf("  -ngl %-3d: planner chose %s, not measured\n", level.ngl, chosen.c_str());
        continue;
      }
      shares.push_back(measured->tg / best->tg);
      std::printf(
          "  -ngl %-3d (%6.0f MiB): planner chose %-16s %6.2f t/s measured (%.2f of best)\n",
          level.ngl, static_cast<double>(level.gpu_bytes) / (1 << 20), chosen.c_str(), measured->tg,
          shares.back());
    }
    if (!shares.empty()) {
      std::sort(shares.begin(), shares.end());
      std::printf("  %zu levels: worst %.2f, median %.2f of the best measured\n", shares.size(),
                  shares.front(), shares[shares.size() / 2]);
    }
  } catch (const std::exception& e) {
    std::cerr << "expert_offload: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
