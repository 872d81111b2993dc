// Our memory estimate against the real llama.cpp, component by component, on synthetic models.
//
//   build/release/bench/estimate_accuracy              whole matrix on the CPU build, with 0-3
//                                                      RPC servers (CPU backend) on 127.0.0.1
//   build/release/bench/estimate_accuracy --quick      the part CI runs
//   ... --commands DIR      print a shell script that runs the matrix on local CUDA GPUs, writing
//                           logs to DIR (run it on the GPU machine with $LLAMA and $SYNTH set;
//                           with one GPU, GGML_CUDA_DEVICES=2 makes two CUDA devices of it)
//   ... --from-logs DIR --cuda   compare against logs saved from such a run (bench/data/cuda)
//   ... --held-out          the held-out cases instead of the matrix (accuracy_cases.h;
//                           logs in bench/data/cuda-held-out)
//   ... --only TEXT         run only the cases whose id contains TEXT
//   ... --max-devices N     skip cases with more devices (the GPU machine has 2 GPUs)
//   ... --check             exit 1 if any device misses the goal (max(2%, 32 MiB), at most 1%
//   under)
//
// Prints one row per device and host: llama.cpp's total, ours, the error, and the components.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <thread>

#include "accuracy_cases.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"

namespace {

using namespace ggfleet;
namespace fs = std::filesystem;

std::string fmt(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.2f", v);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, check = false, cuda = false, held_out = false;
  std::uint32_t max_devices = 3;
  int port_base = 53090;  // the CI test uses 30090
  std::string only;       // run only cases whose id contains this
  std::string from_logs, commands_dir;
  std::string llama_bin = std::string(std::getenv("HOME") ? std::getenv("HOME") : "/root") +
                          "/.cache/ggfleet/llama.cpp/3.22.1-cpu/bin";
  if (const char* d = std::getenv("GGFLEET_LLAMA_CPP_DIR"); d && *d)
    llama_bin = std::string(d) + "/bin";
  std::string work = (fs::temp_directory_path() / "ggfleet-accuracy").string();
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick")
      quick = true;
    else if (a == "--check")
      check = true;
    else if (a == "--held-out")
      held_out = true;
    else if (a == "--cuda")
      cuda = true;
    else if (a == "--from-logs" && i + 1 < argc)
      from_logs = argv[++i];
    else if (a == "--commands" && i + 1 < argc)
      commands_dir = argv[++i];
    else if (a == "--work" && i + 1 < argc)
      work = argv[++i];
    else if (a == "--only" && i + 1 < argc)
      only = argv[++i];
    else if (a == "--port-base" && i + 1 < argc)
      port_base = std::stoi(argv[++i]);
    else if (a == "--max-devices" && i + 1 < argc)
      max_devices = static_cast<std::uint32_t>(std::stoul(argv[++i]));
    else {
      std::cerr << "usage: estimate_accuracy [--quick | --held-out] [--check] [--cuda] "
                   "[--from-logs DIR] [--commands DIR] [--work DIR] [--only TEXT]\n";
      return 2;
    }
  }
  const std::vector<accuracy::Case> matrix =
      held_out ? accuracy::held_out_cases() : accuracy::cases(quick);

  if (!commands_dir.empty()) {
    // A script for the GPU machine: $LLAMA (bin dir) and $SYNTH (ggfleet-synth) come from the
    // caller.
    std::cout << "#!/usr/bin/env bash\nset -u\nmkdir -p " << commands_dir << " models\n";
    std::map<std::string, bool> made;
    for (const accuracy::Case& c : matrix) {
      if (c.devices > max_devices || c.id().find(only) == std::string::npos) continue;
      const std::string model = "models/" + c.preset + "-b" + std::to_string(c.blocks);
      if (!made[model]) {
        std::cout << "mkdir -p " << model << " && $SYNTH " << c.preset << " " << model << " "
                  << c.blocks << " > " << model << "/path\n";
        made[model] = true;
      }
      std::cout << "echo " << c.id() << "\ntimeout 300 $LLAMA/llama-server";
      for (const std::string& a :
           accuracy::server_args(c, "$(cat " + model + "/path)", 52090, {}, true)) {
        // Rules such as -ot blk\.(0|1)\...=CUDA1 hold shell characters: single-quote them.
        const bool plain = a.rfind("$(", 0) == 0 || a.find_first_of("()|\\") == std::string::npos;
        std::cout << " " << (plain ? a : "'" + a + "'");
      }
      std::cout << " > " << commands_dir << "/" << c.id()
                << ".log 2>&1 &\npid=$!\nfor i in $(seq 1 600); do "
                << "grep -q 'server is listening\\|all slots are idle' " << commands_dir << "/"
                << c.id()
                << ".log && break; kill -0 $pid 2>/dev/null || break; sleep 0.5; done\nkill $pid; "
                   "wait $pid\n";
    }
    return 0;
  }

  if (!from_logs.empty()) work += "-from-logs";  // never share model files with a live run
  fs::create_directories(work);
  std::map<std::string, std::string> model_paths;
  std::map<std::string, estimate::ModelMemory> memories;
  int failures = 0, rows = 0;
  std::printf("%-58s %-7s %10s %10s %9s %7s  %s\n", "case", "device", "llama.cpp", "ggfleet",
              "err MiB", "err %", "llama.cpp weights/kv/compute/output  | ggfleet");
  for (const accuracy::Case& c : matrix) {
    if (c.devices > max_devices || c.id().find(only) == std::string::npos) continue;
    const std::string key = c.preset + "-b" + std::to_string(c.blocks);
    if (!model_paths.count(key)) {
      model::SynthOptions o;
      o.blocks = c.blocks;
      model_paths[key] = model::synth(c.preset, (fs::path(work) / key).string(), o).front();
      const gguf::Model m = gguf::Model::open(model_paths[key]);
      memories.emplace(key, estimate::ModelMemory::from(m, model::profile(m)));
    }
    std::string log;
    std::vector<std::string> endpoints;
    // RPC servers as a live run starts them (logs of an earlier run with the same --port-base
    // name the same endpoints).
    if (!cuda) endpoints = accuracy::rpc_endpoints(c, port_base);
    if (!from_logs.empty()) {
      log = accuracy::read_all(from_logs + "/" + c.id() + ".log");
    } else {
      log = accuracy::run_case(c, llama_bin, model_paths[key],
                               (fs::path(work) / (c.id() + ".log")).string(), port_base);
    }
    const accuracy::Measured theirs =
        accuracy::parse_log(log, endpoints, cuda ? std::max<std::uint32_t>(c.devices, 1) : 0);
    if (!theirs.ok) {
      std::printf("%-58s llama.cpp run failed: %s\n", c.id().c_str(), theirs.error.c_str());
      ++failures;
      continue;
    }
    const accuracy::Measured ours = accuracy::predicted(
        estimate::estimate(memories.at(key), accuracy::layout_for(c, cuda, 24ull << 30)));
    auto row = [&](const std::string& name, const accuracy::Usage& t, const accuracy::Usage& o) {
      if (t.total() == 0 && o.total() == 0) return;
      const accuracy::Verdict v = accuracy::judge(o.total(), t.total());
      ++rows;
      if (!v.pass) ++failures;
      std::printf("%-58s %-7s %10s %10s %9s %6s%%%s %s/%s/%s/%s | %s/%s/%s/%s\n", c.id().c_str(),
                  name.c_str(), fmt(t.total()).c_str(), fmt(o.total()).c_str(),
                  fmt(v.error_mib).c_str(), fmt(v.error_pct).c_str(), v.pass ? " " : "!",
                  fmt(t.weights_mib).c_str(), fmt(t.kv_mib).c_str(), fmt(t.compute_mib).c_str(),
                  fmt(t.output_mib).c_str(), fmt(o.weights_mib).c_str(), fmt(o.kv_mib).c_str(),
                  fmt(o.compute_mib).c_str(), fmt(o.output_mib).c_str());
    };
    row("host", theirs.host, ours.host);
    for (std::size_t d = 0; d < theirs.devices.size() && d < ours.devices.size(); ++d) {
      row(ours.device_names[d], theirs.devices[d], ours.devices[d]);
    }
    std::fflush(stdout);
  }
  std::printf("\n%d rows, %d outside the goal (max(2%%, 32 MiB), at most 1%% under) or failed\n",
              rows, failures);
  return check && failures > 0 ? 1 : 0;
}
