#include "worker/probe.h"

#include "worker/discovery.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "estimate/estimate.h"
#include "estimate/model_memory.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"
#include "perf/perf.h"

namespace ggfleet::worker {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Runs a command, returns its stdout and exit code.
std::pair<int, std::string> capture(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return {-1, ""};
  std::string out;
  char buf[4096];
  while (std::size_t n = fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Reads exactly n bytes; false on EOF or error.
bool read_full(int fd, void* data, std::size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t got = ::recv(fd, p, n, 0);
    if (got <= 0) return false;
    p += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
}

bool write_full(int fd, const void* data, std::size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t put = ::send(fd, p, n, MSG_NOSIGNAL);
    if (put <= 0) return false;
    p += put;
    n -= static_cast<std::size_t>(put);
  }
  return true;
}

void no_delay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// Protocol, one connection: 'P' then 1-byte pings echoed until 'E'; 'B' + 8-byte length, the
// bytes, then a 1-byte acknowledgement.
void serve_connection(int fd) {
  no_delay(fd);
  std::vector<char> buf(1 << 20);
  char op = 0;
  while (read_full(fd, &op, 1)) {
    if (op == 'P') {
      char b = 0;
      while (read_full(fd, &b, 1) && b != 'E') {
        if (!write_full(fd, &b, 1)) return;
      }
    } else if (op == 'B') {
      std::uint64_t n = 0;
      if (!read_full(fd, &n, sizeof n)) return;
      while (n > 0) {
        const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n, buf.size()));
        if (!read_full(fd, buf.data(), chunk)) return;
        n -= chunk;
      }
      const char ack = 'A';
      if (!write_full(fd, &ack, 1)) return;
    } else {
      return;
    }
  }
}

std::string format_rate(double bytes_per_s) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.3fGB/s", bytes_per_s / 1e9);
  return buf;
}

}  // namespace

CpuMeasurement measure_cpu(std::uint64_t buffer_bytes, std::uint32_t threads, double seconds) {
  CpuMeasurement m;
  const HostInfo host = host_info();  // cores of this process's affinity (taskset)
  m.cores = host.cores;
  m.threads_used = threads > 0 ? threads : m.cores;
  m.ram_total_bytes = host.ram_total_bytes;
  m.ram_used_bytes = host.ram_used_bytes;
  const std::size_t words =
      static_cast<std::size_t>(std::max<std::uint64_t>(buffer_bytes, 64ull << 20) / 8);
  std::vector<std::uint64_t> data(words);
  for (std::size_t i = 0; i < words; ++i) data[i] = i;  // touch every page
  std::atomic<std::uint64_t> sink{0};
  const Clock::time_point start = Clock::now();
  double best = 0;
  do {
    std::vector<std::thread> pool;
    const Clock::time_point t0 = Clock::now();
    for (std::uint32_t t = 0; t < m.threads_used; ++t) {
      pool.emplace_back([&, t] {
        const std::size_t begin = words * t / m.threads_used,
                          end = words * (t + 1) / m.threads_used;
        std::uint64_t a = 0, b = 0, c = 0, d = 0;
        std::size_t i = begin;
        for (; i + 4 <= end; i += 4) {
          a += data[i];
          b ^= data[i + 1];
          c += data[i + 2];
          d ^= data[i + 3];
        }
        for (; i < end; ++i) a += data[i];
        sink += a + b + c + d;
      });
    }
    for (std::thread& th : pool) th.join();
    best = std::max(best, static_cast<double>(words * 8) / seconds_since(t0));
  } while (seconds_since(start) < seconds);
  m.read_bandwidth_bytes_per_s = best;
  return m;
}

std::vector<GpuMeasurement> parse_device_list(const std::string& output) {
  static const std::regex line(R"(^\s*([A-Za-z]+[0-9]+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*$)");
  std::vector<GpuMeasurement> out;
  std::istringstream in(output);
  std::string text;
  while (std::getline(in, text)) {
    std::smatch m;
    if (!std::regex_match(text, m, line)) continue;
    const std::string device = m[1];
    if (device.rfind("CPU", 0) == 0 || device.rfind("RPC", 0) == 0) continue;
    GpuMeasurement g;
    g.device = device;
    g.name = m[2];
    g.vram_bytes = std::stoull(m[3]) << 20;
    g.free_bytes = std::stoull(m[4]) << 20;
    out.push_back(g);
  }
  return out;
}

std::vector<GpuMeasurement> measure_gpus(const std::string& llama_bin_dir,
                                         const std::string& work_dir) {
  const std::string bench = llama_bin_dir + "/llama-bench";
  const auto [rc, listing] = capture(shell_quote(bench) + " --list-devices 2>/dev/null");
  if (rc != 0)
    throw std::runtime_error(bench + " --list-devices failed (exit " + std::to_string(rc) + ")");
  std::vector<GpuMeasurement> gpus = parse_device_list(listing);
  if (gpus.empty()) return gpus;
  const std::string path = model::synth("llama3-8b-q4_0", work_dir, {}).front();
  const gguf::Model file = gguf::Model::open(path);
  const estimate::ModelMemory memory = estimate::ModelMemory::from(file, model::profile(file));
  estimate::Layout layout;
  layout.devices.push_back({"CUDA0", estimate::Backend::kCuda, false, 1ull << 40, 0});
  layout.context.context_tokens = 256;
  const estimate::Estimate e = estimate::estimate(memory, layout);
  for (GpuMeasurement& g : gpus) {
    const auto [brc, json_text] =
        capture(shell_quote(bench) + " -m " + shell_quote(path) +
                " -p 0 -n 128 -r 3 -ngl 99 -dev " + g.device + " -o json 2>/dev/null");
    const auto pos = json_text.find("\"avg_ts\"");
    if (brc != 0 || pos == std::string::npos) {
      g.error = "llama-bench failed on " + g.device + " (exit " + std::to_string(brc) + ")";
      continue;
    }
    g.generation_tokens_per_s = std::stod(json_text.substr(json_text.find(':', pos) + 1));
    // The model's time per token is a + b / bandwidth: find a and b from two bandwidths, then
    // the bandwidth that gives the measured time.
    auto time_at = [&](double bw) {
      cluster::Cluster c;
      cluster::Worker w;
      w.name = "self";
      w.cpu.cores = 1;
      w.cpu.memory_bandwidth_bytes_per_s = 1e10;
      cluster::Gpu gpu;
      gpu.name = g.name;
      gpu.memory_bandwidth_bytes_per_s = bw;
      gpu.fp16_flops = 1e14;
      w.gpus.push_back(gpu);
      c.workers.push_back(w);
      perf::Scenario s;
      s.cluster = &c;
      s.main_worker = "self";
      s.places = {{"self", 0}};
      return 1.0 / perf::predict_rates(memory, layout, e, s).first;
    };
    const double t1 = time_at(1e12), t2 = time_at(2e12);
    const double b = (t1 - t2) / (1.0 / 1e12 - 1.0 / 2e12);
    const double a = t1 - b / 1e12;
    const double measured_s = 1.0 / g.generation_tokens_per_s;
    if (measured_s <= a) {
      g.error = "measured rate is above what the speed model allows for any bandwidth";
      continue;
    }
    g.memory_bandwidth_bytes_per_s = b / (measured_s - a);
  }
  return gpus;
}

void run_peer_server(const std::string& host, std::uint16_t port, std::uint32_t max_connections,
                     const std::function<void()>& on_listening) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket: " + std::string(std::strerror(errno)));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    ::close(fd);
    throw std::runtime_error("probe server: '" + host + "' is not an IPv4 address");
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 8) != 0) {
    const std::string why = std::strerror(errno);
    ::close(fd);
    throw std::runtime_error("probe server: cannot listen on " + host + ":" + std::to_string(port) +
                             ": " + why);
  }
  if (on_listening) on_listening();
  for (std::uint32_t served = 0; max_connections == 0 || served < max_connections; ++served) {
    const int conn = ::accept(fd, nullptr, nullptr);
    if (conn < 0) continue;
    serve_connection(conn);
    ::close(conn);
  }
  ::close(fd);
}

LinkMeasurement measure_peer(const std::string& host_port, std::uint32_t pings,
                             std::uint64_t bulk_bytes) {
  const auto colon = host_port.rfind(':');
  if (colon == std::string::npos)
    throw std::runtime_error("peer '" + host_port + "' is not HOST:PORT");
  const std::string host = host_port.substr(0, colon), port = host_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) {
    throw std::runtime_error("peer " + host_port + ": cannot resolve");
  }
  const int fd = ::socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  const bool connected = fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0;
  freeaddrinfo(res);
  if (!connected) {
    const std::string why = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("peer " + host_port + ": cannot connect: " + why);
  }
  no_delay(fd);
  auto fail = [&](const std::string& what) {
    ::close(fd);
    throw std::runtime_error("peer " + host_port + ": " + what);
  };
  LinkMeasurement m;
  m.peer = host_port;
  std::vector<double> rtt;
  const char p = 'P';
  if (!write_full(fd, &p, 1)) fail("connection lost");
  for (std::uint32_t i = 0; i < std::max(1u, pings); ++i) {
    const char b = 'x';
    char back = 0;
    const Clock::time_point t0 = Clock::now();
    if (!write_full(fd, &b, 1) || !read_full(fd, &back, 1)) fail("connection lost during pings");
    rtt.push_back(seconds_since(t0));
  }
  const char end = 'E';
  if (!write_full(fd, &end, 1)) fail("connection lost");
  std::sort(rtt.begin(), rtt.end());
  m.latency_s = rtt[rtt.size() / 2] / 2;
  const char bulk = 'B';
  std::vector<char> chunk(1 << 20, 'b');
  const Clock::time_point t0 = Clock::now();
  if (!write_full(fd, &bulk, 1) || !write_full(fd, &bulk_bytes, sizeof bulk_bytes))
    fail("connection lost");
  for (std::uint64_t left = bulk_bytes; left > 0;) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, chunk.size()));
    if (!write_full(fd, chunk.data(), n)) fail("connection lost during the bulk transfer");
    left -= n;
  }
  char ack = 0;
  if (!read_full(fd, &ack, 1)) fail("no acknowledgement of the bulk transfer");
  m.bandwidth_bytes_per_s = static_cast<double>(bulk_bytes) / seconds_since(t0);
  ::close(fd);
  return m;
}

std::string report_yaml(const ProbeReport& r) {
  std::ostringstream o;
  o << "# measured by ggfleet probe\n";
  o << "workers:\n";
  o << "  - name: " << r.worker_name << "\n";
  o << "    cpu: {cores: " << r.cpu.cores
    << ", memory_bandwidth: " << format_rate(r.cpu.read_bandwidth_bytes_per_s) << "}\n";
  o << "    ram: {total: " << r.cpu.ram_total_bytes << ", used: " << r.cpu.ram_used_bytes << "}\n";
  bool any_gpu = false;
  for (const GpuMeasurement& g : r.gpus) {
    if (!any_gpu) o << "    gpus:\n";
    any_gpu = true;
    o << "      - {name: \"" << g.name << "\", vram: " << g.vram_bytes
      << ", used: " << (g.vram_bytes - g.free_bytes);
    if (g.memory_bandwidth_bytes_per_s > 0) {
      o << ", memory_bandwidth: " << format_rate(g.memory_bandwidth_bytes_per_s);
    }
    o << "}";
    if (g.generation_tokens_per_s > 0) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "  # %s: %.1f tokens/s tg128, Llama-3-8B Q4_0 shape",
                    g.device.c_str(), g.generation_tokens_per_s);
      o << buf;
    }
    if (!g.error.empty()) o << "  # not measured: " << g.error;
    o << "\n";
  }
  if (!r.links.empty()) {
    o << "network:\n  links:\n";
    for (const auto& [peer, l] : r.links) {
      char buf[256];
      std::snprintf(buf, sizeof buf,
                    "    - {between: [%s, %s], bandwidth: %.3fGbit/s, latency: %.1fus}  # %s\n",
                    r.worker_name.c_str(), peer.c_str(), l.bandwidth_bytes_per_s * 8 / 1e9,
                    l.latency_s * 1e6, l.peer.c_str());
      o << buf;
    }
  }
  return o.str();
}

}  // namespace ggfleet::worker
