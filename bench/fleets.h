// Generated (seeded) fleets for the planner's benchmark and its tests.
//
//   mixed_fleet(N)            N/8 workers of 8 GPUs drawn from eight models, a quarter of the
//                             memory of 30 % of them used (identical workers are common).
//   heterogeneous_fleet(N, s) N GPUs on workers of 1, 2, 4 or 8 GPUs of one model each (A100 80GB,
//                             H100, L40S, RTX 4090, RTX 3090); each GPU's used memory drawn from 0
//                             to 78 GiB (idle with probability 0.3); 5 % of the workers have a fast
//                             CPU (64 cores, 400 GB/s), the rest a weak one (8 or 16 cores, 40 to
//                             80 GB/s). No two workers alike.
#pragma once

#include <algorithm>
#include <random>
#include <string>

#include "cluster/cluster.h"

namespace ggfleet::bench {

inline cluster::Gpu gpu_of(const char* name) {
  return cluster::catalog_gpu(name).value();
}

inline cluster::Cluster mixed_fleet(int gpus) {
  static const char* kinds[] = {
      "NVIDIA H100 SXM", "NVIDIA A100 80GB", "NVIDIA L40S", "NVIDIA GeForce RTX 4090",
      "NVIDIA L4",       "NVIDIA A10",       "NVIDIA H200", "NVIDIA GeForce RTX 3090"};
  const int workers = std::max(1, gpus / 8);
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
      cluster::Gpu gpu = gpu_of(kinds[pick(rng)]);
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

inline cluster::Cluster heterogeneous_fleet(int gpus, std::uint32_t seed) {
  static const char* kinds[] = {"NVIDIA A100 80GB", "NVIDIA H100 SXM", "NVIDIA L40S",
                                "NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090"};
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> kind(0, 4), per_worker(0, 3), percent(0, 99);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  cluster::Cluster c;
  int placed = 0;
  for (int i = 0; placed < gpus; ++i) {
    cluster::Worker w;
    w.name = "w" + std::to_string(i);
    w.address = w.name;
    if (percent(rng) < 5) {
      w.cpu.cores = 64;
      w.cpu.memory_bandwidth_bytes_per_s = 400e9;
      w.ram_bytes = 1024ull << 30;
    } else {
      w.cpu.cores = 8u << (percent(rng) % 2);
      w.cpu.memory_bandwidth_bytes_per_s = 40e9 + 40e9 * unit(rng);
      w.ram_bytes = (128ull << 30) << (percent(rng) % 2);
    }
    w.reserved_vram_bytes = 512ull << 20;
    const int n = std::min(1 << per_worker(rng), gpus - placed);
    const char* model = kinds[kind(rng)];
    for (int g = 0; g < n; ++g) {
      cluster::Gpu gpu = gpu_of(model);
      const double most =
          std::min<double>(78.0 * (1ull << 30), static_cast<double>(gpu.vram_bytes));
      gpu.used_bytes = percent(rng) < 30 ? 0 : static_cast<std::uint64_t>(most * unit(rng));
      w.gpus.push_back(gpu);
    }
    placed += n;
    c.workers.push_back(std::move(w));
  }
  return c;
}

}  // namespace ggfleet::bench
