#include "cluster/cluster.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "cluster/catalog.h"
#include "cluster/units.h"

namespace ggfleet::cluster {
namespace {

class Parser {
 public:
  // `plain_numbers`: a bare number is in base units (bytes, bytes/s, seconds, operations/s), as
  // in the JSON a worker reports; in a cluster file those need their unit.
  explicit Parser(std::string file, bool plain_numbers = false)
      : file_(std::move(file)), plain_numbers_(plain_numbers) {}

  [[noreturn]] void fail(const YAML::Node& at, const std::string& what) const {
    const YAML::Mark m = at.Mark();
    std::ostringstream o;
    o << file_;
    if (m.line >= 0) o << ":" << m.line + 1;
    o << ": " << what;
    throw ClusterError(o.str());
  }

  void only_keys(const YAML::Node& map, const std::set<std::string>& allowed,
                 const std::string& where) const {
    if (!map.IsMap()) fail(map, where + " must be a mapping");
    for (const auto& kv : map) {
      const std::string key = kv.first.as<std::string>();
      if (!allowed.count(key)) {
        std::string list;
        for (const std::string& a : allowed) list += (list.empty() ? "" : ", ") + a;
        fail(kv.first, "unknown key '" + key + "' in " + where + " (expected " + list + ")");
      }
    }
  }

  std::string text(const YAML::Node& n, const std::string& what) const {
    if (!n.IsScalar()) fail(n, what + " must be a value");
    return n.as<std::string>();
  }

  std::uint64_t bytes(const YAML::Node& n, const std::string& what) const {
    try {
      return parse_bytes(text(n, what));
    } catch (const UnitError& e) {
      fail(n, what + ": " + e.what());
    }
  }
  // A bare number, when plain_numbers_ allows one (nullopt otherwise).
  std::optional<double> plain(const YAML::Node& n, const std::string& what) const {
    if (!plain_numbers_) return std::nullopt;
    const std::string t = text(n, what);
    if (t.empty() || t.find_first_not_of("0123456789.eE+") != std::string::npos)
      return std::nullopt;
    try {
      return std::stod(t);
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  // A bandwidth, which is never zero (no link and no memory moves nothing).
  double bandwidth(const YAML::Node& n, const std::string& what) const {
    double v = 0;
    if (const auto p = plain(n, what)) {
      v = *p;
    } else {
      try {
        v = parse_bandwidth(text(n, what));
      } catch (const UnitError& e) {
        fail(n, what + ": " + e.what());
      }
    }
    if (!(v > 0)) fail(n, what + " must be more than zero");
    return v;
  }
  double duration(const YAML::Node& n, const std::string& what) const {
    if (const auto v = plain(n, what)) return *v;
    try {
      return parse_duration(text(n, what));
    } catch (const UnitError& e) {
      fail(n, what + ": " + e.what());
    }
  }
  double flops(const YAML::Node& n, const std::string& what) const {
    // "362TFLOPS" / "362 TFLOPS" / "733TOPS" or a plain number of operations per second.
    std::string t = text(n, what);
    double scale = 1;
    for (const auto& [suffix, s] : {std::pair<std::string, double>{"TFLOPS", 1e12},
                                    {"TOPS", 1e12},
                                    {"GFLOPS", 1e9},
                                    {"GOPS", 1e9},
                                    {"PFLOPS", 1e15}}) {
      if (t.size() > suffix.size() &&
          t.compare(t.size() - suffix.size(), suffix.size(), suffix) == 0) {
        t.resize(t.size() - suffix.size());
        scale = s;
        break;
      }
    }
    try {
      std::size_t used = 0;
      const double v = std::stod(t, &used);
      if (used != t.find_last_not_of(' ') + 1 || v < 0) throw std::invalid_argument("bad");
      return v * scale;
    } catch (const std::exception&) {
      fail(n, what + ": '" + text(n, what) + "' is not a rate (e.g. 362TFLOPS)");
    }
  }

  Gpu gpu(const YAML::Node& n, const std::string& where) const {
    only_keys(n, {"name", "vram", "used", "memory_bandwidth", "fp16", "int8", "runtime"}, where);
    if (!n["name"]) fail(n, where + " needs a name");
    const std::string name = text(n["name"], where + ".name");
    const std::optional<Gpu> spec = catalog_gpu(name);
    Gpu g = spec.value_or(Gpu{});
    g.name = name;  // as reported, not the catalog's spelling
    if (n["vram"]) g.vram_bytes = bytes(n["vram"], where + ".vram");
    if (n["used"]) g.used_bytes = bytes(n["used"], where + ".used");
    if (n["runtime"]) g.runtime_bytes = bytes(n["runtime"], where + ".runtime");
    if (n["memory_bandwidth"])
      g.memory_bandwidth_bytes_per_s =
          bandwidth(n["memory_bandwidth"], where + ".memory_bandwidth");
    if (n["fp16"]) g.fp16_flops = flops(n["fp16"], where + ".fp16");
    if (n["fp16"] && !(g.fp16_flops > 0)) fail(n["fp16"], where + ".fp16 must be more than zero");
    if (n["int8"]) g.int8_ops = flops(n["int8"], where + ".int8");
    if (!spec && (!n["vram"] || !n["memory_bandwidth"] || !n["fp16"])) {
      fail(n, "GPU '" + g.name +
                  "' is not in the catalog: give vram, memory_bandwidth and fp16 for it");
    }
    if (g.int8_ops == 0) g.int8_ops = 2 * g.fp16_flops;
    if (g.used_bytes > g.vram_bytes) fail(n, where + ": used exceeds vram");
    return g;
  }

  Worker worker(const YAML::Node& n, const std::string& where) const {
    only_keys(n, {"name", "cpu", "ram", "reserved", "labels", "gpus", "address", "llama_build"},
              where);
    Worker w;
    if (!n["name"]) fail(n, where + " needs a name");
    w.name = text(n["name"], where + ".name");
    w.address = n["address"] ? text(n["address"], where + ".address") : w.name;
    if (w.name.empty()) fail(n, where + ".name is empty");
    if (n["llama_build"]) w.llama_build = text(n["llama_build"], where + ".llama_build");
    if (const YAML::Node cpu = n["cpu"]) {
      only_keys(cpu, {"cores", "memory_bandwidth"}, where + ".cpu");
      if (cpu["cores"]) {
        const long long c = cpu["cores"].as<long long>(-1);
        if (c <= 0 || c > 65536)
          fail(cpu["cores"], where + ".cpu.cores must be an integer from 1 to 65536");
        w.cpu.cores = static_cast<std::uint32_t>(c);
      }
      if (cpu["memory_bandwidth"])
        w.cpu.memory_bandwidth_bytes_per_s =
            bandwidth(cpu["memory_bandwidth"], where + ".cpu.memory_bandwidth");
    }
    if (w.cpu.cores == 0) w.cpu.cores = 8;
    if (w.cpu.memory_bandwidth_bytes_per_s == 0) {
      w.cpu.memory_bandwidth_bytes_per_s =
          std::min(200e9, w.cpu.cores * kDefaultCpuBandwidthPerCore);
    }
    if (const YAML::Node ram = n["ram"]) {
      only_keys(ram, {"total", "used"}, where + ".ram");
      if (ram["total"]) w.ram_bytes = bytes(ram["total"], where + ".ram.total");
      if (ram["used"]) w.ram_used_bytes = bytes(ram["used"], where + ".ram.used");
    }
    if (const YAML::Node r = n["reserved"]) {
      only_keys(r, {"ram", "vram"}, where + ".reserved");
      if (r["ram"]) w.reserved_ram_bytes = bytes(r["ram"], where + ".reserved.ram");
      if (r["vram"]) w.reserved_vram_bytes = bytes(r["vram"], where + ".reserved.vram");
    }
    if (const YAML::Node labels = n["labels"]) {
      if (!labels.IsMap()) fail(labels, where + ".labels must be a mapping");
      for (const auto& kv : labels)
        w.labels[kv.first.as<std::string>()] = text(kv.second, where + ".labels");
    }
    if (const YAML::Node gpus = n["gpus"]) {
      if (!gpus.IsSequence()) fail(gpus, where + ".gpus must be a list");
      for (std::size_t i = 0; i < gpus.size(); ++i)
        w.gpus.push_back(gpu(gpus[i], where + ".gpus[" + std::to_string(i) + "]"));
    }
    return w;
  }

  Link link(const YAML::Node& n, const std::string& where, const Link& base) const {
    Link l = base;
    if (n["bandwidth"]) l.bandwidth_bytes_per_s = bandwidth(n["bandwidth"], where + ".bandwidth");
    if (n["latency"]) l.latency_s = duration(n["latency"], where + ".latency");
    return l;
  }

  void claim(const YAML::Node& n, std::size_t index, Cluster& c) const {
    const std::string where = "claims[" + std::to_string(index) + "]";
    only_keys(n, {"instance", "worker", "gpu", "vram", "ram", "rpc"}, where);
    if (!n["instance"] || !n["worker"]) fail(n, where + " needs instance and worker");
    const std::string instance = text(n["instance"], where + ".instance");
    const std::string name = text(n["worker"], where + ".worker");
    Worker* w = nullptr;
    for (Worker& x : c.workers) w = x.name == name ? &x : w;
    if (w == nullptr) fail(n["worker"], where + " names unknown worker '" + name + "'");
    if (n["ram"]) w->claimed_ram_bytes += bytes(n["ram"], where + ".ram");
    if (n["gpu"]) {
      const long long g = n["gpu"].as<long long>(-1);
      if (g < 0 || static_cast<std::size_t>(g) >= w->gpus.size())
        fail(n["gpu"],
             where + ".gpu: " + name + " has " + std::to_string(w->gpus.size()) + " GPU(s)");
      Gpu& gpu = w->gpus[static_cast<std::size_t>(g)];
      if (n["vram"]) gpu.claimed_bytes += bytes(n["vram"], where + ".vram");
      if (n["rpc"] && n["rpc"].as<bool>(false)) {
        if (!gpu.lent_to.empty() && gpu.lent_to != instance)
          fail(n, where + ": " + name + " GPU " + std::to_string(g) + " is already lent to " +
                      gpu.lent_to);
        gpu.lent_to = instance;
      }
    } else if (n["vram"] || n["rpc"]) {
      fail(n, where + ": vram and rpc claims need a gpu");
    }
  }

  Cluster cluster(const YAML::Node& root) const {
    if (!root.IsMap())
      fail(root, "a cluster file is a mapping with 'workers' (and optionally 'network')");
    only_keys(root, {"workers", "network", "claims"}, "the cluster file");
    Cluster c;
    const YAML::Node workers = root["workers"];
    if (!workers || !workers.IsSequence() || workers.size() == 0)
      fail(root, "'workers' must be a non-empty list");
    std::set<std::string> names;
    for (std::size_t i = 0; i < workers.size(); ++i) {
      Worker w = worker(workers[i], "workers[" + std::to_string(i) + "]");
      if (!names.insert(w.name).second) fail(workers[i], "worker '" + w.name + "' is listed twice");
      c.workers.push_back(std::move(w));
    }
    if (const YAML::Node net = root["network"]) {
      only_keys(net, {"default", "links"}, "network");
      if (net["default"]) {
        only_keys(net["default"], {"bandwidth", "latency"}, "network.default");
        c.default_link = link(net["default"], "network.default", c.default_link);
      }
      if (const YAML::Node links = net["links"]) {
        if (!links.IsSequence()) fail(links, "network.links must be a list");
        for (std::size_t i = 0; i < links.size(); ++i) {
          const std::string where = "network.links[" + std::to_string(i) + "]";
          only_keys(links[i], {"between", "bandwidth", "latency"}, where);
          const YAML::Node between = links[i]["between"];
          if (!between || !between.IsSequence() || between.size() != 2)
            fail(links[i], where + ".between must name two workers");
          std::string a = text(between[0], where + ".between");
          std::string b = text(between[1], where + ".between");
          for (const std::string& w : {a, b}) {
            if (!names.count(w)) fail(between, where + " names unknown worker '" + w + "'");
          }
          if (b < a) std::swap(a, b);
          c.links[{a, b}] = link(links[i], where, c.default_link);
        }
      }
    }
    if (const YAML::Node claims = root["claims"]) {
      if (!claims.IsSequence()) fail(claims, "claims must be a list");
      for (std::size_t i = 0; i < claims.size(); ++i) claim(claims[i], i, c);
    }
    return c;
  }

 private:
  std::string file_;
  bool plain_numbers_ = false;
};

// JSON as a YAML node, for the one parser: numbers become their decimal text.
YAML::Node to_yaml(const nlohmann::json& j) {
  if (j.is_object()) {
    YAML::Node n(YAML::NodeType::Map);
    for (const auto& [k, v] : j.items()) n[k] = to_yaml(v);
    return n;
  }
  if (j.is_array()) {
    YAML::Node n(YAML::NodeType::Sequence);
    for (const nlohmann::json& v : j) n.push_back(to_yaml(v));
    return n;
  }
  if (j.is_string()) return YAML::Node(j.get<std::string>());
  if (j.is_number_unsigned()) return YAML::Node(std::to_string(j.get<std::uint64_t>()));
  if (j.is_number_integer()) return YAML::Node(std::to_string(j.get<std::int64_t>()));
  if (j.is_number_float()) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", j.get<double>());
    return YAML::Node(std::string(buf));
  }
  if (j.is_boolean()) return YAML::Node(j.get<bool>() ? "true" : "false");
  return YAML::Node(YAML::NodeType::Null);
}

}  // namespace

Worker worker_from_json(const std::string& name, const std::string& address,
                        const nlohmann::json& labels, const nlohmann::json& resources) {
  if (!resources.is_object())
    throw ClusterError("worker " + name + ": resources must be an object");
  nlohmann::json w = resources;
  // GPUs a worker simulates on its CPU have no CUDA runtime of their own to make room for.
  const bool simulated = w.value("simulated", false);
  w.erase("simulated");
  if (w.contains("llama")) {  // {"build": "..."}: what its llama-server --version says
    const nlohmann::json llama = w["llama"];
    w.erase("llama");
    if (!llama.is_object()) throw ClusterError("worker " + name + ": llama must be an object");
    if (llama.contains("build")) w["llama_build"] = llama["build"];
  }
  std::set<std::string> cached;  // {"files": [{sha256, url, ...}]}: what its cache holds
  double download_rate = 0;
  if (w.contains("models")) {
    const nlohmann::json models = w["models"];
    w.erase("models");
    const nlohmann::json files =
        models.is_object() ? models.value("files", nlohmann::json::array()) : nlohmann::json();
    if (!files.is_array()) throw ClusterError("worker " + name + ": models.files must be a list");
    const nlohmann::json rate = models.is_object()
                                    ? models.value("download_bytes_per_s", nlohmann::json(0))
                                    : nlohmann::json(0);
    if (!rate.is_number() || rate.get<double>() < 0)
      throw ClusterError("worker " + name + ": models.download_bytes_per_s must be a number >= 0");
    download_rate = rate.get<double>();
    for (const nlohmann::json& f : files) {
      if (!f.is_object()) throw ClusterError("worker " + name + ": models.files: not an object");
      for (const char* k : {"sha256", "url"}) {
        if (f.contains(k) && f[k].is_string() && !f[k].get<std::string>().empty())
          cached.insert(f[k].get<std::string>());
      }
    }
  }
  // A GPU's used memory as measured may pass the catalog's total by a little: clamp.
  if (w.contains("gpus") && w["gpus"].is_array()) {
    for (nlohmann::json& g : w["gpus"]) {
      if (g.is_object() && g.contains("used") && g.contains("vram") && g["used"].is_number() &&
          g["vram"].is_number() && g["used"].get<double>() > g["vram"].get<double>())
        g["used"] = g["vram"];
    }
  }
  w["name"] = name;
  if (!address.empty()) w["address"] = address;
  if (labels.is_object() && !labels.empty()) w["labels"] = labels;
  Worker out = Parser("worker " + name, true).worker(to_yaml(w), "resources");
  if (simulated) {
    for (Gpu& g : out.gpus) g.runtime_bytes = 0;
  }
  out.cached_files = std::move(cached);
  out.download_bytes_per_s = download_rate;
  return out;
}

bool rpc_compatible(const Worker& a, const Worker& b) {
  return a.llama_build.empty() || b.llama_build.empty() || a.llama_build == b.llama_build;
}

std::uint64_t Worker::free_vram_bytes(std::size_t gpu) const {
  const Gpu& g = gpus.at(gpu);
  const std::uint64_t taken = g.used_bytes + reserved_vram_bytes + g.claimed_bytes;
  return g.vram_bytes > taken ? g.vram_bytes - taken : 0;
}

std::uint64_t Worker::free_ram_bytes() const {
  const std::uint64_t taken = ram_used_bytes + reserved_ram_bytes + claimed_ram_bytes;
  return ram_bytes > taken ? ram_bytes - taken : 0;
}

std::optional<GpuAddress> parse_gpu_address(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size() ||
      text.size() - colon > 6 ||
      text.find_first_not_of("0123456789", colon + 1) != std::string::npos)
    return std::nullopt;
  return GpuAddress{text.substr(0, colon),
                    static_cast<std::uint32_t>(std::stoul(text.substr(colon + 1)))};
}

const Worker* Cluster::find(const std::string& name) const {
  for (const Worker& w : workers) {
    if (w.name == name) return &w;
  }
  return nullptr;
}

Link Cluster::link(const std::string& a, const std::string& b) const {
  const auto it = links.find(a < b ? std::make_pair(a, b) : std::make_pair(b, a));
  return it == links.end() ? default_link : it->second;
}

std::optional<Gpu> catalog_gpu(std::string_view reported_name) {
  const std::optional<GpuSpec> spec = find_gpu(reported_name);
  if (!spec) return std::nullopt;
  Gpu g;
  g.name = spec->name;
  g.vram_bytes = spec->vram_bytes;
  g.memory_bandwidth_bytes_per_s = spec->memory_bandwidth_bytes_per_s;
  g.fp16_flops = spec->fp16_flops;
  g.int8_ops = spec->int8_ops;
  return g;
}

Cluster parse_cluster(const std::string& yaml_text, const std::string& name) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ClusterError(name + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  try {
    return Parser(name).cluster(root);
  } catch (const YAML::Exception& e) {
    throw ClusterError(name + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
}

Cluster load_cluster(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ClusterError(path + ": cannot open");
  std::stringstream s;
  s << in.rdbuf();
  return parse_cluster(s.str(), path);
}

}  // namespace ggfleet::cluster
