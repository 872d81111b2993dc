#include "plan/options.h"

#include <map>
#include <set>
#include <stdexcept>

#include "cluster/cluster.h"
#include "gguf/types.h"

namespace ggfleet::plan {
namespace {

using nlohmann::json;

std::uint64_t uint_field(const json& j, const char* key, std::uint64_t max = UINT64_MAX) {
  const json& v = j.at(key);
  if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::uint64_t>() > max) {
    throw std::invalid_argument(std::string(key) + " must be a non-negative integer" +
                                (max < UINT64_MAX ? " up to " + std::to_string(max) : ""));
  }
  return v.get<std::uint64_t>();
}

double number_field(const json& j, const char* key) {
  const json& v = j.at(key);
  if (!v.is_number()) throw std::invalid_argument(std::string(key) + " must be a number");
  return v.get<double>();
}

bool bool_field(const json& j, const char* key) {
  if (!j.at(key).is_boolean())
    throw std::invalid_argument(std::string(key) + " must be true or false");
  return j.at(key).get<bool>();
}

std::string string_field(const json& j, const char* key) {
  if (!j.at(key).is_string()) throw std::invalid_argument(std::string(key) + " must be a string");
  return j.at(key).get<std::string>();
}

gguf::GgmlType cache_type(const std::string& name, const char* key) {
  const auto t = gguf::type_from_name(name);
  if (!t) throw std::invalid_argument(std::string(key) + ": unknown type '" + name + "'");
  return *t;
}

}  // namespace

Request request_from_options(const json& o, const std::string& model) {
  if (!o.is_object()) throw std::invalid_argument("options must be an object");
  static const std::set<std::string> known = {"context",
                                              "parallel",
                                              "cache_type_k",
                                              "cache_type_v",
                                              "flash_attn",
                                              "batch_size",
                                              "ubatch_size",
                                              "policy",
                                              "allow_distributed",
                                              "allow_cpu_offload",
                                              "expert_offload",
                                              "max_rpc_servers",
                                              "selector",
                                              "gpus",
                                              "main",
                                              "ngl",
                                              "tensor_split",
                                              "extra_args",
                                              "threads",
                                              "tie_tolerance",
                                              "kv_unified",
                                              "swa_full",
                                              "kv_offload",
                                              "mmap"};
  for (const auto& [k, v] : o.items()) {
    if (!known.count(k)) throw std::invalid_argument("unknown option '" + k + "'");
  }
  Request r;
  r.model_path = model;
  r.context.context_tokens = 4096;
  if (o.contains("context"))
    r.context.context_tokens = static_cast<std::uint32_t>(uint_field(o, "context", 1u << 24));
  if (o.contains("parallel"))
    r.context.parallel = static_cast<std::uint32_t>(uint_field(o, "parallel", 256));
  if (r.context.parallel == 0) throw std::invalid_argument("parallel must be at least 1");
  if (o.contains("batch_size"))
    r.context.batch_tokens = static_cast<std::uint32_t>(uint_field(o, "batch_size", 1u << 20));
  if (o.contains("ubatch_size"))
    r.context.ubatch_tokens = static_cast<std::uint32_t>(uint_field(o, "ubatch_size", 1u << 20));
  if (r.context.batch_tokens == 0 || r.context.ubatch_tokens == 0) {
    throw std::invalid_argument("batch_size and ubatch_size must be at least 1");
  }
  if (o.contains("cache_type_k"))
    r.context.cache_type_k = cache_type(string_field(o, "cache_type_k"), "cache_type_k");
  if (o.contains("cache_type_v"))
    r.context.cache_type_v = cache_type(string_field(o, "cache_type_v"), "cache_type_v");
  if (o.contains("flash_attn")) {
    const std::string fa = string_field(o, "flash_attn");
    if (fa == "on")
      r.context.flash_attention = estimate::FlashAttention::kOn;
    else if (fa == "off")
      r.context.flash_attention = estimate::FlashAttention::kOff;
    else if (fa == "auto")
      r.context.flash_attention = estimate::FlashAttention::kAuto;
    else
      throw std::invalid_argument("flash_attn must be on, off or auto");
  }
  if (o.contains("kv_unified")) r.context.kv_unified = bool_field(o, "kv_unified");
  if (o.contains("swa_full")) r.context.swa_full = bool_field(o, "swa_full");
  if (o.contains("kv_offload")) r.context.kv_offload = bool_field(o, "kv_offload");
  if (o.contains("mmap")) r.context.mmap = bool_field(o, "mmap");
  if (o.contains("policy")) {
    const std::string p = string_field(o, "policy");
    if (p != "spread" && p != "binpack")
      throw std::invalid_argument("policy must be spread or binpack");
    r.policy = p == "spread" ? Policy::kSpread : Policy::kBinpack;
  }
  if (o.contains("allow_distributed")) r.allow_distributed = bool_field(o, "allow_distributed");
  if (o.contains("allow_cpu_offload")) r.allow_cpu_offload = bool_field(o, "allow_cpu_offload");
  if (o.contains("expert_offload")) r.expert_offload = bool_field(o, "expert_offload");
  if (o.contains("max_rpc_servers"))
    r.max_rpc_servers = static_cast<std::uint32_t>(uint_field(o, "max_rpc_servers", 256));
  if (o.contains("threads")) r.threads = static_cast<std::uint32_t>(uint_field(o, "threads", 1024));
  if (o.contains("tie_tolerance")) {
    r.tie_tolerance = number_field(o, "tie_tolerance");
    if (!(r.tie_tolerance >= 0 && r.tie_tolerance < 1))
      throw std::invalid_argument("tie_tolerance must be in [0, 1)");
  }
  if (o.contains("selector")) {
    if (!o["selector"].is_object())
      throw std::invalid_argument("selector must be an object of strings");
    for (const auto& [k, v] : o["selector"].items()) {
      if (!v.is_string()) throw std::invalid_argument("selector." + k + " must be a string");
      r.selector[k] = v.get<std::string>();
    }
  }
  if (o.contains("gpus")) {
    if (!o["gpus"].is_array())
      throw std::invalid_argument("gpus must be an array of \"worker:index\"");
    for (const json& g : o["gpus"]) {
      const std::optional<cluster::GpuAddress> a =
          cluster::parse_gpu_address(g.is_string() ? g.get<std::string>() : "");
      if (!a) throw std::invalid_argument("gpus: '" + g.dump() + "' is not \"worker:index\"");
      r.gpus.push_back({a->worker, a->gpu});
    }
  }
  if (o.contains("main")) {
    r.main_worker = string_field(o, "main");
    if (r.main_worker.empty()) throw std::invalid_argument("main must name a worker");
  }
  if (o.contains("ngl")) {
    if (!o["ngl"].is_number_integer() || o["ngl"].get<std::int64_t>() < -1 ||
        o["ngl"].get<std::int64_t>() > 100000) {
      throw std::invalid_argument("ngl must be -1 (all) or a layer count");
    }
    r.gpu_layers = static_cast<std::int32_t>(o["ngl"].get<std::int64_t>());
  }
  if (o.contains("tensor_split")) {
    if (!o["tensor_split"].is_array())
      throw std::invalid_argument("tensor_split must be an array of numbers");
    for (const json& v : o["tensor_split"]) {
      if (!v.is_number() || v.get<double>() < 0)
        throw std::invalid_argument("tensor_split values must be >= 0");
      r.tensor_split.push_back(v.get<double>());
    }
  }
  if (o.contains("extra_args")) {
    if (!o["extra_args"].is_array())
      throw std::invalid_argument("extra_args must be an array of strings");
    for (const json& v : o["extra_args"]) {
      if (!v.is_string()) throw std::invalid_argument("extra_args must be an array of strings");
      r.extra_args.push_back(v.get<std::string>());
    }
  }
  return r;
}

void check_extra_args(const std::vector<std::string>& args, bool admin) {
  // Flags a user may set: name -> whether a value follows.
  static const std::map<std::string, bool> kUserFlags = {
      {"--temp", true},
      {"--top-k", true},
      {"--top-p", true},
      {"--min-p", true},
      {"--typical", true},
      {"--top-nsigma", true},
      {"--repeat-penalty", true},
      {"--repeat-last-n", true},
      {"--presence-penalty", true},
      {"--frequency-penalty", true},
      {"--dry-multiplier", true},
      {"--dry-base", true},
      {"--dry-allowed-length", true},
      {"--dry-penalty-last-n", true},
      {"--xtc-probability", true},
      {"--xtc-threshold", true},
      {"--mirostat", true},
      {"--mirostat-lr", true},
      {"--mirostat-ent", true},
      {"--samplers", true},
      {"-s", true},
      {"--seed", true},
      {"-n", true},
      {"--n-predict", true},
      {"--keep", true},
      {"--jinja", false},
      {"--no-jinja", false},
      {"--reasoning-format", true},
      {"--reasoning-budget", true},
      {"--cache-reuse", true},
      {"--cont-batching", false},
      {"--no-cont-batching", false},
      {"--context-shift", false},
      {"--no-context-shift", false},
      {"--special", false},
      {"--no-warmup", false},
  };
  // Flags nobody sets through a deployment.
  static const std::set<std::string> kDenied = {"-m",
                                                "--model",
                                                "-mu",
                                                "--model-url",
                                                "-hf",
                                                "-hfr",
                                                "--hf-repo",
                                                "-hff",
                                                "--hf-file",
                                                "-hfv",
                                                "--hf-repo-v",
                                                "-hffv",
                                                "--hf-file-v",
                                                "-hft",
                                                "--hf-token",
                                                "--docker-repo",
                                                "-dr",
                                                "--host",
                                                "--port",
                                                "--path",
                                                "--api-prefix",
                                                "--api-key",
                                                "--api-key-file",
                                                "--ssl-key-file",
                                                "--ssl-cert-file",
                                                "--log-file",
                                                "--slot-save-path",
                                                "--media-path",
                                                "--rpc",
                                                "-ngl",
                                                "--gpu-layers",
                                                "--n-gpu-layers",
                                                "-ts",
                                                "--tensor-split",
                                                "-sm",
                                                "--split-mode",
                                                "-mg",
                                                "--main-gpu",
                                                "-dev",
                                                "--device",
                                                "-c",
                                                "--ctx-size",
                                                "-np",
                                                "--parallel",
                                                "-fa",
                                                "--flash-attn",
                                                "-ctk",
                                                "--cache-type-k",
                                                "-ctv",
                                                "--cache-type-v",
                                                "-b",
                                                "--batch-size",
                                                "-ub",
                                                "--ubatch-size",
                                                "-t",
                                                "--threads",
                                                "--metrics",
                                                "-lm",
                                                "--load-mode",
                                                "-nkvo",
                                                "--no-kv-offload",
                                                "--swa-full",
                                                "-kvu",
                                                "--kv-unified",
                                                "--lora",
                                                "--lora-scaled",
                                                "--control-vector",
                                                "--control-vector-scaled",
                                                "--mmproj",
                                                "--mmproj-url",
                                                "--chat-template-file",
                                                "--props",
                                                "-ot",
                                                "--override-tensor",
                                                "-cmoe",
                                                "--cpu-moe",
                                                "-ncmoe",
                                                "--n-cpu-moe",
                                                "--models-dir",
                                                "--models-preset",
                                                "--webui",
                                                "--no-webui",
                                                "-a",
                                                "--alias"};
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const std::string flag = a.substr(0, a.find('='));
    if (admin) {
      if (kDenied.count(flag))
        throw std::invalid_argument("extra_args: " + flag +
                                    " is set by ggfleet (placement, listening address, keys, "
                                    "files) and may not be given");
      continue;
    }
    const auto it = kUserFlags.find(flag);
    if (it == kUserFlags.end())
      throw std::invalid_argument("extra_args: '" + a.substr(0, 64) +
                                  "' is not among the flags a user key may set (sampling and "
                                  "serving options); other llama-server arguments need an admin");
    if (!it->second) {
      if (flag != a) throw std::invalid_argument("extra_args: " + flag + " takes no value");
      continue;
    }
    if (flag != a) continue;  // --flag=value
    if (i + 1 >= args.size() || args[i + 1].rfind("--", 0) == 0)
      throw std::invalid_argument("extra_args: " + flag + " needs a value");
    ++i;
  }
}

void add_download(Request& r, const std::vector<model::ModelFile>& files) {
  for (const model::ModelFile& f : files) {
    r.model_files.push_back(f.sha256.empty() ? f.url : f.sha256);
    r.model_bytes += f.size_bytes;
  }
}

}  // namespace ggfleet::plan
