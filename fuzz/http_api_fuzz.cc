// libFuzzer target for the server's HTTP API. One real ggfleet server (SQLite in a temporary
// directory, its public front, its control plane, its scheduler) runs inside the fuzzing process;
// every input becomes one HTTP/1.1 request with the structure of real ones — a method, a route of
// the API with fuzzed names and query parameters, one of the real keys or a forged one, a content
// type, and a body that is either JSON generated with random types, depths, huge numbers and
// invalid UTF-8 in keys and values, or raw bytes — sent over a loopback socket to the public port
// (or the workers' port). The server's state carries over from input to input, as in production.
//
// What counts as a failure (the input is kept and the run stops):
//   - the process crashes or a sanitizer reports (the server runs in this process);
//   - no answer within 20 s, or an answer that is not HTTP;
//   - any 5xx, except 502/503/504 on the three data-plane routes, which are the documented
//     answers when no instance of the deployment answers (there are no llama-servers here);
//   - an answer that says it is JSON but does not parse, or any error without a JSON body.
//
// GGFLEET_FUZZ_VERBOSE=1 prints every request and answer; GGFLEET_FUZZ_SLOW=1 the requests that
// took more than half a second.
#include <arpa/inet.h>
#include <fuzzer/FuzzedDataProvider.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "gguf/remote.h"
#include "model/synth.h"
#include "server/server.h"

namespace {

constexpr const char* kAdmin = "fuzz-admin-key";
constexpr const char* kJoin = "fuzz-join-token";

struct Answer {
  bool connected = false;
  int status = 0;  // 0: no parseable answer
  double elapsed_s = 0;
  std::string content_type;
  std::string body;
  std::string ended;  // how reading ended: "closed" (FIN), or the error of send/recv
};

// One request on a fresh connection; reads until the server closes it (Connection: close).
Answer round_trip_once(int port, const std::string& request) {
  Answer out;
  const auto started = std::chrono::steady_clock::now();
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return out;
  timeval tv{20, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return out;
  }
  out.connected = true;
  std::size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;  // libFuzzer's timer signal
    if (n <= 0) {  // the server may answer (413, 400) before reading everything
      out.ended = std::string("send: ") + std::strerror(errno) + "; ";
      break;
    }
    sent += static_cast<std::size_t>(n);
  }
  std::string raw;
  char buf[16384];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    // libFuzzer's timer signal (-timeout) interrupts a wait: not an answer from the server.
    // (Taken for one, it made the transient "no HTTP answer" failures of earlier runs.)
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      out.ended += n == 0 ? std::string("closed") : std::string("recv: ") + std::strerror(errno);
      break;
    }
    raw.append(buf, static_cast<std::size_t>(n));
    if (raw.size() > (64u << 20)) break;
  }
  ::close(fd);
  out.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const std::size_t head_end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.1 ", 0) != 0 || head_end == std::string::npos || raw.size() < 12)
    return out;
  out.status = std::atoi(raw.c_str() + 9);
  const std::string head = raw.substr(0, head_end);
  for (std::size_t at = head.find("\r\n"); at != std::string::npos;
       at = head.find("\r\n", at + 2)) {
    const std::size_t colon = head.find(':', at);
    const std::size_t eol = head.find("\r\n", at + 2);
    if (colon == std::string::npos || (eol != std::string::npos && colon > eol)) continue;
    std::string name = head.substr(at + 2, colon - at - 2);
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (name == "content-type")
      out.content_type =
          head.substr(colon + 2, (eol == std::string::npos ? head.size() : eol) - colon - 2);
  }
  out.body = raw.substr(head_end + 4);
  const bool chunked = head.find("chunked") != std::string::npos;
  if (chunked) {  // de-chunk (errors of the data plane may come as chunks)
    std::string plain;
    std::size_t at = 0;
    while (at < out.body.size()) {
      const std::size_t eol = out.body.find("\r\n", at);
      if (eol == std::string::npos) break;
      const std::size_t len = std::strtoul(out.body.c_str() + at, nullptr, 16);
      if (len == 0) break;
      plain += out.body.substr(eol + 2, len);
      at = eol + 2 + len + 2;
    }
    out.body = std::move(plain);
  }
  return out;
}

// As round_trip_once, trying to connect again for up to 10 s: hundreds of connections a second
// leave this machine's ephemeral ports in TIME_WAIT, which is the harness's limit, not the
// server's.
Answer round_trip(int port, const std::string& request) {
  for (int attempt = 0;; ++attempt) {
    Answer a = round_trip_once(port, request);
    if (a.connected || attempt == 100) return a;
    ::usleep(100 * 1000);
  }
}

// The server and the names it knows, made once.
struct Fleet {
  std::string dir, model;
  std::unique_ptr<ggfleet::server::Server> server;
  int port = 0, worker_port = 0;
  std::string user_key, worker_key, instance_id = "1";

  Fleet() {
    char tmpl[] = "/tmp/ggfleet-http-fuzz-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) std::abort();
    dir = tmpl;
    model = ggfleet::model::synth("llama3-8b-q4_0", dir + "/models", {}).front();
    ggfleet::server::ServerConfig c;
    c.data_dir = dir + "/data";
    c.port = 0;
    c.admin_key = kAdmin;
    c.join_token = kJoin;
    c.model_roots = {dir + "/models"};
    c.threads = 32;
    c.max_wait_s = 1;  // long polls end quickly
    c.schedule_interval_ms = 50;
    server = std::make_unique<ggfleet::server::Server>(c);
    port = server->start();
    worker_port = server->worker_port() > 0 ? server->worker_port() : port;
    // URL models must not wait a minute on a name that does not resolve here.
    auto policy = ggfleet::gguf::remote_policy();
    policy.request_timeout_s = 2;
    ggfleet::gguf::set_remote_policy(policy);
    // A user key, a worker with a GPU and a deployment, so routes with names reach their handlers.
    const auto json_of = [](const Answer& a) {
      return nlohmann::json::parse(a.body, nullptr, false);
    };
    const auto post = [&](const std::string& path, const std::string& key,
                          const nlohmann::json& body) {
      const std::string b = body.dump();
      return round_trip(port, "POST " + path +
                                  " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                  "Authorization: Bearer " +
                                  key + "\r\nContent-Type: application/json\r\nContent-Length: " +
                                  std::to_string(b.size()) + "\r\n\r\n" + b);
    };
    const Answer k = post("/v1/keys", kAdmin, {{"role", "user"}, {"name", "fuzz-user"}});
    const auto kj = json_of(k);
    if (kj.is_object() && kj.contains("key")) user_key = kj["key"].get<std::string>();
    const nlohmann::json res = {{"cpu", {{"cores", 8}, {"memory_bandwidth", 50e9}}},
                                {"ram", {{"total", 64ull << 30}, {"used", 0}}},
                                {"gpus", {{{"name", "NVIDIA GeForce RTX 4090"}}}},
                                {"simulated", true}};
    const auto wj =
        json_of(post("/v1/workers/register", kJoin, {{"name", "w0"}, {"resources", res}}));
    if (wj.is_object() && wj.contains("key")) worker_key = wj["key"].get<std::string>();
    post("/v1/deployments", kAdmin, {{"name", "d0"}, {"model", model}});
    if (user_key.empty() || worker_key.empty()) {
      std::fprintf(stderr, "http_api_fuzz: could not set up keys\n");
      std::abort();
    }
  }
  ~Fleet() {
    server->stop();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

Fleet* fleet = nullptr;

const std::vector<std::string> kWords = {"model",
                                         "options",
                                         "replicas",
                                         "name",
                                         "extra_args",
                                         "stream",
                                         "messages",
                                         "role",
                                         "content",
                                         "prompt",
                                         "input",
                                         "max_tokens",
                                         "n",
                                         "stream_options",
                                         "include_usage",
                                         "resources",
                                         "gpus",
                                         "cpu",
                                         "ram",
                                         "total",
                                         "used",
                                         "cores",
                                         "memory_bandwidth",
                                         "address",
                                         "instances",
                                         "state",
                                         "port",
                                         "reason",
                                         "worker",
                                         "key",
                                         "id",
                                         "n_ctx",
                                         "ctx_size",
                                         "parallel",
                                         "threads",
                                         "cache_type_k",
                                         "kv_unified",
                                         "flash_attn",
                                         "mmap",
                                         "simulated",
                                         "llama",
                                         "build",
                                         "free",
                                         "since",
                                         "wait",
                                         "d0",
                                         "w0",
                                         "user",
                                         "admin",
                                         "join",
                                         "running",
                                         "failed",
                                         "ready",
                                         "stopped",
                                         "-ngl",
                                         "--log-file",
                                         "--host",
                                         "--port",
                                         "-m",
                                         "--api-key",
                                         "-t",
                                         "--ctx-size",
                                         "system",
                                         "assistant",
                                         "temperature",
                                         "seed",
                                         "x",
                                         "",
                                         "llama3-8b-q4_0",
                                         "http://127.0.0.1:1/m.gguf",
                                         "http://[::1]/x.gguf",
                                         "https://169.254.169.254/latest",
                                         "/etc/shadow",
                                         "/dev/zero",
                                         "../../etc/passwd",
                                         "\xff\xfe",
                                         "\xc3",
                                         "\xed\xa0\x80",
                                         "\xe2\x82",
                                         std::string("a\0b", 3),
                                         "\xf4\x90\x80\x80"};

const std::vector<std::string> kNumbers = {"0",
                                           "-1",
                                           "1",
                                           "2",
                                           "4096",
                                           "1e999",
                                           "-1e999",
                                           "1e308",
                                           "18446744073709551616",
                                           "9223372036854775807",
                                           "-9223372036854775809",
                                           "0.5",
                                           "-0",
                                           "65536",
                                           "2147483648",
                                           "1e-400",
                                           "123456789012345678901234567890"};

std::string word(FuzzedDataProvider& in) {
  if (in.ConsumeIntegralInRange(0, 4) == 0) return in.ConsumeRandomLengthString(64);
  std::string w = kWords[in.ConsumeIntegralInRange<std::size_t>(0, kWords.size() - 1)];
  if (w == "model") return w;
  if (w == "llama3-8b-q4_0") return fleet->model;
  return w;
}

// JSON text (not a json object: invalid UTF-8 and huge numbers must reach the server as bytes).
void json_text(FuzzedDataProvider& in, int depth, std::string& out) {
  const auto quoted = [&](const std::string& s) {
    out += '"';
    for (const char c : s) {
      if (c == '"' || c == '\\') out += '\\';
      if (c == '\n') {
        out += "\\n";
        continue;
      }
      out += c;
    }
    out += '"';
  };
  switch (in.ConsumeIntegralInRange(0, depth > 6 ? 6 : 9)) {
    case 0:
      out += "null";
      return;
    case 1:
      out += in.ConsumeBool() ? "true" : "false";
      return;
    case 2:
      out += kNumbers[in.ConsumeIntegralInRange<std::size_t>(0, kNumbers.size() - 1)];
      return;
    case 3:
      out += std::to_string(in.ConsumeIntegral<std::int64_t>());
      return;
    case 4:
      out += std::to_string(in.ConsumeFloatingPoint<double>());
      return;
    case 5:
    case 6:
      quoted(word(in));
      return;
    case 7: {  // a deep chain of arrays, past the parser's depth limit sometimes
      const int n = in.ConsumeIntegralInRange(1, 100);
      out += std::string(n, '[');
      json_text(in, depth + 1, out);
      out += std::string(n, ']');
      return;
    }
    case 8: {
      out += '[';
      const int n = in.ConsumeIntegralInRange(0, 4);
      for (int i = 0; i < n; ++i) {
        if (i) out += ',';
        json_text(in, depth + 1, out);
      }
      out += ']';
      return;
    }
    default: {
      out += '{';
      const int n = in.ConsumeIntegralInRange(0, 6);
      for (int i = 0; i < n; ++i) {
        if (i) out += ',';
        quoted(word(in));
        out += ':';
        json_text(in, depth + 1, out);
      }
      out += '}';
      return;
    }
  }
}

std::string path_part(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange(0, 5)) {
    case 0:
      return "d0";
    case 1:
      return "w0";
    case 2:
      return fleet->instance_id;
    case 3:
      return std::to_string(in.ConsumeIntegral<std::int32_t>());
    case 4:
      return "%ff%00%2e%2e";
    default: {
      std::string s = in.ConsumeRandomLengthString(32);
      for (char& c : s)
        if (c == ' ' || c == '\r' || c == '\n' || c == '?' || c == '#') c = '_';
      return s;
    }
  }
}

std::string route(FuzzedDataProvider& in) {
  static const std::vector<std::string> kRoutes = {"/v1/deployments",
                                                   "/v1/deployments/{}",
                                                   "/v1/instances",
                                                   "/v1/instances/{}",
                                                   "/v1/instances/{}/logs",
                                                   "/v1/plan",
                                                   "/v1/events",
                                                   "/v1/keys",
                                                   "/v1/keys/{}",
                                                   "/v1/workers/register",
                                                   "/v1/workers/{}/heartbeat",
                                                   "/v1/workers/{}/assignments",
                                                   "/v1/workers",
                                                   "/v1/workers/{}",
                                                   "/v1/workers/{}/drain",
                                                   "/healthz",
                                                   "/metrics",
                                                   "/v1/models",
                                                   "/v1/models/{}",
                                                   "/v1/chat/completions",
                                                   "/v1/completions",
                                                   "/v1/embeddings",
                                                   "/",
                                                   "/v1/{}",
                                                   "/v1/deployments/{}/{}"};
  std::string r = kRoutes[in.ConsumeIntegralInRange<std::size_t>(0, kRoutes.size() - 1)];
  for (std::size_t at = r.find("{}"); at != std::string::npos; at = r.find("{}"))
    r.replace(at, 2, path_part(in));
  const int params = in.ConsumeIntegralInRange(0, 3);
  static const std::vector<std::string> kParams = {"wait",  "since", "after",   "before",
                                                   "limit", "order", "subject", "deployment",
                                                   "lines", "tail"};
  for (int i = 0; i < params; ++i) {
    r += i == 0 ? '?' : '&';
    r += kParams[in.ConsumeIntegralInRange<std::size_t>(0, kParams.size() - 1)] + "=";
    r += in.ConsumeBool() ? kNumbers[in.ConsumeIntegralInRange<std::size_t>(0, kNumbers.size() - 1)]
                          : path_part(in);
  }
  return r;
}

bool data_plane(const std::string& target) {
  for (const char* p : {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
    if (target.rfind(p, 0) == 0) return true;
  return false;
}

// Printable: control and non-ASCII bytes as \\xNN.
std::string escaped(const std::string& bytes) {
  std::string out;
  for (const unsigned char ch : bytes) {
    if (ch >= 32 && ch < 127) {
      out += static_cast<char>(ch);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", ch);
      out += hex;
    }
  }
  return out;
}

[[noreturn]] void fail(const std::string& why, const std::string& request, const Answer& a) {
  std::fprintf(
      stderr,
      "http_api_fuzz: %s\n--- request (%zu bytes) ---\n%.2000s\n--- answer %d %s after %.3f s "
      "(%s) ---\n%.2000s\n",
      why.c_str(), request.size(), escaped(request).c_str(), a.status, a.content_type.c_str(),
      a.elapsed_s, a.ended.c_str(), a.body.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fleet = new Fleet();
  std::atexit([] {
    delete fleet;
    fleet = nullptr;
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  FuzzedDataProvider in(data, size);
  static const std::vector<std::string> kMethods = {"GET", "POST", "PATCH",  "DELETE",
                                                    "PUT", "HEAD", "OPTIONS"};
  const std::string method =
      kMethods[in.ConsumeIntegralInRange<std::size_t>(0, kMethods.size() - 1)];
  const bool to_workers = in.ConsumeIntegralInRange(0, 5) == 5;  // zero bytes: the public port
  const std::string target = route(in);

  std::string headers = "Host: 127.0.0.1\r\nConnection: close\r\n";
  switch (in.ConsumeIntegralInRange(0, 6)) {
    case 0:
      headers += std::string("Authorization: Bearer ") + kAdmin + "\r\n";
      break;
    case 1:
    case 2:
      headers += "Authorization: Bearer " + fleet->user_key + "\r\n";
      break;
    case 3:
      headers += "Authorization: Bearer " + fleet->worker_key + "\r\n";
      break;
    case 4:
      headers += std::string("Authorization: Bearer ") + kJoin + "\r\n";
      break;
    case 5: {
      std::string forged = in.ConsumeRandomLengthString(80);
      for (char& c : forged)
        if (c == '\r' || c == '\n') c = ' ';
      headers += "Authorization: " + forged + "\r\n";
      break;
    }
    default:
      break;  // no key
  }
  static const std::vector<std::string> kTypes = {"application/json", "", "text/plain",
                                                  "application/json; charset=utf-8",
                                                  "application/x-www-form-urlencoded"};
  const std::string type = kTypes[in.ConsumeIntegralInRange<std::size_t>(0, kTypes.size() - 1)];
  if (!type.empty()) headers += "Content-Type: " + type + "\r\n";

  std::string body;
  switch (in.ConsumeIntegralInRange(0, 4)) {
    case 0:
      break;
    case 1:
      body = in.ConsumeRandomLengthString(4096);
      break;
    default:
      json_text(in, 0, body);
      break;
  }
  const std::string request = method + " " + target + " HTTP/1.1\r\n" + headers +
                              "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  const auto started = std::chrono::steady_clock::now();
  const Answer a = round_trip(to_workers ? fleet->worker_port : fleet->port, request);
  if (std::getenv("GGFLEET_FUZZ_SLOW") &&
      std::chrono::steady_clock::now() - started > std::chrono::milliseconds(500))
    std::fprintf(stderr, "SLOW %d: %s\n", a.status, escaped(request).c_str());
  if (std::getenv("GGFLEET_FUZZ_VERBOSE"))
    std::fprintf(stderr, "%.300s\n=> %d %.300s\n", escaped(request).c_str(), a.status,
                 a.body.c_str());
  if (!a.connected) fail("cannot connect to the server", request, a);
  if (a.status == 0) fail("no HTTP answer", request, a);
  if (a.status >= 500 && !(data_plane(target) && a.status >= 502 && a.status <= 504))
    fail("server error", request, a);
  if (method != "HEAD" && !a.body.empty() && a.content_type.rfind("application/json", 0) == 0 &&
      !nlohmann::json::accept(a.body))
    fail("JSON answer that does not parse", request, a);
  if (a.status >= 400 && method != "HEAD" && !nlohmann::json::accept(a.body))
    fail("error without a JSON body", request, a);
  return 0;
}
