// The fleet as plain data: workers, their CPUs, RAM and GPUs, reservations, and the network
// between them. Loaded from a YAML cluster file (or, later, filled by live workers).
//
//   workers:
//     - name: worker1
//       cpu: {cores: 64, memory_bandwidth: 180GB/s}
//       ram: {total: 512GiB, used: 16GiB}
//       reserved: {ram: 2GiB, vram: 1GiB}          # vram: per GPU
//       labels: {zone: a}
//       gpus:
//         - {name: NVIDIA L40S, vram: 48GiB, used: 0.5GiB}
//         - {name: NVIDIA L40S}                     # numbers from the GPU catalog
//   network:
//     default: {bandwidth: 10Gbit/s, latency: 0.2ms}
//     links: [{between: [worker1, worker2], bandwidth: 25Gbit/s, latency: 0.05ms}]
//   claims:                                        # memory running instances already hold
//     - {instance: chat-0, worker: worker1, gpu: 0, vram: 20GiB}
//     - {instance: chat-0, worker: worker1, ram: 8GiB}
//     - {instance: big-1, worker: worker2, gpu: 0, vram: 40GiB, rpc: true}  # lent over RPC
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace ggfleet::cluster {

class ClusterError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A CUDA process's own memory on a GPU it drives, beyond llama.cpp's buffers. Measured with NVML
// per process on an H200 (driver 580, CUDA 13, llama.cpp of node-llama-cpp 3.22.1): 589 MiB for
// each ggml-rpc-server, 676 MiB for llama-server on its local GPU (bench/data/gpu-layouts).
constexpr std::uint64_t kCudaRuntimeBytes = 640ull << 20;

struct Gpu {
  std::string name;  // as NVML reports it
  std::uint64_t vram_bytes = 0;
  std::uint64_t used_bytes = 0;  // in use by others
  double memory_bandwidth_bytes_per_s = 0;
  double fp16_flops = 0;
  double int8_ops = 0;
  // Taken by each process that drives it, outside llama.cpp's buffers (CUDA context, kernels,
  // cuBLAS workspace): kCudaRuntimeBytes unless the cluster file says `runtime`; 0 for GPUs a
  // worker simulates on its CPU.
  std::uint64_t runtime_bytes = kCudaRuntimeBytes;
  std::uint64_t claimed_bytes = 0;  // held by instances ggfleet placed (claims)
  std::string lent_to;              // instance this GPU is lent to over RPC ("" = none): an
                                    // rpc-server serves one client, so nothing else may use it
  // Learned from the fleet's own measurements (perf/corrections.h); 1 = as the catalog says.
  // The measured time of this GPU model's bandwidth-bound generation work, and of its prompt
  // matrix products, divided by what the catalog's numbers predict (2 = twice as slow).
  double generation_time_factor = 1;
  double prompt_time_factor = 1;
};

struct Cpu {
  std::uint32_t cores = 0;
  double memory_bandwidth_bytes_per_s = 0;
  // Learned, as for Gpu: this worker's CPU layers' measured time over the predicted one.
  double generation_time_factor = 1;
  double prompt_time_factor = 1;
};

struct Worker {
  std::string name;
  std::string address;  // where other workers reach it (default: the name)
  Cpu cpu;
  std::uint64_t ram_bytes = 0;
  std::uint64_t ram_used_bytes = 0;
  std::uint64_t reserved_ram_bytes = 0;
  std::uint64_t reserved_vram_bytes = 0;  // per GPU
  std::uint64_t claimed_ram_bytes = 0;    // held by instances ggfleet placed
  std::map<std::string, std::string> labels;
  std::vector<Gpu> gpus;
  // llama.cpp build the worker runs ("0.5.0-dev (build 1, commit de3ff81)"); "" = unknown.
  // llama.cpp's RPC protocol is only promised between equal builds.
  std::string llama_build;
  // Model files its download cache holds, by sha256 and by URL (a worker's "models" report).
  std::set<std::string> cached_files;
  double download_bytes_per_s = 0;  // as its last downloads went; 0 = not measured

  // What llama.cpp may use: total - used - reserved - claimed, never negative.
  std::uint64_t free_vram_bytes(std::size_t gpu) const;
  std::uint64_t free_ram_bytes() const;
};

// Whether `a` may use `b`'s GPUs over RPC (or the other way): the same llama.cpp build, or one of
// them unknown (a cluster file that does not say).
bool rpc_compatible(const Worker& a, const Worker& b);

struct Link {
  double bandwidth_bytes_per_s = 0;
  double latency_s = 0;
  // Learned, as for Gpu: the measured fixed cost of an RPC call over this link (round trip and
  // llama.cpp's per-call work) over the predicted one.
  double call_time_factor = 1;
};

struct Cluster {
  std::vector<Worker> workers;
  Link default_link{10e9 / 8, 0.2e-3, 1};
  std::map<std::pair<std::string, std::string>, Link> links;  // key: names in sorted order

  const Worker* find(const std::string& name) const;
  // The link between two workers (the default when none is given); a worker to itself is
  // loopback: no latency beyond the default's, memory-speed bandwidth is not assumed.
  Link link(const std::string& a, const std::string& b) const;
};

// The catalog's GPU of that (NVML) name with its catalog size and speeds, nothing used; nullopt
// when the catalog does not know it.
std::optional<Gpu> catalog_gpu(std::string_view reported_name);

// Parses a cluster file. Every problem is a ClusterError naming the file, the line and the
// field: unknown keys, bad units, negative sizes, duplicate worker names, a GPU that is neither
// in the catalog nor given its numbers, links naming unknown workers.
Cluster load_cluster(const std::string& path);
Cluster parse_cluster(const std::string& yaml_text, const std::string& name = "(cluster)");

// A live worker as the agent reports it (JSON: cpu.{cores, memory_bandwidth}, ram.{total, used},
// reserved.{ram, vram}, gpus[].{name, vram, used, memory_bandwidth, fp16, int8}, simulated), read
// by the same rules as a worker of a cluster file: bare numbers are bytes, bytes/s and
// operations/s; units ("48GiB") are accepted too. Throws ClusterError ("worker NAME: ...") on
// anything a cluster file would refuse.
Worker worker_from_json(const std::string& name, const std::string& address,
                        const nlohmann::json& labels, const nlohmann::json& resources);

// One GPU of the fleet as users write it: "WORKER:INDEX" (e.g. worker1:0).
struct GpuAddress {
  std::string worker;
  std::uint32_t gpu = 0;
};
// Parses "WORKER:INDEX": a non-empty worker name (it may hold colons itself: the last one
// separates), then a decimal index below 100000. nullopt for anything else; callers word the error.
std::optional<GpuAddress> parse_gpu_address(const std::string& text);

// Catalog default for a CPU without numbers: bandwidth per core, a conservative DDR4/DDR5 figure.
constexpr double kDefaultCpuBandwidthPerCore = 4e9;

}  // namespace ggfleet::cluster
