#include "accuracy_cases.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

namespace ggfleet::accuracy {

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

namespace {

pid_t spawn(const std::vector<std::string>& argv, const std::string& log_path) {
  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the harness, even if it is killed
    const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

void stop(pid_t pid) {
  if (pid <= 0) return;
  kill(-pid, SIGTERM);
  for (int i = 0; i < 50; ++i) {
    if (waitpid(pid, nullptr, WNOHANG) == pid) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  kill(-pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

bool port_open(int port) {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  const bool ok = connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(s);
  return ok;
}

}  // namespace

std::vector<std::string> server_args(const accuracy::Case& c, const std::string& model, int port,
                                     const std::vector<std::string>& rpc, bool cuda) {
  std::vector<std::string> a = {"-m",
                                model,
                                "-c",
                                std::to_string(c.ctx),
                                "-np",
                                std::to_string(c.parallel),
                                "-ctk",
                                c.cache,
                                "-ctv",
                                c.cache,
                                "-fa",
                                c.flash_attn ? "on" : "off",
                                "-fit",
                                "off",
                                "--no-warmup",
                                "-lv",
                                "4",
                                "-t",
                                "2",
                                "--host",
                                "127.0.0.1",
                                "--port",
                                std::to_string(port)};
  // No devices: nothing offloaded (on the GPU machine the GPU still takes op offload).
  a.push_back("-ngl");
  a.push_back(c.devices == 0 ? "0" : c.gpu_layers < 0 ? "999" : std::to_string(c.gpu_layers));
  if (!rpc.empty()) {
    std::string joined;
    for (const std::string& r : rpc) joined += (joined.empty() ? "" : ",") + r;
    a.push_back("--rpc");
    a.push_back(joined);
  }
  if (!c.tensor_split.empty()) {
    std::string ts;
    for (double t : c.tensor_split) ts += (ts.empty() ? "" : ",") + std::to_string(t);
    a.push_back("-ts");
    a.push_back(ts);
  }
  if (c.n_cpu_moe > 0 && c.experts_device < 0) {
    a.push_back("--n-cpu-moe");
    a.push_back(std::to_string(c.n_cpu_moe));
  } else if (c.n_cpu_moe > 0) {
    // llama.cpp names a local GPU's buffer "CUDA<i>", an RPC server's "RPC<j>[host:port]", j
    // counting the devices of that one server (each of ours has one).
    const auto d = static_cast<std::size_t>(c.experts_device);
    const std::string buffer = cuda ? "CUDA" + std::to_string(d) : "RPC0[" + rpc.at(d) + "]";
    std::string alternatives;
    for (std::uint32_t b = 0; b < c.n_cpu_moe; ++b)
      alternatives += (alternatives.empty() ? "" : "|") + std::to_string(b);
    a.push_back("-ot");
    a.push_back("blk\\.(" + alternatives + ")\\.ffn_(up|down|gate)_exps=" + buffer);
  }
  if (cuda && c.devices > 0) {
    std::string dev;
    for (std::uint32_t i = 0; i < c.devices; ++i)
      dev += (dev.empty() ? "" : ",") + ("CUDA" + std::to_string(i));
    a.push_back("-dev");
    a.push_back(dev);
  }
  return a;
}

std::string run_case(const Case& c, const std::string& llama_bin, const std::string& model,
                     const std::string& log_path, int port_base) {
  const int base_port = port_base + 10;
  std::vector<pid_t> rpc_pids;
  std::vector<std::string> endpoints;
  for (std::uint32_t i = 0; i < c.devices; ++i) {
    const int port = base_port + static_cast<int>(i);  // see rpc_endpoints()
    rpc_pids.push_back(spawn(
        {llama_bin + "/ggml-rpc-server", "-H", "127.0.0.1", "-p", std::to_string(port), "-t", "1"},
        log_path + ".rpc" + std::to_string(i)));
    endpoints.push_back("127.0.0.1:" + std::to_string(port));
  }
  for (int i = 0; i < 100; ++i) {
    bool all = true;
    for (std::uint32_t d = 0; d < c.devices; ++d)
      all = all && port_open(base_port + static_cast<int>(d));
    if (all) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::vector<std::string> argv = {llama_bin + "/llama-server"};
  for (std::string& a : server_args(c, model, port_base, endpoints, false))
    argv.push_back(std::move(a));
  // A log left by an earlier run of this case must not be read as this run's: the child
  // truncates the file only once it runs, and the loop below may look before that.
  std::remove(log_path.c_str());
  const pid_t server = spawn(argv, log_path);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(240);
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(server, nullptr, WNOHANG) == server) break;
    const std::string log = read_all(log_path);
    if (log.find("server is listening") != std::string::npos ||
        log.find("all slots are idle") != std::string::npos) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  stop(server);
  for (pid_t p : rpc_pids) stop(p);
  return read_all(log_path);
}

std::vector<std::string> rpc_endpoints(const Case& c, int port_base) {
  std::vector<std::string> out;
  for (std::uint32_t i = 0; i < c.devices; ++i)
    out.push_back("127.0.0.1:" + std::to_string(port_base + 10 + static_cast<int>(i)));
  return out;
}

std::string Case::id() const {
  std::ostringstream o;
  o << preset << "_b" << blocks << "_c" << ctx << "_" << cache << (flash_attn ? "_fa" : "_nofa")
    << "_np" << parallel << "_ngl"
    << (gpu_layers < 0 ? std::string("all") : std::to_string(gpu_layers)) << "_d" << devices;
  for (double t : tensor_split) o << "_" << t;
  if (n_cpu_moe > 0 && experts_device >= 0)
    o << "_moe" << n_cpu_moe << "to" << experts_device;
  else if (n_cpu_moe > 0)
    o << "_cmoe" << n_cpu_moe;
  return o.str();
}

std::vector<Case> cases(bool quick) {
  std::vector<Case> out;
  auto add = [&](Case c) { out.push_back(std::move(c)); };
  if (quick) {
    add({"llama3-8b-q4_0", 2, 4096, "f16", true, 1, -1, 0, {}, 0});
    add({"llama3-8b-q4_0", 2, 8192, "q8_0", true, 1, -1, 1, {}, 0});
    add({"qwen3-30b-a3b-q4_k_m", 4, 4096, "f16", true, 4, -1, 2, {1, 1}, 0});
    add({"deepseek-r1-ud-iq2_xxs", 4, 4096, "f16", true, 1, 3, 1, {}, 0});
    add({"gemma3-27b-q4_k_m", 7, 8192, "q4_0", true, 1, -1, 2, {1, 3}, 0});
    // Routed experts in host RAM (--n-cpu-moe): MoE, and MLA with a dense first block.
    add({"qwen3-30b-a3b-q4_k_m", 4, 4096, "f16", true, 4, -1, 2, {1, 1}, 2});
    add({"deepseek-r1-ud-iq2_xxs", 4, 4096, "f16", true, 1, -1, 2, {1, 1}, 4});
    return out;
  }
  struct P {
    const char* name;
    std::uint32_t blocks;
  };
  for (const P p : {P{"llama3-8b-q4_0", 4}, P{"qwen3-30b-a3b-q4_k_m", 4},
                    P{"deepseek-r1-ud-iq2_xxs", 4}, P{"gemma3-27b-q4_k_m", 7}}) {
    const std::uint32_t all = p.blocks + 1;
    for (std::uint32_t ctx : {512u, 8192u, 32768u})
      add({p.name, p.blocks, ctx, "f16", true, 1, -1, 1, {}, 0});
    for (const char* cache : {"q8_0", "q4_0"})
      add({p.name, p.blocks, 8192, cache, true, 1, -1, 1, {}, 0});
    add({p.name, p.blocks, 8192, "f16", false, 1, -1, 1, {}, 0});
    add({p.name, p.blocks, 8192, "f16", true, 4, -1, 1, {}, 0});
    add({p.name, p.blocks, 8192, "f16", true, 1, -1, 0, {}, 0});  // CPU only
    add({p.name,
         p.blocks,
         8192,
         "f16",
         true,
         1,
         static_cast<std::int32_t>(all / 2),
         1,
         {},
         0});  // partial
    add({p.name, p.blocks, 8192, "f16", true, 1, -1, 2, {1, 1}, 0});
    add({p.name, p.blocks, 8192, "f16", true, 1, -1, 3, {1, 1, 1}, 0});
    add({p.name,
         p.blocks,
         32768,
         "q8_0",
         true,
         4,
         static_cast<std::int32_t>(all - 1),
         2,
         {2, 1},
         0});
    // Which of long context, quantized cache, several streams and partial offload moves the
    // compute buffer in the case above.
    add({p.name, p.blocks, 32768, "q8_0", true, 1, -1, 1, {}, 0});
    add({p.name, p.blocks, 8192, "q8_0", true, 4, -1, 1, {}, 0});
    add({p.name,
         p.blocks,
         32768,
         "f16",
         true,
         4,
         static_cast<std::int32_t>(all - 1),
         2,
         {2, 1},
         0});
  }
  // Routed experts in host RAM (--n-cpu-moe N): the first N blocks' expert tensors stay on the
  // CPU, their attention and KV cache on the devices. deepseek-r1's 4 blocks keep 3 dense ones:
  // N = 2 moves nothing but still turns pipeline parallelism off.
  for (const std::uint32_t n : {1u, 2u, 4u})
    add({"qwen3-30b-a3b-q4_k_m", 4, 8192, "f16", true, 1, -1, 1, {}, n});
  for (const std::uint32_t n : {2u, 4u})
    add({"deepseek-r1-ud-iq2_xxs", 4, 8192, "f16", true, 1, -1, 1, {}, n});
  // Experts moved to another device (a lender's GPU) by an -ot rule: qwen3's first blocks' to
  // the second device, deepseek-r1's only MoE block's (the last) to the first.
  add({"qwen3-30b-a3b-q4_k_m", 4, 8192, "f16", true, 1, -1, 2, {1, 1}, 2, 1});
  add({"qwen3-30b-a3b-q4_k_m", 4, 8192, "f16", true, 4, -1, 2, {3, 1}, 3, 1});
  add({"deepseek-r1-ud-iq2_xxs", 4, 8192, "f16", true, 1, -1, 2, {1, 1}, 4, 0});
  add({"deepseek-r1-ud-iq2_xxs", 4, 32768, "q8_0", true, 4, -1, 2, {1, 3}, 4, 0});
  for (const char* p : {"qwen3-30b-a3b-q4_k_m", "deepseek-r1-ud-iq2_xxs"}) {
    add({p, 4, 8192, "f16", true, 1, -1, 2, {1, 1}, 4});
    add({p, 4, 8192, "f16", true, 1, -1, 2, {1, 1}, 2});
    add({p, 4, 32768, "q8_0", true, 4, -1, 1, {}, 4});
    add({p, 4, 8192, "f16", false, 1, -1, 1, {}, 4});
    add({p, 4, 8192, "f16", true, 1, 3, 1, {}, 4});  // with whole blocks on the CPU too
    add({p, 4, 512, "f16", true, 1, -1, 1, {}, 4});
  }
  return out;
}

std::vector<Case> held_out_cases() {
  const char* llama = "llama3-8b-q4_0";
  const char* qwen = "qwen3-30b-a3b-q4_k_m";
  const char* ds = "deepseek-r1-ud-iq2_xxs";
  const char* gemma = "gemma3-27b-q4_k_m";
  return {
      // Dense blocks on the CPU whose products a GPU runs.
      {llama, 6, 16384, "f16", true, 2, 0, 1, {}, 0},
      {llama, 6, 4096, "q8_0", true, 1, 3, 1, {}, 0},
      {gemma, 7, 16384, "f16", true, 2, 4, 1, {}, 0},
      {gemma, 7, 8192, "q8_0", true, 1, 0, 1, {}, 0},
      // Attention after an MoE block on the same GPU.
      {qwen, 6, 16384, "f16", false, 1, -1, 1, {}, 0},
      {qwen, 6, 16384, "q8_0", true, 1, -1, 1, {}, 0},
      {qwen, 6, 65536, "q4_0", true, 2, -1, 1, {}, 0},
      // Host experts of GPU blocks, and MoE blocks on the CPU.
      {qwen, 6, 16384, "f16", true, 1, -1, 2, {1, 1}, 3},
      {qwen, 6, 8192, "f16", true, 2, -1, 1, {}, 6},
      {qwen, 6, 16384, "f16", true, 1, 4, 1, {}, 0},
      // MLA blocks on the CPU with a quantized cache.
      {ds, 5, 16384, "q8_0", true, 2, 3, 1, {}, 0},
      {ds, 4, 65536, "q8_0", true, 1, 2, 1, {}, 0},
      {ds, 5, 32768, "q4_0", true, 4, 0, 1, {}, 0},
  };
}

Measured parse_log(const std::string& log, const std::vector<std::string>& rpc_endpoints,
                   std::uint32_t local_gpus) {
  Measured m;
  m.devices.resize(rpc_endpoints.size() + local_gpus);
  for (std::size_t i = 0; i < rpc_endpoints.size(); ++i)
    m.device_names.push_back("RPC" + std::to_string(i));
  for (std::uint32_t i = 0; i < local_gpus; ++i)
    m.device_names.push_back("CUDA" + std::to_string(i));
  const std::regex line(R"((\S+) +(model|KV|RS|compute|output) buffer size = +([0-9.]+) MiB)");
  std::istringstream in(log);
  bool saw_model = false;
  for (std::string l; std::getline(in, l);) {
    std::smatch s;
    if (!std::regex_search(l, s, line)) continue;
    const std::string name = s[1].str();
    const std::string kind = s[2].str();
    const double mib = std::stod(s[3].str());
    Usage* u = nullptr;
    if (name.rfind("CPU", 0) == 0 || name == "CUDA_Host" || name == "AMX") {
      u = &m.host;
    } else if (name.rfind("CUDA", 0) == 0) {
      const std::size_t i = rpc_endpoints.size() + std::stoul(name.substr(4));
      if (i < m.devices.size()) u = &m.devices[i];
    } else if (name.rfind("RPC", 0) == 0) {
      const std::size_t open = name.find('[');
      const std::string endpoint = name.substr(open + 1, name.size() - open - 2);
      const auto it = std::find(rpc_endpoints.begin(), rpc_endpoints.end(), endpoint);
      if (it != rpc_endpoints.end())
        u = &m.devices[static_cast<std::size_t>(it - rpc_endpoints.begin())];
    }
    if (!u) {
      m.error = "unknown buffer '" + name + "'";
      return m;
    }
    if (kind == "model") {
      u->weights_mib += mib;
      saw_model = true;
    } else if (kind == "KV" || kind == "RS") {
      u->kv_mib += mib;
    } else if (kind == "compute") {
      u->compute_mib += mib;
    } else {
      u->output_mib += mib;
    }
  }
  m.ok = saw_model && log.find("compute buffer size") != std::string::npos;
  if (!m.ok) {
    // The last error-looking line says why.
    std::istringstream again(log);
    for (std::string l; std::getline(again, l);) {
      if (l.find("error") != std::string::npos || l.find("failed") != std::string::npos)
        m.error = l;
    }
    if (m.error.empty()) m.error = "no buffer sizes in the log";
  }
  return m;
}

estimate::Layout layout_for(const Case& c, bool cuda, std::uint64_t free_bytes_per_device) {
  estimate::Layout l;
  // On the GPU machine a CPU-only case still has the GPU (llama.cpp offloads large products to it).
  const std::uint32_t devices = cuda ? std::max<std::uint32_t>(c.devices, 1) : c.devices;
  for (std::uint32_t i = 0; i < devices; ++i) {
    estimate::Device d;
    d.name = cuda ? "CUDA" + std::to_string(i) : "RPC" + std::to_string(i);
    d.backend = cuda ? estimate::Backend::kCuda : estimate::Backend::kCpu;
    d.remote = !cuda;
    d.free_bytes = free_bytes_per_device;
    l.devices.push_back(d);
  }
  l.tensor_split = c.tensor_split;
  l.gpu_layers = cuda && c.devices == 0 ? 0 : c.gpu_layers;
  l.context.context_tokens = c.ctx;
  l.context.parallel = c.parallel;
  const auto type = gguf::type_from_name(c.cache);
  l.context.cache_type_k = *type;
  l.context.cache_type_v = *type;
  l.context.flash_attention =
      c.flash_attn ? estimate::FlashAttention::kOn : estimate::FlashAttention::kOff;
  // A CPU-only llama.cpp build repacks eligible CPU weights; a CUDA build with mmap does not.
  l.context.cpu_repack = !cuda;
  if (c.n_cpu_moe > 0) {
    l.experts.assign(c.blocks, estimate::kExpertsWithBlock);
    for (std::uint32_t b = 0; b < c.blocks && b < c.n_cpu_moe; ++b)
      l.experts[b] = c.experts_device < 0 ? estimate::kExpertsOnHost : c.experts_device;
  }
  return l;
}

Measured predicted(const estimate::Estimate& e) {
  constexpr double kMiB = 1024.0 * 1024.0;
  Measured m;
  m.ok = true;
  m.host.weights_mib = static_cast<double>(e.host.mapped_bytes + e.host.copied_bytes) / kMiB;
  m.host.kv_mib = static_cast<double>(e.host.kv_bytes) / kMiB;
  m.host.compute_mib = static_cast<double>(e.host.compute_bytes) / kMiB;
  m.host.output_mib = static_cast<double>(e.host.output_bytes) / kMiB;
  for (const estimate::DeviceUsage& d : e.devices) {
    Usage u;
    u.weights_mib = static_cast<double>(d.weights_bytes) / kMiB;
    u.kv_mib = static_cast<double>(d.kv_bytes) / kMiB;
    u.compute_mib = static_cast<double>(d.compute_bytes) / kMiB;
    m.devices.push_back(u);
    m.device_names.push_back(d.name);
  }
  return m;
}

Verdict judge(double ours, double theirs) {
  Verdict v;
  v.error_mib = ours - theirs;
  v.error_pct = theirs > 0 ? 100.0 * v.error_mib / theirs : 0;
  const double allowed = std::max(0.02 * theirs, 32.0);
  v.pass =
      std::fabs(v.error_mib) <= allowed + 0.01 && v.error_mib >= -std::max(0.01 * theirs, 0.02);
  return v;
}

}  // namespace ggfleet::accuracy
