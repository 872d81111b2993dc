// What a worker has: NVIDIA GPUs through NVML (loaded at run time with dlopen, so one binary runs
// with or without a driver), RAM and CPU from /proc, or GPUs declared on the command line for
// machines without them (a simulation: llama.cpp's CPU backend serves them, and the worker says
// so in its status and logs).
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ggfleet::worker {

struct GpuInfo {
  std::string name;  // as NVML reports it
  std::string uuid;
  std::uint64_t vram_bytes = 0;
  std::uint64_t used_bytes = 0;
  std::uint32_t utilisation_pct = 0;
};

// NVIDIA GPUs via libnvidia-ml.so.1; empty (and `why` set) without a driver.
std::vector<GpuInfo> nvml_gpus(std::string* why = nullptr);

// "NVIDIA L40S:48GiB" (or "NVIDIA L40S", size from the catalog). Throws std::invalid_argument.
GpuInfo parse_declared_gpu(const std::string& text);

// Memory a process holds resident (/proc/PID/status RssAnon + RssFile + RssShmem): its
// allocations and the pages of files it maps that are in memory — with mmap, the weights of the
// layers llama.cpp keeps on the CPU, which the estimate counts too; 0 when the process is gone.
std::uint64_t process_resident_bytes(int pid);

// GPU memory of each compute process, by (NVML GPU index, pid); empty without a driver.
std::map<std::pair<std::uint32_t, int>, std::uint64_t> nvml_process_bytes();

// What a worker offers of a GPU that its own processes use `own_bytes` of. `used_bytes` becomes
// the memory used by others (NVML counts ggfleet's processes too, and the server counts them
// again as claims). With `limit_bytes` > 0 the worker offers a slice of a shared GPU: at most
// that much, and others' use counts only where it leaves less than the slice free.
GpuInfo offered_gpu(const GpuInfo& gpu, std::uint64_t own_bytes, std::uint64_t limit_bytes);

struct HostInfo {
  std::uint32_t cores = 0;  // the cores this process may run on (its CPU affinity)
  std::uint64_t ram_total_bytes = 0;
  std::uint64_t ram_used_bytes = 0;  // total - available
};
HostInfo host_info();

// The resources object a worker reports (see server::worker_from_resources): cpu, ram, gpus,
// simulated. `cpu_bandwidth_bytes_per_s` 0 = leave it to the catalog default.
nlohmann::json resources_json(const HostInfo& host, const std::vector<GpuInfo>& gpus,
                              bool simulated, double cpu_bandwidth_bytes_per_s = 0);

}  // namespace ggfleet::worker
