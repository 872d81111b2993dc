// Deployment options: the JSON object a client sends with a deployment (and `ggfleet plan` /
// `ggfleet deploy` build from their flags), turned into a planner request. One function, one set
// of defaults, for the CLI, the API and the scheduler.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "model/source.h"
#include "plan/plan.h"

namespace ggfleet::plan {

// The planner request for `options` (an object; every field optional):
//   context, parallel, batch_size, ubatch_size  non-negative integers (context 0 = the model's)
//   cache_type_k, cache_type_v                   ggml type names ("f16", "q8_0", ...)
//   flash_attn                                   "on" | "off" | "auto"
//   kv_unified, swa_full, kv_offload, mmap       booleans (llama.cpp's -kvu, --swa-full, ...)
//   policy                                       "spread" | "binpack"
//   allow_distributed, allow_cpu_offload         booleans
//   max_rpc_servers, threads                     integers
//   tie_tolerance                                number in [0, 1)
//   selector                                     object of strings (worker labels)
//   gpus                                         ["worker:index", ...]
//   main                                         the worker that must run llama-server
//   ngl                                          -1 (all) or a layer count
//   tensor_split                                 [number >= 0, ...], one per explicit GPU
//   extra_args                                   [string, ...] passed to llama-server
// Defaults are plan::Request's and estimate::ContextOptions' (context 4096, parallel 1, ...).
// Unknown fields, wrong types and impossible values throw std::invalid_argument naming the field.
Request request_from_options(const nlohmann::json& options, const std::string& model);

// Makes `r` about a model its main downloads: Request::model_files names each file as worker
// caches report it (its sha256, else its URL), Request::model_bytes is their sum. No change for
// an empty list (a local model).
void add_download(Request& r, const std::vector<model::ModelFile>& files);

// Checks the raw llama-server arguments of a deployment (options.extra_args) for the key's role.
// A user may give only flags of a short allowlist (sampling defaults and serving behaviour:
// --temp, --top-k, --top-p, --min-p, --seed, --n-predict, --jinja, --reasoning-format, ...), each
// with its value when it takes one. An admin may give anything except the denylist: flags that
// change where llama-server listens, what it loads or writes, its keys, or what the plan sets
// (--host, --port, -m, --model-url, -hf, --log-file, --slot-save-path, --api-key, --rpc, -ngl, -ts,
// -c, --parallel, ...), in "--flag value" and "--flag=value" forms. Throws std::invalid_argument
// naming the argument.
void check_extra_args(const std::vector<std::string>& args, bool admin);

}  // namespace ggfleet::plan
