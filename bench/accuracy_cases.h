// The estimate-accuracy matrix: llama-server runs on synthetic models whose reported buffers are
// compared with ggfleet's estimate, device by device. Shared by bench/estimate_accuracy (whole
// matrix, error table) and tests/estimate/accuracy_test (a small part, in CI).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "estimate/estimate.h"

namespace ggfleet::accuracy {

struct Case {
  std::string preset;
  std::uint32_t blocks = 4;
  std::uint32_t ctx = 4096;
  std::string cache = "f16";  // both K and V
  bool flash_attn = true;
  std::uint32_t parallel = 1;
  std::int32_t gpu_layers = -1;      // -1 = all
  std::uint32_t devices = 1;         // 0 = CPU only; else RPC servers (CPU) or local GPUs (CUDA)
  std::vector<double> tensor_split;  // empty = llama.cpp's default (equal free memory)
  std::uint32_t n_cpu_moe = 0;       // --n-cpu-moe: blocks whose experts stay in host RAM
  // With n_cpu_moe: the device index the first n_cpu_moe blocks' experts go to instead of host
  // RAM (an -ot rule naming that device's buffer), -1 = host RAM.
  std::int32_t experts_device = -1;
  std::string id() const;  // stable name, used for log files
};

// Buffer sizes llama.cpp reported, by component, for the host and each device (llama.cpp's order).
struct Usage {
  double weights_mib = 0;
  double kv_mib = 0;
  double compute_mib = 0;
  double output_mib = 0;
  double total() const { return weights_mib + kv_mib + compute_mib + output_mib; }
};
struct Measured {
  bool ok = false;
  std::string error;  // why the run failed, when !ok
  Usage host;
  std::vector<Usage> devices;
  std::vector<std::string> device_names;
};

// The matrix. `quick` = the part CI runs.
std::vector<Case> cases(bool quick);

// Configurations outside the matrix (other block counts, contexts, streams and offload levels)
// that check the compute-buffer rules read off ggml-alloc traces of matrix cases
// (bench/data/cuda-alloc-trace) on cases they were not read from.
std::vector<Case> held_out_cases();

// Parses a llama-server log (-lv 4). Device buffers are matched to devices by name: "CUDA<i>",
// or "RPC<k>[host:port]" in the order of `rpc_endpoints`.
Measured parse_log(const std::string& log, const std::vector<std::string>& rpc_endpoints,
                   std::uint32_t local_gpus);

// The layout ggfleet estimates for a case: devices named and sized as llama.cpp sees them.
estimate::Layout layout_for(const Case& c, bool cuda, std::uint64_t free_bytes_per_device);

// Our estimate in the same components.
Measured predicted(const estimate::Estimate& e);

// Reads a whole file ("" if missing).
std::string read_all(const std::string& path);

// llama-server's arguments for a case (-fit off, -lv 4 so buffer sizes are logged).
std::vector<std::string> server_args(const Case& c, const std::string& model, int port,
                                     const std::vector<std::string>& rpc, bool cuda);

// Starts the case's RPC servers (CPU backend, 127.0.0.1:port_base+10+i) and llama-server (on
// port_base), waits until it has reserved its buffers (or exited, or 240 s), stops everything and
// returns the server's log. Runs that may overlap need different port bases.
std::string run_case(const Case& c, const std::string& llama_bin, const std::string& model,
                     const std::string& log_path, int port_base);

// The RPC endpoints run_case uses for a case.
std::vector<std::string> rpc_endpoints(const Case& c, int port_base);

struct Verdict {
  double error_mib = 0;  // ours - llama.cpp on the total
  double error_pct = 0;
  bool pass = false;  // within max(2%, 32 MiB) and not more than 1% under
};
Verdict judge(double ours_mib, double theirs_mib);

}  // namespace ggfleet::accuracy
