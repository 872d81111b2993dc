// `ggfleet worker` (join a server and run what it assigns) and `ggfleet start` (server and a
// local worker in one process with SQLite: deploys a model and prints a working endpoint).
#pragma once

#include <string>
#include <vector>

#include "worker/agent.h"

namespace ggfleet::cli {

// Runs the agent until SIGINT/SIGTERM.
int run_worker(worker::AgentConfig config);

struct StartOptions {
  std::string listen = "127.0.0.1:8080";
  std::string data_dir = "ggfleet-data";
  std::string model;  // "" = a small synthetic model written under data_dir
  std::string llama_dir;
  std::vector<std::string> declared_gpus;
  std::string admin_key;
  bool once = false;  // one completion through the endpoint, then exit
};

int run_start(const StartOptions& options);

// llama.cpp's bin directory: `given`, $GGFLEET_LLAMA_DIR, scripts/llama-cpp's cache (CUDA, then
// CPU), or "" when none has llama-server.
std::string find_llama_bin(const std::string& given);

}  // namespace ggfleet::cli
