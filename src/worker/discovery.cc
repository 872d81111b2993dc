#include "worker/discovery.h"

#include <dlfcn.h>

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

}  // namespace

std::vector<GpuInfo> nvml_gpus(std::string* why) {
  std::vector<GpuInfo> out;
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    if (why) *why = "no NVIDIA driver (libnvidia-ml.so.1 not found)";
    return out;
  }
  auto sym = [&](const char* name) { return dlsym(lib, name); };
  auto init = reinterpret_cast<nvmlReturn_t (*)()>(sym("nvmlInit_v2"));
  auto shutdown = reinterpret_cast<nvmlReturn_t (*)()>(sym("nvmlShutdown"));
  auto count = reinterpret_cast<nvmlReturn_t (*)(unsigned int*)>(sym("nvmlDeviceGetCount_v2"));
  auto handle = reinterpret_cast<nvmlReturn_t (*)(unsigned int, nvmlDevice_t*)>(
      sym("nvmlDeviceGetHandleByIndex_v2"));
  auto name = reinterpret_cast<nvmlReturn_t (*)(nvmlDevice_t, char*, unsigned int)>(
      sym("nvmlDeviceGetName"));
  auto uuid = reinterpret_cast<nvmlReturn_t (*)(nvmlDevice_t, char*, unsigned int)>(
      sym("nvmlDeviceGetUUID"));
  auto memory =
      reinterpret_cast<nvmlReturn_t (*)(nvmlDevice_t, NvmlMemory*)>(sym("nvmlDeviceGetMemoryInfo"));
  auto util = reinterpret_cast<nvmlReturn_t (*)(nvmlDevice_t, NvmlUtilization*)>(
      sym("nvmlDeviceGetUtilizationRates"));
  unsigned int n = 0;
  if (!init || !count || !handle || !name || !memory || init() != 0 || count(&n) != 0) {
    if (why) *why = "NVML did not initialise";
    dlclose(lib);
    return out;
  }
  for (unsigned int i = 0; i < n; ++i) {
    nvmlDevice_t dev = nullptr;
    if (handle(i, &dev) != 0) continue;
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
  if (shutdown) shutdown();
  dlclose(lib);
  return out;
}

std::uint64_t process_resident_bytes(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  return text.empty() ? 0 : meminfo(text, "RssAnon") + meminfo(text, "RssShmem");
}

std::map<std::pair<std::uint32_t, int>, std::uint64_t> nvml_process_bytes() {
  std::map<std::pair<std::uint32_t, int>, std::uint64_t> out;
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) return out;
  auto sym = [&](const char* name) { return dlsym(lib, name); };
  auto init = reinterpret_cast<nvmlReturn_t (*)()>(sym("nvmlInit_v2"));
  auto shutdown = reinterpret_cast<nvmlReturn_t (*)()>(sym("nvmlShutdown"));
  auto count = reinterpret_cast<nvmlReturn_t (*)(unsigned int*)>(sym("nvmlDeviceGetCount_v2"));
  auto handle = reinterpret_cast<nvmlReturn_t (*)(unsigned int, nvmlDevice_t*)>(
      sym("nvmlDeviceGetHandleByIndex_v2"));
  using List = nvmlReturn_t (*)(nvmlDevice_t, unsigned int*, void*);
  auto v3 = reinterpret_cast<List>(sym("nvmlDeviceGetComputeRunningProcesses_v3"));
  auto v1 = reinterpret_cast<List>(sym("nvmlDeviceGetComputeRunningProcesses"));
  unsigned int n = 0;
  if (init && count && handle && (v3 || v1) && init() == 0 && count(&n) == 0) {
    for (unsigned int g = 0; g < n; ++g) {
      nvmlDevice_t dev = nullptr;
      if (handle(g, &dev) != 0) continue;
      unsigned int len = 64;
      if (v3) {
        std::vector<NvmlProcess> list(len);
        if (v3(dev, &len, list.data()) != 0) continue;
        for (unsigned int k = 0; k < len && k < list.size(); ++k) {
          if (list[k].used_bytes != ~0ull)
            out[{g, static_cast<int>(list[k].pid)}] += list[k].used_bytes;
        }
      } else {
        std::vector<NvmlProcessV1> list(len);
        if (v1(dev, &len, list.data()) != 0) continue;
        for (unsigned int k = 0; k < len && k < list.size(); ++k) {
          if (list[k].used_bytes != ~0ull)
            out[{g, static_cast<int>(list[k].pid)}] += list[k].used_bytes;
        }
      }
    }
  }
  if (shutdown && init) shutdown();
  dlclose(lib);
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

HostInfo host_info() {
  HostInfo h;
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
