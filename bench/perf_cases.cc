#include "perf_cases.h"

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "cluster/cluster.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"

namespace ggfleet::perfdata {
namespace {

struct ModelSpec {
  const char* preset;
  std::optional<gguf::GgmlType> type;
  std::optional<std::uint32_t> blocks;
};

// The models of bench/run_perf_matrix, by the tag its configurations use.
const std::map<std::string, ModelSpec>& model_specs() {
  static const std::map<std::string, ModelSpec> specs = {
      {"m8", {"llama3-8b-q4_0", std::nullopt, std::nullopt}},
      {"m8k", {"llama3-8b-q4_0", gguf::GgmlType::Q4_K, std::nullopt}},
      {"m70", {"llama3-70b-q4_k_m", std::nullopt, std::nullopt}},
      {"m70q4", {"llama3-70b-q4_k_m", gguf::GgmlType::Q4_0, std::nullopt}},
      {"w70", {"llama3-70b-q4_k_m", gguf::GgmlType::Q4_0, 20u}},
      {"moe", {"qwen3-30b-a3b-q4_k_m", std::nullopt, std::nullopt}},
  };
  return specs;
}

std::vector<double> parse_split(const std::string& text) {
  std::vector<double> out;
  std::stringstream ss(text);
  std::string part;
  bool any = false;
  while (std::getline(ss, part, '/')) {
    out.push_back(std::stod(part));
    any = any || out.back() > 0;
  }
  if (!any) out.clear();
  return out;
}

void read_file(const std::string& path, const std::string& set,
               std::map<std::string, Measurement>& by_config, std::vector<std::string>& order) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(path + ":" + std::to_string(line_no) + ": " + e.what());
    }
    const std::string config = j.at("config").get<std::string>();
    auto [it, inserted] = by_config.try_emplace(config);
    Measurement& m = it->second;
    if (inserted) {
      order.push_back(config);
      m.config = config;
      m.set = set;
      const auto slash = config.find('/');
      const auto slash2 = config.find('/', slash + 1);
      m.model_tag = config.substr(
          slash + 1, slash2 == std::string::npos ? std::string::npos : slash2 - slash - 1);
      if (!model_specs().count(m.model_tag))
        throw std::runtime_error(path + ": unknown model tag in " + config);
      m.devices = j.at("devices").get<std::string>();
      m.split = parse_split(j.at("tensor_split").get<std::string>());
      m.gpu_layers = j.at("n_gpu_layers").get<std::int32_t>();
      m.threads = j.at("n_threads").get<std::uint32_t>();
      if (m.model_tag == "moe")
        m.prompt_caveat = "synthetic MoE: every token routes to the same experts";
      const auto delay = config.find("/delay");
      if (delay != std::string::npos) {
        m.via_proxy = true;
        m.added_latency_s = std::stod(config.substr(delay + 6)) * 1e-3;
      }
    }
    const auto n_prompt = j.at("n_prompt").get<std::uint32_t>();
    const auto n_gen = j.at("n_gen").get<std::uint32_t>();
    if (n_prompt > 0) {
      m.n_prompt = n_prompt;
      m.pp_tokens_per_s = j.at("avg_ts").get<double>();
    } else {
      m.n_gen = n_gen;
      m.tg_tokens_per_s = j.at("avg_ts").get<double>();
    }
  }
}

cluster::Cluster host_cluster(const Host& host, const Measurement& m) {
  cluster::Cluster c;
  auto h200 = [] { return cluster::catalog_gpu("NVIDIA H200").value(); };
  for (const char* name : {"host", "rpc"}) {
    cluster::Worker w;
    w.name = name;
    w.cpu.cores = host.cpu_cores;
    w.cpu.memory_bandwidth_bytes_per_s = host.cpu_memory_bandwidth_bytes_per_s;
    w.ram_bytes = 256ull << 30;
    w.gpus = {h200(), h200()};
    c.workers.push_back(std::move(w));
  }
  // rpc-server on the same host, over loopback (plus the relay and its delay when used).
  const double latency_s =
      host.loopback_latency_s + (m.via_proxy ? host.proxy_latency_s + m.added_latency_s : 0.0);
  c.links[{"host", "rpc"}] = cluster::Link{20e9, latency_s, 1};
  return c;
}

}  // namespace

std::vector<Measurement> load_measurements(const std::string& dir) {
  std::map<std::string, Measurement> by_config;
  std::vector<std::string> order;
  read_file(dir + "/results.jsonl", "base", by_config, order);
  read_file(dir + "/results-extra.jsonl", "extra", by_config, order);
  std::vector<Measurement> out;
  for (const std::string& c : order) out.push_back(by_config.at(c));
  return out;
}

Dataset::Dataset(std::vector<Measurement> measurements, const std::string& model_dir,
                 const Host& host)
    : host_(host) {
  for (Measurement& m : measurements) {
    if (!models_.count(m.model_tag)) {
      const ModelSpec& spec = model_specs().at(m.model_tag);
      const std::string dir = model_dir + "/" + m.model_tag;
      model::SynthOptions o;
      o.type = spec.type;
      o.blocks = spec.blocks;
      const std::string path = dir + "/" + spec.preset + ".gguf";
      if (!std::filesystem::exists(path)) model::synth(spec.preset, dir, o);
      const gguf::Model file = gguf::Model::open(path);
      models_[m.model_tag] = std::make_unique<estimate::ModelMemory>(
          estimate::ModelMemory::from(file, model::profile(file)));
    }
    Case c;
    c.m = std::move(m);
    c.model = models_.at(c.m.model_tag).get();
    c.cluster = host_cluster(host, c.m);
    estimate::Layout& l = c.layout;
    std::vector<perf::DevicePlace> places;
    if (c.m.devices != "none") {
      std::stringstream ss(c.m.devices);
      std::string dev;
      while (std::getline(ss, dev, '/')) {
        const bool remote = dev.rfind("RPC", 0) == 0;
        const auto index = static_cast<std::uint32_t>(std::stoul(dev.substr(remote ? 3 : 4)));
        l.devices.push_back({dev, estimate::Backend::kCuda, remote, 140ull << 30, 0});
        places.push_back({remote ? "rpc" : "host", index});
      }
    }
    l.tensor_split = c.m.split;
    l.gpu_layers = l.devices.empty() ? 0 : c.m.gpu_layers;
    l.context.context_tokens = c.m.n_prompt + c.m.n_gen;
    c.estimate = estimate::estimate(*c.model, l);
    for (perf::Scenario* s : {&c.generation, &c.prompt}) {
      s->main_worker = "host";
      s->places = places;
      s->threads = c.m.threads;
    }
    c.generation.depth_tokens = c.m.n_gen / 2;
    c.prompt.prompt_tokens = c.m.n_prompt;
    cases_.push_back(std::move(c));
  }
  for (Case& c : cases_) c.generation.cluster = c.prompt.cluster = &c.cluster;
}

void Dataset::set_host(const Host& host) {
  host_ = host;
  for (Case& c : cases_) c.cluster = host_cluster(host, c.m);
}

std::pair<double, double> predict_case(const Case& c, const perf::Constants& constants) {
  const double tg =
      perf::predict_rates(*c.model, c.layout, c.estimate, c.generation, constants).first;
  const double pp = perf::predict_rates(*c.model, c.layout, c.estimate, c.prompt, constants).second;
  return {tg, pp};
}

std::uint32_t fold_of(const std::string& config, std::uint32_t folds) {
  std::uint32_t h = 2166136261u;  // FNV-1a: stable across compilers and runs
  for (unsigned char ch : config) h = (h ^ ch) * 16777619u;
  return h % folds;
}

}  // namespace ggfleet::perfdata
