#include "worker/discovery.h"

#include <dlfcn.h>
#include <sched.h>

#include <algorithm>

#include <fstream>
#include <iterator>
#include <stdexcept>
#include <thread>
#include <vector>

#include "cluster/catalog.h"
#include "cluster/units.h"

namespace ggfleet::worker {
namespace {

// The few NVML entry points we use, with their C types (nvml.h is not needed to build).
using nvmlReturn_t = int;
using nvmlDevice_t = void*;
struct NvmlMemory {
  unsigned long long total, free, used;
};
struct NvmlUtilization {
  unsigned int gpu, memory;
};

// nvmlProcessInfo_t of nvmlDeviceGetComputeRunningProcesses_v3 (and _v2), and of the first
// version (no instance ids).
struct NvmlProcess {
  unsigned int pid;
  unsigned long long used_bytes;
  unsigned int gpu_instance, compute_instance;
};
struct NvmlProcessV1 {
  unsigned int pid;
  unsigned long long used_bytes;
};

std::uint64_t meminfo(const std::string& text, const std::string& key) {
  const auto pos = text.find(key + ":");
  return pos == std::string::npos ? 0 : std::stoull(text.substr(pos + key.size() + 1)) * 1024;
}

// libnvidia-ml.so.1 opened and initialised, with the entry points every use needs; closed (and
// NVML shut down) on destruction. ok() is false without a driver or when NVML does not start.
class Nvml {
 public:
  Nvml() : lib_(dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL)) {
    if (lib_ == nullptr) return;
    auto init = reinterpret_cast<nvmlReturn_t (*)()>(sym("nvmlInit_v2"));
    shutdown_ = reinterpret_cast<nvmlReturn_t (*)()>(sym("nvmlShutdown"));
    auto count = reinterpret_cast<nvmlReturn_t (*)(unsigned int*)>(sym("nvmlDeviceGetCount_v2"));
    handle_ = reinterpret_cast<nvmlReturn_t (*)(unsigned int, nvmlDevice_t*)>(
        sym("nvmlDeviceGetHandleByIndex_v2"));
    started_ = init && count && handle_ && init() == 0;
    ok_ = started_ && count(&count_) == 0;
  }
  ~Nvml() {
    if (started_ && shutdown_) shutdown_();
    if (lib_) dlclose(lib_);
  }
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;
  bool loaded() const { return lib_ != nullptr; }
  bool ok() const { return ok_; }
  unsigned int count() const { return count_; }
  void* sym(const char* name) const { return lib_ ? dlsym(lib_, name) : nullptr; }
  // The device of index `i`, nullptr when NVML refuses.
  nvmlDevice_t device(unsigned int i) const {
    nvmlDevice_t dev = nullptr;
    return handle_(i, &dev) == 0 ? dev : nullptr;
  }

 private:
  void* lib_;
  nvmlReturn_t (*shutdown_)() = nullptr;
  nvmlReturn_t (*handle_)(unsigned int, nvmlDevice_t*) = nullptr;
  bool started_ = false, ok_ = false;
  unsigned int count_ = 0;
};

}  // namespace

std::vector<GpuInfo> nvml_gpus(std::string* why) {
  std::vector<GpuInfo> out;
  const Nvml nvml;
  if (!nvml.loaded()) {
    if (why) *why = "no NVIDIA driver (libnvidia-ml.so.1 not found)";
    return out;
  }
  auto name = reinterpret_cast<nvmlReturn_t (*)(nvmlDevice_t, char*, unsigned int)>(
      nvml.sym("nvmlDeviceGetName"));
  auto uuid = reinterpret_cast<nvmlReturn_t (*)(nvmlDevice_t, char*, unsigned int)>(
      nvml.sym("nvmlDeviceGetUUID"));
  auto memory = reinterpret_cast<nvmlReturn_t (*)(nvmlDevice_t, NvmlMemory*)>(
      nvml.sym("nvmlDeviceGetMemoryInfo"));
  auto util = reinterpret_cast<nvmlReturn_t (*)(nvmlDevice_t, NvmlUtilization*)>(
      nvml.sym("nvmlDeviceGetUtilizationRates"));
  if (!nvml.ok() || !name || !memory) {
    if (why) *why = "NVML did not initialise";
    return out;
  }
  for (unsigned int i = 0; i < nvml.count(); ++i) {
    const nvmlDevice_t dev = nvml.device(i);
    if (dev == nullptr) continue;
    GpuInfo g;
    char buf[96] = {};
    if (name(dev, buf, sizeof buf) == 0) g.name = buf;
    if (uuid && uuid(dev, buf, sizeof buf) == 0) g.uuid = buf;
    NvmlMemory mem{};
    if (memory(dev, &mem) == 0) {
      g.vram_bytes = mem.total;
      g.used_bytes = mem.used;
    }
    NvmlUtilization u{};
    if (util && util(dev, &u) == 0) g.utilisation_pct = u.gpu;
    out.push_back(g);
  }
  return out;
}

std::uint64_t process_resident_bytes(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  return text.empty()
             ? 0
             : meminfo(text, "RssAnon") + meminfo(text, "RssFile") + meminfo(text, "RssShmem");
}

std::map<std::pair<std::uint32_t, int>, std::uint64_t> nvml_process_bytes() {
  std::map<std::pair<std::uint32_t, int>, std::uint64_t> out;
  const Nvml nvml;
  using List = nvmlReturn_t (*)(nvmlDevice_t, unsigned int*, void*);
  auto v3 = reinterpret_cast<List>(nvml.sym("nvmlDeviceGetComputeRunningProcesses_v3"));
  auto v1 = reinterpret_cast<List>(nvml.sym("nvmlDeviceGetComputeRunningProcesses"));
  if (!nvml.ok() || (!v3 && !v1)) return out;
  // Both layouts start with the pid and the bytes; only their size differs.
  auto add = [&](unsigned int gpu, unsigned int pid, unsigned long long bytes) {
    if (bytes != ~0ull) out[{gpu, static_cast<int>(pid)}] += bytes;
  };
  for (unsigned int g = 0; g < nvml.count(); ++g) {
    const nvmlDevice_t dev = nvml.device(g);
    if (dev == nullptr) continue;
    unsigned int len = 64;
    if (v3) {
      std::vector<NvmlProcess> list(len);
      if (v3(dev, &len, list.data()) != 0) continue;
      for (unsigned int k = 0; k < len && k < list.size(); ++k)
        add(g, list[k].pid, list[k].used_bytes);
    } else {
      std::vector<NvmlProcessV1> list(len);
      if (v1(dev, &len, list.data()) != 0) continue;
      for (unsigned int k = 0; k < len && k < list.size(); ++k)
        add(g, list[k].pid, list[k].used_bytes);
    }
  }
  return out;
}

GpuInfo parse_declared_gpu(const std::string& text) {
  GpuInfo g;
  const auto colon = text.rfind(':');
  g.name = colon == std::string::npos ? text : text.substr(0, colon);
  if (g.name.empty()) throw std::invalid_argument("declared GPU '" + text + "' has no name");
  if (colon != std::string::npos) {
    g.vram_bytes = cluster::parse_bytes(text.substr(colon + 1));
  } else if (const auto spec = cluster::find_gpu(g.name)) {
    g.vram_bytes = spec->vram_bytes;
  } else {
    throw std::invalid_argument("declared GPU '" + g.name +
                                "' is not in the catalog: give its size, NAME:48GiB");
  }
  if (!cluster::find_gpu(g.name)) {
    throw std::invalid_argument("declared GPU '" + g.name +
                                "' is not in the catalog (its speed would be unknown)");
  }
  g.uuid = "simulated";
  return g;
}

GpuInfo offered_gpu(const GpuInfo& gpu, std::uint64_t own_bytes, std::uint64_t limit_bytes) {
  GpuInfo g = gpu;
  const std::uint64_t free_bytes = g.vram_bytes > g.used_bytes ? g.vram_bytes - g.used_bytes : 0;
  if (limit_bytes > 0) g.vram_bytes = std::min(g.vram_bytes, limit_bytes);
  // What this worker could still hold of its offer: the free memory plus its own, at most it.
  const std::uint64_t reachable = free_bytes + own_bytes;
  g.used_bytes = g.vram_bytes > reachable ? g.vram_bytes - reachable : 0;
  return g;
}

HostInfo host_info() {
  HostInfo h;
  cpu_set_t set;
  CPU_ZERO(&set);
  // taskset / cgroup cpusets: count the cores llama.cpp may really use.
  if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
    h.cores = static_cast<std::uint32_t>(CPU_COUNT(&set));
  else
    h.cores = std::max(1u, std::thread::hardware_concurrency());
  std::ifstream in("/proc/meminfo");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  h.ram_total_bytes = meminfo(text, "MemTotal");
  const std::uint64_t available = meminfo(text, "MemAvailable");
  h.ram_used_bytes = h.ram_total_bytes > available ? h.ram_total_bytes - available : 0;
  return h;
}

nlohmann::json resources_json(const HostInfo& host, const std::vector<GpuInfo>& gpus,
                              bool simulated, double cpu_bandwidth_bytes_per_s) {
  nlohmann::json cpu = {{"cores", host.cores}};
  if (cpu_bandwidth_bytes_per_s > 0) cpu["memory_bandwidth"] = cpu_bandwidth_bytes_per_s;
  nlohmann::json list = nlohmann::json::array();
  for (const GpuInfo& g : gpus)
    list.push_back({{"name", g.name}, {"vram", g.vram_bytes}, {"used", g.used_bytes}});
  return {{"cpu", cpu},
          {"ram", {{"total", host.ram_total_bytes}, {"used", host.ram_used_bytes}}},
          {"gpus", list},
          {"simulated", simulated}};
}

}  // namespace ggfleet::worker
