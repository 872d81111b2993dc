// Self-measurement of a machine ("dynamic resource evaluation"): CPU memory bandwidth, RAM, each
// GPU's effective memory bandwidth (llama-bench on a synthetic model), and latency and bandwidth
// to another ggfleet process. The result is a cluster-file fragment (see cluster/cluster.h) that
// workers report when they join and that people can paste into a cluster file.
//
// Thread safety: each function is self-contained; run_peer_server blocks its caller.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace ggfleet::worker {

struct CpuMeasurement {
  std::uint32_t cores = 0;  // logical CPUs usable by this process
  std::uint32_t threads_used = 0;
  double read_bandwidth_bytes_per_s =
      0;                              // all threads streaming through a buffer larger than caches
  std::uint64_t ram_total_bytes = 0;  // /proc/meminfo MemTotal
  std::uint64_t ram_used_bytes = 0;   // MemTotal - MemAvailable
};

// Streams `buffer_bytes` (at least 64 MiB, touched first) with `threads` threads (0 = all CPUs)
// for about `seconds`, keeping the best of several passes.
CpuMeasurement measure_cpu(std::uint64_t buffer_bytes = 1ull << 30, std::uint32_t threads = 0,
                           double seconds = 1.0);

struct GpuMeasurement {
  std::string device;  // llama.cpp's name, "CUDA0"
  std::string name;    // "NVIDIA H200"
  std::uint64_t vram_bytes = 0;
  std::uint64_t free_bytes = 0;
  double generation_tokens_per_s = 0;  // llama-bench tg on the calibration model
  // The catalog-equivalent memory bandwidth that makes the speed model predict that rate
  // (what a cluster file's memory_bandwidth means); 0 when not measured.
  double memory_bandwidth_bytes_per_s = 0;
  std::string error;  // why it was not measured, when it was not
};

// Parses `llama-bench --list-devices` (or llama-server's) output: "CUDA0: NVIDIA H200 (143155 MiB,
// 142000 MiB free)" lines. Only GPU-like devices (not CPU, not RPC).
std::vector<GpuMeasurement> parse_device_list(const std::string& output);

// Finds the GPUs llama.cpp sees (via `llama_bin_dir`/llama-bench) and, for each, runs llama-bench
// tg on a synthetic Llama-3-8B shape written under `work_dir`, turning the rate into bandwidth
// with the speed model's fitted constants. Without GPUs returns an empty list.
std::vector<GpuMeasurement> measure_gpus(const std::string& llama_bin_dir,
                                         const std::string& work_dir);

struct LinkMeasurement {
  std::string peer;      // host:port
  double latency_s = 0;  // one way: half the median round trip of small messages
  double bandwidth_bytes_per_s = 0;
};

// The probe's peer side: accepts connections on host:port and answers pings and bulk transfers,
// until `max_connections` have been served (0 = forever). Throws std::runtime_error if it cannot
// listen. Calls `on_listening` once the socket accepts connections.
void run_peer_server(const std::string& host, std::uint16_t port, std::uint32_t max_connections = 0,
                     const std::function<void()>& on_listening = {});

// Measures the link to a peer server: `pings` round trips of one byte, then `bulk_bytes` sent.
// Throws std::runtime_error naming the peer on connection errors.
LinkMeasurement measure_peer(const std::string& host_port, std::uint32_t pings = 200,
                             std::uint64_t bulk_bytes = 64ull << 20);

struct ProbeReport {
  std::string worker_name;
  CpuMeasurement cpu;
  std::vector<GpuMeasurement> gpus;
  std::vector<std::pair<std::string, LinkMeasurement>> links;  // peer worker name, measurement
};

// The report as a cluster-file fragment (YAML) that load_cluster accepts.
std::string report_yaml(const ProbeReport& report);

}  // namespace ggfleet::worker
