#include "server/gateway.h"

// Boost.Asio's awaitable.hpp uses std::exchange without including <utility> (Boost 1.74).
#include <utility>
//
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast.hpp>
#include <chrono>
#include <cstring>
#include <deque>
#include <iostream>
#include <limits>
#include <list>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <thread>

namespace ggfleet::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using asio::use_awaitable;
using nlohmann::json;
using Request = http::request<http::string_body>;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kProxyPaths[] = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings"};

// Headers that describe one hop, never forwarded.
bool hop_by_hop(http::field f) {
  switch (f) {
    case http::field::connection:
    case http::field::keep_alive:
    case http::field::transfer_encoding:
    case http::field::te:
    case http::field::trailer:
    case http::field::upgrade:
    case http::field::proxy_authorization:
    case http::field::proxy_authenticate:
    case http::field::content_length:
    case http::field::host:
      return true;
    default:
      return false;
  }
}

// A request Beast could not parse (a bad method, target, header or chunk), as opposed to a
// connection that ended or timed out: those get an answer (400, or 431 for a huge header).
bool malformed(const beast::error_code& ec) {
  return ec && ec.category() == http::make_error_code(http::error::bad_target).category() &&
         ec != http::error::end_of_stream && ec != http::error::partial_message &&
         ec != http::error::need_more && ec != http::error::need_buffer;
}

bool worker_path(const std::string& path) {
  if (path == "/v1/workers/register") return true;
  if (path.rfind("/v1/workers/", 0) != 0) return false;
  return path.ends_with("/heartbeat") || path.ends_with("/assignments");
}

// A worker's long poll, GET /v1/workers/{name}/assignments?since=V&wait=S with S > 0: its parts.
struct LongPoll {
  std::string worker;
  std::int64_t since = -1;
  int wait_s = 0;
};
std::optional<LongPoll> long_poll_of(const Request& req) {
  if (req.method() != http::verb::get) return std::nullopt;
  const std::string target(req.target());
  const std::size_t q = target.find('?');
  const std::string path = target.substr(0, q);
  constexpr std::string_view kPrefix = "/v1/workers/", kSuffix = "/assignments";
  if (q == std::string::npos || !path.starts_with(kPrefix) || !path.ends_with(kSuffix) ||
      path.size() <= kPrefix.size() + kSuffix.size())
    return std::nullopt;
  LongPoll poll;
  poll.worker = path.substr(kPrefix.size(), path.size() - kPrefix.size() - kSuffix.size());
  bool has_since = false;
  std::size_t at = q + 1;
  while (at <= target.size()) {
    const std::size_t end = std::min(target.find('&', at), target.size());
    const std::string pair = target.substr(at, end - at);
    const std::size_t eq = pair.find('=');
    const std::string key = pair.substr(0, eq),
                      value = eq == std::string::npos ? "" : pair.substr(eq + 1);
    char* stop = nullptr;
    if (key == "since" || key == "wait") {
      const long long n = std::strtoll(value.c_str(), &stop, 10);
      if (value.empty() || *stop != '\0' || n < 0) return std::nullopt;  // the server says why
      if (key == "since") {
        poll.since = n;
        has_since = true;
      } else {
        poll.wait_s = static_cast<int>(std::min<long long>(n, 3600));
      }
    }
    at = end + 1;
  }
  if (!has_since || poll.wait_s <= 0) return std::nullopt;
  return poll;
}

// The worker of POST /v1/workers/{name}/heartbeat whose body is `{}` (blanks aside), else "".
std::string quiet_heartbeat_of(const Request& req) {
  if (req.method() != http::verb::post) return "";
  const std::string_view target(req.target().data(), req.target().size());
  constexpr std::string_view kPrefix = "/v1/workers/", kSuffix = "/heartbeat";
  if (!target.starts_with(kPrefix) || !target.ends_with(kSuffix) ||
      target.size() <= kPrefix.size() + kSuffix.size())
    return "";
  std::string body;
  for (const char c : req.body()) {
    if (c != ' ' && c != '\n' && c != '\r' && c != '\t') body += c;
    if (body.size() > 2) return "";
  }
  if (body != "{}") return "";
  return std::string(
      target.substr(kPrefix.size(), target.size() - kPrefix.size() - kSuffix.size()));
}

// The object `key` of a relayed answer: the JSON answer's, else the last event of the stream's
// tail that has one; null when neither has it.
json object_in(const json& answer, const std::string& stream_tail, const char* key) {
  if (answer.is_object() && answer.contains(key) && answer[key].is_object()) return answer[key];
  for (std::size_t at = stream_tail.rfind("data:"); at != std::string::npos;
       at = at == 0 ? std::string::npos : stream_tail.rfind("data:", at - 1)) {
    const std::size_t end = stream_tail.find('\n', at);
    const json event = json::parse(
        stream_tail.substr(at + 5, end == std::string::npos ? std::string::npos : end - at - 5),
        nullptr, false);
    if (event.is_object() && event.contains(key) && event[key].is_object()) return event[key];
  }
  return nullptr;
}

// A non-negative number field of `j`, else 0.
double number_in(const json& j, const char* key) {
  const auto it = j.find(key);
  return it != j.end() && it->is_number() && it->get<double>() > 0 ? it->get<double>() : 0;
}

// A request waiting for capacity: woken (timer cancelled) with `granted` set, or by its deadline.
struct Waiter {
  explicit Waiter(asio::any_io_executor ex) : timer(std::move(ex)) {}
  asio::steady_timer timer;
  bool granted = false;
  ProxyTarget target;  // for proxy waiters: the instance granted
};

}  // namespace

struct Gateway::Impl : std::enable_shared_from_this<Gateway::Impl> {
  Impl(GatewayConfig c, GatewayHooks h)
      : config(std::move(c)),
        hooks(std::move(h)),
        helpers(static_cast<std::size_t>(std::max(1, config.helper_threads))),
        acceptor(front.io),
        worker_acceptor(workers.io) {}

  // One client connection.
  struct Conn {
    explicit Conn(tcp::socket s) : stream(std::move(s)) {}
    beast::tcp_stream stream;
    std::string address;
    bool pending = false;  // waiting for a request header (counted for the address cap)
    Clock::time_point pending_since;
    std::list<Conn*>::iterator pending_at;
  };

  struct Deployment {
    std::vector<ProxyTarget> targets;  // as of the last request's lookup
    std::deque<std::shared_ptr<Waiter>> queue;
  };

  GatewayConfig config;
  GatewayHooks hooks;
  // Two event loops. The front accepts, reads requests and relays the control plane; the data
  // loop runs the proxied streams. A burst of client streams saturating the data loop does not
  // delay a heartbeat, which is read and relayed by the front. A connection moves between the
  // loops (its descriptor re-registered) when its request belongs to the other.
  struct Loop {
    asio::io_context io{1};
    std::thread thread;
    // Kept-alive upstream connections, per "host:port" (control server, instances).
    std::map<std::string, std::vector<std::unique_ptr<beast::tcp_stream>>> idle_upstreams;
    // Connections waiting for a request header, per client address.
    std::map<std::string, std::list<Conn*>> pending_by_address;
    // Workers' long polls parked on this loop (each woken by board_changed or its deadline).
    std::list<std::shared_ptr<Waiter>> parked;
  };
  Loop front, data, workers;  // workers: the worker-only listener's loop
  Loop tls;                   // TLS handshakes and encryption, when configured
  asio::thread_pool helpers;
  tcp::acceptor acceptor, worker_acceptor;
  int bound_worker_port = -1;
  // With TLS: the public and worker acceptors above listen on loopback (plaintext) and these two
  // take the public connections.
  std::optional<asio::ssl::context> ssl;
  std::optional<tcp::acceptor> tls_public, tls_workers;
  std::atomic<bool> stopped{false};

  // Only touched on the data loop.
  std::map<std::string, Deployment> deployments;
  struct Load {
    int in_flight = 0;           // requests forwarded now
    std::uint64_t overlaps = 0;  // times a request started while another was in flight
  };
  std::map<std::string, Load> load;                     // by instance; no entry for an idle one
  std::atomic<std::int64_t> last_failure_logged_ms{0};  // steady clock
  // Only touched on the front loop.
  int api_active = 0;
  std::deque<std::shared_ptr<Waiter>> api_queue;

  // Read from any thread.
  std::atomic<std::uint64_t> connections{0}, proxied_in_flight{0}, queued{0}, rejected_busy{0},
      evicted_pending{0}, timed_out{0}, parked_polls{0};

  // Runs `f` (which may block) on the helper pool; resumes on the event loop with its result.
  // (A coroutine's parameters live in its frame; a lambda's captures would not.)
  template <class F>
  static awaitable<std::invoke_result_t<F>> call(F f) {
    co_return f();
  }
  template <class F>
  awaitable<std::invoke_result_t<F>> blocking(F f) {
    co_return co_await asio::co_spawn(helpers, call(std::move(f)), use_awaitable);
  }

  // --- connections waiting for a header, per address ---
  void mark_pending(Loop& loop, Conn& c) {
    std::list<Conn*>& list = loop.pending_by_address[c.address];
    c.pending_at = list.insert(list.end(), &c);
    c.pending = true;
    c.pending_since = Clock::now();
    // Beyond the cap, the oldest goes — once it had a second to send its header, so that a burst
    // of honest clients from one address (a NAT, a load test) is not cut while connecting.
    while (list.size() > static_cast<std::size_t>(std::max(1, config.max_pending_per_address)) &&
           Clock::now() - list.front()->pending_since > std::chrono::seconds(1)) {
      Conn* oldest = list.front();
      list.pop_front();
      oldest->pending = false;
      beast::error_code ignored;
      oldest->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
      oldest->stream.socket().close(ignored);
      ++evicted_pending;
    }
  }
  void unmark_pending(Loop& loop, Conn& c) {
    if (!c.pending) return;
    c.pending = false;
    auto it = loop.pending_by_address.find(c.address);
    if (it == loop.pending_by_address.end()) return;
    it->second.erase(c.pending_at);
    if (it->second.empty()) loop.pending_by_address.erase(it);
  }

  // --- answers of our own ---
  static http::response<http::string_body> json_response(int status, const json& body,
                                                         bool keep_alive, int retry_after_s = 0) {
    http::response<http::string_body> res{static_cast<http::status>(status), 11};
    res.set(http::field::content_type, "application/json");
    if (retry_after_s > 0) res.set(http::field::retry_after, std::to_string(retry_after_s));
    res.keep_alive(keep_alive);
    res.body() = body.dump(-1, ' ', false, json::error_handler_t::replace);
    res.prepare_payload();
    return res;
  }
  awaitable<bool> reply(Conn& c, http::response<http::string_body> res) {
    c.stream.expires_after(std::chrono::seconds(config.client_write_timeout_s));
    beast::error_code ec;
    co_await http::async_write(c.stream, res, asio::redirect_error(use_awaitable, ec));
    co_return !ec && res.keep_alive();
  }
  awaitable<bool> reply_error(Conn& c, int status, const std::string& message, bool keep_alive,
                              int retry_after_s = 0, bool openai = false) {
    // (Built outside the co_await: GCC 12 miscompiles braced JSON temporaries in coroutines.)
    json body = json::object();
    if (openai) {
      body = openai_error(status, message);
    } else {
      body["error"] = message;
    }
    http::response<http::string_body> res = json_response(status, body, keep_alive, retry_after_s);
    co_return co_await reply(c, std::move(res));
  }

  // --- upstream connections, kept alive per endpoint ---
  static std::string endpoint_key(const std::string& host, int port) {
    return host + ":" + std::to_string(port);
  }
  awaitable<std::unique_ptr<beast::tcp_stream>> connect(Loop& loop, const std::string& host,
                                                        int port) {
    auto s = std::make_unique<beast::tcp_stream>(loop.io);
    tcp::resolver resolver(loop.io);
    const auto results = co_await resolver.async_resolve(host, std::to_string(port), use_awaitable);
    s->expires_after(std::chrono::seconds(config.upstream_connect_timeout_s));
    co_await s->async_connect(results, use_awaitable);
    s->socket().set_option(tcp::no_delay(true));
    co_return s;
  }
  void give_back(Loop& loop, const std::string& key, std::unique_ptr<beast::tcp_stream> s) {
    auto& idle = loop.idle_upstreams[key];
    // The control server (httplib) holds a thread for each kept-alive connection until it idles
    // out: few idle ones per loop, or connections beyond its threads wait seconds for one.
    const bool control = key == endpoint_key(config.control_host, config.control_port);
    const std::size_t most = control ? static_cast<std::size_t>(config.control_idle_max) : 64;
    if (idle.size() < most && !stopped) idle.push_back(std::move(s));
  }

  // What a relay learned, for metrics.
  struct Relayed {
    bool upstream_answered = false;  // a response header came back
    bool client_ok = true;           // the client took it all (and may send more)
    int status = 0;
    std::uint64_t chunks = 0;  // "data:" events in a stream
    std::string captured;      // the body of a JSON answer (first 1 MiB)
    std::string stream_tail;   // the last 16 KiB of a stream (its usage chunk, when asked for)
  };

  // Sends `req` to host:port and streams the answer to the client as it arrives. Nothing is
  // written to the client if the upstream fails before its header (the caller answers then).
  awaitable<Relayed> relay(Loop& loop, Conn& c, Request req, const std::string& host, int port,
                           bool client_keep_alive, int read_timeout_s) {
    Relayed out;
    const std::string key = endpoint_key(host, port);
    req.keep_alive(true);
    req.set(http::field::host, key);
    req.prepare_payload();
    // Beast drops "Content-Length: 0" for an empty PATCH or DELETE; httplib would then wait for
    // a body that never comes (its read timeout, holding a control-plane thread).
    if (req.body().empty() && req.method() != http::verb::get && req.method() != http::verb::head)
      req.content_length(0);
    std::optional<http::response_parser<http::buffer_body>> fresh;
    beast::flat_buffer ubuf;
    std::unique_ptr<beast::tcp_stream> up;
    // A reused keep-alive connection may have been closed by the instance: one fresh retry.
    for (int attempt = 0; attempt < 2 && !out.upstream_answered; ++attempt) {
      bool reused = false;
      beast::error_code ec;
      auto& idle = loop.idle_upstreams[key];
      if (attempt == 0 && !idle.empty()) {
        up = std::move(idle.back());
        idle.pop_back();
        reused = true;
      } else {
        try {
          up = co_await connect(loop, host, port);
        } catch (const std::exception&) {
          co_return out;
        }
      }
      fresh.emplace();
      fresh->body_limit(std::numeric_limits<std::uint64_t>::max());
      // The answer to HEAD has a Content-Length but no body: waiting for one held the client
      // until the upstream read timeout (found by fuzz/http_api_fuzz).
      if (req.method() == http::verb::head) fresh->skip(true);
      ubuf.clear();
      up->expires_after(std::chrono::seconds(30));
      co_await http::async_write(*up, req, asio::redirect_error(use_awaitable, ec));
      if (!ec) {
        up->expires_after(std::chrono::seconds(read_timeout_s));
        co_await http::async_read_header(*up, ubuf, *fresh,
                                         asio::redirect_error(use_awaitable, ec));
      }
      if (!ec) {
        out.upstream_answered = true;
      } else if (!reused) {
        co_return out;
      }
    }
    if (!out.upstream_answered) co_return out;
    http::response_parser<http::buffer_body>& parser = *fresh;
    const auto& head = parser.get();
    out.status = static_cast<int>(head.result_int());
    http::response<http::buffer_body> res{head.result(), 11};
    for (const auto& f : head) {
      if (!hop_by_hop(f.name())) res.set(f.name_string(), f.value());
    }
    res.keep_alive(client_keep_alive);
    const bool event_stream =
        head[http::field::content_type].to_string().find("event-stream") != std::string::npos;
    if (head.has_content_length() && !head.chunked()) {
      res.content_length(parser.content_length());
    } else {
      res.chunked(true);
    }
    http::response_serializer<http::buffer_body> sr{res};
    beast::error_code ec;
    c.stream.expires_after(std::chrono::seconds(config.client_write_timeout_s));
    co_await http::async_write_header(c.stream, sr, asio::redirect_error(use_awaitable, ec));
    bool upstream_clean = !ec;
    if (ec) out.client_ok = false;
    char buf[16384];
    while (out.client_ok && !parser.is_done()) {
      parser.get().body().data = buf;
      parser.get().body().size = sizeof buf;
      up->expires_after(std::chrono::seconds(read_timeout_s));
      // read_some: hand on whatever arrived (a token), not a full buffer.
      co_await http::async_read_some(*up, ubuf, parser, asio::redirect_error(use_awaitable, ec));
      if (ec == http::error::need_buffer) ec = {};
      if (ec) {
        upstream_clean = false;
        break;
      }
      const std::size_t n = sizeof buf - parser.get().body().size;
      if (n == 0 && !parser.is_done()) continue;  // (an empty chunk would end the body)
      if (event_stream) {
        for (std::size_t k = 0; k + 5 <= n; ++k)
          out.chunks += std::memcmp(buf + k, "data:", 5) == 0;
        out.stream_tail.append(buf, n);
        if (out.stream_tail.size() > (32u << 10))
          out.stream_tail.erase(0, out.stream_tail.size() - (16u << 10));
      } else if (out.captured.size() < (1u << 20)) {
        out.captured.append(buf, std::min(n, (1u << 20) - out.captured.size()));
      }
      // No data: a null buffer, so that Beast writes only the last chunk (a zero-size buffer
      // would go out as an empty chunk, "0\r\n\r\n", and end the body twice).
      res.body().data = n > 0 ? buf : nullptr;
      res.body().size = n;
      res.body().more = !parser.is_done();
      c.stream.expires_after(std::chrono::seconds(config.client_write_timeout_s));
      co_await http::async_write(c.stream, sr, asio::redirect_error(use_awaitable, ec));
      if (ec == http::error::need_buffer) ec = {};
      if (ec) {
        out.client_ok = false;  // the client left: drop the upstream so the instance stops
        upstream_clean = false;
      }
    }
    if (!upstream_clean && out.client_ok) {
      // The instance stopped mid-answer: end the chunked body so the client sees the end, and
      // close (it cannot tell a cut stream from a complete one on a kept-alive connection).
      if (event_stream && res.chunked()) {
        static const std::string msg = "data: {\"error\": \"the instance stopped answering\"}\n\n";
        res.body().data = const_cast<char*>(msg.data());
        res.body().size = msg.size();
        res.body().more = true;
        co_await http::async_write(c.stream, sr, asio::redirect_error(use_awaitable, ec));
        res.body().data = nullptr;
        res.body().size = 0;
        res.body().more = false;
        co_await http::async_write(c.stream, sr, asio::redirect_error(use_awaitable, ec));
      }
      out.client_ok = false;
      out.status = 502;
    }
    if (upstream_clean && parser.is_done() && parser.get().keep_alive()) {
      give_back(loop, key, std::move(up));
    } else if (up) {
      beast::error_code ignored;
      up->socket().shutdown(tcp::socket::shutdown_both, ignored);
      up->socket().close(ignored);
    }
    out.client_ok = out.client_ok && client_keep_alive;
    co_return out;
  }

  // --- admission: a free slot on an instance of the deployment, or a place in its queue ---
  const ProxyTarget* pick(const Deployment& d) {
    const ProxyTarget* best = nullptr;
    int best_load = 0;
    for (const ProxyTarget& t : d.targets) {
      if (t.state != InstanceState::kRunning || t.host.empty() || t.port <= 0) continue;
      const int cap = std::max(1, static_cast<int>(t.slots * config.slots_multiple + 0.5));
      const auto at = load.find(t.id);
      const int busy = at == load.end() ? 0 : at->second.in_flight;
      if (busy >= cap) continue;
      if (!best || busy < best_load) {
        best = &t;
        best_load = busy;
      }
    }
    return best;
  }
  void take(const ProxyTarget& t) {
    Load& l = load[t.id];
    if (l.in_flight > 0) ++l.overlaps;
    ++l.in_flight;
    ++proxied_in_flight;
  }
  void release(const std::string& deployment, const std::string& instance) {
    if (--load[instance].in_flight <= 0) load.erase(instance);
    --proxied_in_flight;
    grant_waiting(deployment);
  }
  void grant_waiting(const std::string& deployment) {
    auto it = deployments.find(deployment);
    if (it == deployments.end()) return;
    Deployment& d = it->second;
    while (!d.queue.empty()) {
      const ProxyTarget* t = pick(d);
      if (!t) break;
      std::shared_ptr<Waiter> w = d.queue.front();
      d.queue.pop_front();
      w->granted = true;
      w->target = *t;
      take(*t);
      w->timer.cancel();
    }
  }
  // Waits in `queue` until granted or the deadline. Returns the waiter (granted or not).
  awaitable<std::shared_ptr<Waiter>> wait_in(Loop& loop,
                                             std::deque<std::shared_ptr<Waiter>>& queue) {
    auto w = std::make_shared<Waiter>(loop.io.get_executor());
    w->timer.expires_after(std::chrono::seconds(config.queue_timeout_s));
    queue.push_back(w);
    ++queued;
    beast::error_code ec;
    co_await w->timer.async_wait(asio::redirect_error(use_awaitable, ec));
    --queued;
    if (!w->granted) {
      const auto at = std::find(queue.begin(), queue.end(), w);
      if (at != queue.end()) queue.erase(at);
    }
    co_return w;
  }

  awaitable<bool> proxy(Conn& c, Request req) {
    const bool keep = req.keep_alive();
    json body = json::parse(req.body(), nullptr, false);
    const std::string path = std::string(req.target().substr(0, req.target().find('?')));
    bool rewritten = false;
    const std::string problem = body.is_discarded() ? "the body is not valid JSON"
                                                    : check_openai_body(path, body, &rewritten);
    if (!problem.empty()) co_return co_await reply_error(c, 400, problem, keep, 0, true);
    if (rewritten) {
      req.body() = body.dump(-1, ' ', false, json::error_handler_t::replace);
      req.prepare_payload();
    }
    const std::string deployment = body["model"].get<std::string>();
    const std::string authorization = req[http::field::authorization].to_string();
    ProxyError denied;
    ProxyRoute route;
    std::string failure;
    bool have_auth = false, have_route = false;
    if (hooks.authorize_cached) {
      if (std::optional<ProxyError> quick = hooks.authorize_cached(authorization)) {
        denied = *quick;
        have_auth = true;
      }
    }
    if (have_auth && denied.status == 0 && hooks.route_cached) {
      if (std::optional<ProxyRoute> quick = hooks.route_cached(deployment)) {
        route = std::move(*quick);
        have_route = true;
      }
    }
    if (!have_auth || (denied.status == 0 && !have_route)) try {
        // (Named: GCC 12 destroys a lambda temporary in a co_await expression twice.)
        auto authorize = [this, authorization] { return hooks.authorize(authorization); };
        auto lookup = [this, deployment] { return hooks.route(deployment); };
        if (!have_auth) denied = co_await blocking(std::move(authorize));
        if (denied.status == 0 && !have_route) route = co_await blocking(std::move(lookup));
      } catch (const std::exception& e) {
        failure = e.what();
      }
    if (!failure.empty())
      co_return co_await reply_error(c, 503, "store unavailable: " + failure, keep,
                                     config.retry_after_s, true);
    if (denied.status != 0)
      co_return co_await reply_error(c, denied.status, denied.message, keep, 0, true);
    if (!route.exists)
      co_return co_await reply_error(c, 404, "no deployment named " + deployment, keep, 0, true);
    Deployment& d = deployments[deployment];
    d.targets = route.targets;
    grant_waiting(deployment);  // slots may have been added
    std::optional<ProxyTarget> chosen;
    if (d.queue.empty()) {
      if (const ProxyTarget* t = pick(d)) {
        chosen = *t;
        take(*t);
      }
    }
    if (!chosen) {
      const bool any_running = std::any_of(d.targets.begin(), d.targets.end(), [](const auto& t) {
        return t.state == InstanceState::kRunning && !t.host.empty();
      });
      if (!any_running) {
        std::string why = "no instance of " + deployment + " is ready";
        for (const ProxyTarget& t : d.targets)
          why += "; " + t.id + " is " + text(t.state) +
                 (t.reason.empty() ? "" : " (" + t.reason + ")");
        if (hooks.proxied) hooks.proxied(deployment, denied.key_id, 503, 0, 0);
        co_return co_await reply_error(c, 503, why, keep, config.retry_after_s, true);
      }
      if (d.queue.size() >= config.queue_per_deployment) {
        ++rejected_busy;
        if (hooks.proxied) hooks.proxied(deployment, denied.key_id, 429, 0, 0);
        co_return co_await reply_error(
            c, 429, "every slot of " + deployment + " is busy and its queue is full; retry later",
            keep, config.retry_after_s, true);
      }
      const std::shared_ptr<Waiter> w = co_await wait_in(data, deployments[deployment].queue);
      if (!w->granted) {
        ++rejected_busy;
        if (hooks.proxied) hooks.proxied(deployment, denied.key_id, 429, 0, 0);
        co_return co_await reply_error(c, 429,
                                       "every slot of " + deployment + " stayed busy for " +
                                           std::to_string(config.queue_timeout_s) +
                                           " s; retry later",
                                       keep, config.retry_after_s, true);
      }
      chosen = w->target;
    }
    // The user's key is not passed on; the instance takes only its own key, which only the
    // server holds (llama-server --api-key, given by the agent through LLAMA_API_KEY).
    req.erase(http::field::authorization);
    req.erase("X-Api-Key");
    if (!chosen->key.empty()) req.set(http::field::authorization, "Bearer " + chosen->key);
    // The slot is given back however the relay ends.
    struct Slot {
      Impl& g;
      std::string deployment, instance;
      ~Slot() {
        if (!g.stopped) g.release(deployment, instance);  // (at stop the loop is gone)
      }
    };
    Relayed r;
    bool alone = false;  // no other request ran on the instance at any time during this one
    {
      Slot slot{*this, deployment, chosen->id};
      const bool busy_at_start = load[chosen->id].in_flight > 1;
      const std::uint64_t overlaps_at_start = load[chosen->id].overlaps;
      r = co_await relay(data, c, std::move(req), chosen->host, chosen->port, keep,
                         config.upstream_timeout_s);
      alone = !busy_at_start && load[chosen->id].overlaps == overlaps_at_start;
    }
    if (!r.upstream_answered) {
      if (hooks.upstream_failed) hooks.upstream_failed();
      if (hooks.proxied) hooks.proxied(deployment, denied.key_id, 502, 0, 0);
      co_return co_await reply_error(c, 502, "instance " + chosen->id + " did not answer", keep, 0,
                                     true);
    }
    if (r.status == 502 && hooks.upstream_failed) hooks.upstream_failed();
    std::uint64_t prompt = 0, completion = r.chunks;
    // Usage: the JSON answer's, or the stream's last event that carries one
    // (stream_options.include_usage); else the number of events stands for the tokens.
    // llama-server's own `timings` arrive the same ways (in a stream, with its last token).
    const json answer =
        json::parse(r.captured.empty() ? std::string("null") : r.captured, nullptr, false);
    const json usage = object_in(answer, r.stream_tail, "usage");
    if (usage.is_object()) {
      prompt = static_cast<std::uint64_t>(number_in(usage, "prompt_tokens"));
      completion = static_cast<std::uint64_t>(number_in(usage, "completion_tokens"));
    }
    if (hooks.proxied) hooks.proxied(deployment, denied.key_id, r.status, prompt, completion);
    const json timings = object_in(answer, r.stream_tail, "timings");
    if (hooks.measured && r.status == 200 && timings.is_object()) {
      Timings t;
      t.prompt_tokens = number_in(timings, "prompt_n");
      t.prompt_s = number_in(timings, "prompt_ms") / 1000;
      t.generated_tokens = number_in(timings, "predicted_n");
      t.generation_s = number_in(timings, "predicted_ms") / 1000;
      t.alone = alone;
      hooks.measured(chosen->id, t);
    }
    co_return r.client_ok;
  }

  // A worker's long poll answered from the published board: at once when it holds news, else
  // parked here, on `loop`, until it does, the wait ends or the gateway stops. nullopt: the hook
  // cannot judge this poll (it goes to the control server). REQUIRES: on `loop`.
  awaitable<std::optional<std::string>> board_answer(Loop& loop, const Request& req) {
    const std::optional<LongPoll> poll = long_poll_of(req);
    if (!poll || !hooks.board_poll) co_return std::nullopt;
    const std::string authorization(req[http::field::authorization]);
    std::optional<std::string> answer =
        hooks.board_poll(authorization, poll->worker, poll->since, false);
    const auto deadline =
        Clock::now() + std::chrono::seconds(std::min(poll->wait_s, config.control_timeout_s));
    while (answer && answer->empty()) {
      if (!stopped && Clock::now() < deadline) {
        auto w = std::make_shared<Waiter>(loop.io.get_executor());
        w->timer.expires_at(deadline);
        const auto at = loop.parked.insert(loop.parked.end(), w);
        ++parked_polls;
        beast::error_code ec;
        co_await w->timer.async_wait(asio::redirect_error(use_awaitable, ec));
        --parked_polls;
        loop.parked.erase(at);
      }
      const bool now = stopped || Clock::now() >= deadline;
      // (nullopt now: the key was forgotten meanwhile; the control server judges it)
      answer = hooks.board_poll(authorization, poll->worker, poll->since, now);
    }
    co_return answer;
  }

  // REQUIRES: on `loop` (the front, or the workers' loop for worker traffic).
  awaitable<bool> control(Loop& loop, Conn& c, Request req, bool worker) {
    const bool keep = req.keep_alive();
    bool counted = false;
    if (worker) {
      std::optional<std::string> answer;
      if (hooks.quiet_heartbeat) {
        if (const std::string name = quiet_heartbeat_of(req); !name.empty())
          answer = hooks.quiet_heartbeat(std::string(req[http::field::authorization]), name);
      }
      if (!answer) answer = co_await board_answer(loop, req);
      if (answer) {
        http::response<http::string_body> res{http::status::ok, 11};
        res.set(http::field::content_type, "application/json");
        res.keep_alive(keep);
        res.body() = std::move(*answer);
        res.prepare_payload();
        co_return co_await reply(c, std::move(res));
      }
    }
    if (!worker) {
      if (api_active >= config.api_concurrency) {
        const std::shared_ptr<Waiter> w = co_await wait_in(front, api_queue);
        if (!w->granted) {
          ++rejected_busy;
          co_return co_await reply_error(c, 429, "the API is busy; retry later", keep,
                                         config.retry_after_s);
        }
      } else {
        ++api_active;
      }
      counted = true;
    }
    struct ApiSlot {  // given back however the relay ends; passes to the next in line
      Impl& g;
      bool counted;
      ~ApiSlot() {
        if (!counted || g.stopped) return;
        if (!g.api_queue.empty()) {
          std::shared_ptr<Waiter> w = g.api_queue.front();
          g.api_queue.pop_front();
          w->granted = true;
          w->timer.cancel();
        } else {
          --g.api_active;
        }
      }
    };
    req.set("X-Forwarded-For", c.address);
    Relayed r;
    {
      ApiSlot slot{*this, counted};
      r = co_await relay(loop, c, std::move(req), config.control_host, config.control_port, keep,
                         config.control_timeout_s);
    }
    if (!r.upstream_answered)
      co_return co_await reply_error(c, 503, "the control plane did not answer", keep,
                                     config.retry_after_s);
    co_return r.client_ok;
  }

  // Reads and drops `bytes` of a request body (what `buf` holds counts), within the body timeout
  // and at most 64 MiB.
  awaitable<void> discard(Conn& c, beast::flat_buffer& buf, std::uint64_t bytes) {
    bytes = std::min<std::uint64_t>(bytes, 64u << 20);
    const std::size_t have = std::min<std::size_t>(buf.size(), bytes);
    buf.consume(have);
    bytes -= have;
    char scratch[16384];
    beast::error_code ec;
    while (bytes > 0) {
      const std::size_t n = co_await c.stream.async_read_some(
          asio::buffer(scratch, std::min<std::uint64_t>(bytes, sizeof scratch)),
          asio::redirect_error(use_awaitable, ec));
      if (ec) co_return;
      bytes -= n;
    }
  }

  static bool proxied_request(const Request& req, const std::string& path) {
    return req.method() == http::verb::post &&
           std::any_of(std::begin(kProxyPaths), std::end(kProxyPaths),
                       [&](const char* p) { return path == p; });
  }

  // One client connection on `loop`, starting with `first` when the other loop read it.
  // Proxied requests are served on the data loop, everything else on the front; a request for
  // the other loop moves the connection there.
  awaitable<void> session(Loop& loop, tcp::socket socket, std::optional<Request> first,
                          beast::flat_buffer buf, std::string address) {
    Conn c(std::move(socket));
    beast::error_code ec;
    c.address = address;
    const bool on_front = &loop == &front;
    const bool on_workers = &loop == &workers;
    bool fresh = !first.has_value() && !(&loop == &data);
    bool moved = false;
    try {
      for (;;) {
        std::optional<Request> next = std::move(first);
        first.reset();
        if (!next) {
          http::request_parser<http::string_body> parser;
          // The size cap is checked after the header (a declared length) and while reading
          // the body (chunked); Beast would otherwise fail the header read with no answer.
          parser.body_limit(std::numeric_limits<std::uint64_t>::max());
          parser.header_limit(64 * 1024);
          if (&loop != &data) mark_pending(loop, c);
          c.stream.expires_after(
              std::chrono::seconds(fresh ? config.header_timeout_s : config.idle_timeout_s));
          co_await http::async_read_header(c.stream, buf, parser,
                                           asio::redirect_error(use_awaitable, ec));
          if (&loop != &data) unmark_pending(loop, c);
          fresh = false;
          if (ec == beast::error::timeout) ++timed_out;
          if (malformed(ec)) {
            co_await reply_error(c, ec == http::error::header_limit ? 431 : 400,
                                 "malformed HTTP request: " + ec.message(), false);
            break;
          }
          if (ec) break;
          if (parser.get()[http::field::expect] == "100-continue") {
            http::response<http::empty_body> cont{http::status::continue_, 11};
            co_await http::async_write(c.stream, cont, asio::redirect_error(use_awaitable, ec));
            if (ec) break;
          }
          c.stream.expires_after(std::chrono::seconds(config.body_timeout_s));
          const boost::optional<std::uint64_t> declared = parser.content_length();
          if (declared && *declared > config.max_body_bytes) {
            // Read what the client sends anyway (it will not read an answer before it is
            // done), then answer and close.
            co_await discard(c, buf, *declared);
            co_await reply_error(c, 413, "the body is too large", false);
            break;
          }
          parser.body_limit(config.max_body_bytes);
          co_await http::async_read(c.stream, buf, parser, asio::redirect_error(use_awaitable, ec));
          if (ec == http::error::body_limit) {
            co_await reply_error(c, 413, "the body is too large", false);
            break;
          }
          if (ec == beast::error::timeout) ++timed_out;
          if (malformed(ec)) {
            co_await reply_error(c, 400, "malformed HTTP request body: " + ec.message(), false);
            break;
          }
          if (ec) break;
          c.stream.expires_never();
          next = parser.release();
        }
        const std::string target = next->target().to_string();
        const std::string path = target.substr(0, target.find('?'));
        const bool proxied = proxied_request(*next, path);
        if (on_workers) {
          // Worker traffic only: relayed with no budget, never behind client load.
          bool again = false;
          if (worker_path(path) || path == "/healthz") {
            again = co_await control(loop, c, std::move(*next), true);
          } else {
            again =
                co_await reply_error(c, 404, "this port serves workers only", next->keep_alive());
          }
          if (!again) break;
          continue;
        }
        if (proxied == on_front) {
          // The other loop's work: hand it the descriptor, the request and what was read.
          Loop& other = on_front ? data : front;
          beast::error_code moved_ec;
          const auto fd = c.stream.socket().release(moved_ec);
          if (moved_ec) break;
          tcp::socket there(other.io);
          there.assign(tcp::v4(), fd, moved_ec);
          if (moved_ec) break;
          asio::co_spawn(
              other.io,
              session(other, std::move(there), std::move(next), std::move(buf), c.address),
              asio::detached);
          moved = true;
          break;
        }
        bool again = false;
        if (proxied) {
          again = co_await proxy(c, std::move(*next));
        } else {
          again =
              co_await control(front, c, std::move(*next), worker_path(path) || path == "/healthz");
        }
        if (!again) break;
      }
    } catch (const std::exception& e) {
      // A failure of this connection only: it is closed below, and said once per second at most.
      const std::int64_t now_ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch())
              .count();
      std::int64_t last_ms = last_failure_logged_ms.load();
      if (now_ms - last_ms > 1000 &&
          last_failure_logged_ms.compare_exchange_strong(last_ms, now_ms)) {
        std::cerr << "ggfleet gateway: a connection from " << c.address
                  << " closed after an error: " << e.what() << std::endl;
      }
    }
    if (&loop != &data) unmark_pending(loop, c);
    if (!moved) {
      c.stream.socket().shutdown(tcp::socket::shutdown_both, ec);
      c.stream.socket().close(ec);
      --connections;
    }
  }

  // Copies bytes from `from` to `to` until either side ends; then closes both.
  template <class From, class To>
  static awaitable<void> pipe(std::shared_ptr<From> from, std::shared_ptr<To> to,
                              std::shared_ptr<tcp::socket> plain,
                              std::shared_ptr<asio::ssl::stream<tcp::socket>> secure) {
    char buf[16384];
    beast::error_code ec;
    for (;;) {
      const std::size_t n = co_await from->async_read_some(asio::buffer(buf),
                                                           asio::redirect_error(use_awaitable, ec));
      if (ec) break;
      co_await asio::async_write(*to, asio::buffer(buf, n),
                                 asio::redirect_error(use_awaitable, ec));
      if (ec) break;
    }
    plain->shutdown(tcp::socket::shutdown_both, ec);
    plain->close(ec);
    secure->lowest_layer().shutdown(tcp::socket::shutdown_both, ec);
    secure->lowest_layer().close(ec);
  }

  // One TLS connection: handshake (within the header timeout), then its bytes both ways between
  // it and a plaintext connection to `inner`.
  awaitable<void> tls_session(tcp::socket s, tcp::endpoint inner) {
    auto secure = std::make_shared<asio::ssl::stream<tcp::socket>>(std::move(s), *ssl);
    auto plain = std::make_shared<tcp::socket>(tls.io);
    asio::steady_timer deadline(tls.io, std::chrono::seconds(config.header_timeout_s));
    deadline.async_wait([secure](const beast::error_code& e) {
      if (!e) {
        beast::error_code ignored;
        secure->lowest_layer().close(ignored);
      }
    });
    beast::error_code ec;
    co_await secure->async_handshake(asio::ssl::stream_base::server,
                                     asio::redirect_error(use_awaitable, ec));
    deadline.cancel();
    if (ec) co_return;
    co_await plain->async_connect(inner, asio::redirect_error(use_awaitable, ec));
    if (ec) co_return;
    plain->set_option(tcp::no_delay(true), ec);
    secure->lowest_layer().set_option(tcp::no_delay(true), ec);
    asio::co_spawn(tls.io, pipe(secure, plain, plain, secure), asio::detached);
    co_await pipe(plain, secure, plain, secure);
  }

  awaitable<void> tls_accept_loop(tcp::acceptor& from, tcp::endpoint inner) {
    for (;;) {
      beast::error_code ec;
      tcp::socket s = co_await from.async_accept(asio::redirect_error(use_awaitable, ec));
      if (stopped || ec == asio::error::operation_aborted) co_return;
      if (ec) continue;
      asio::co_spawn(tls.io, tls_session(std::move(s), inner), asio::detached);
    }
  }

  awaitable<void> accept_loop(Loop& loop, tcp::acceptor& from) {
    for (;;) {
      beast::error_code ec;
      tcp::socket s = co_await from.async_accept(asio::redirect_error(use_awaitable, ec));
      if (stopped) co_return;
      if (ec) {
        if (ec == asio::error::operation_aborted) co_return;
        // Out of descriptors or a connection reset before accept: wait a moment, go on.
        asio::steady_timer pause(loop.io, std::chrono::milliseconds(50));
        co_await pause.async_wait(asio::redirect_error(use_awaitable, ec));
        continue;
      }
      s.set_option(tcp::no_delay(true), ec);
      std::string address = s.remote_endpoint(ec).address().to_string();
      ++connections;
      asio::co_spawn(
          loop.io,
          session(loop, std::move(s), std::nullopt, beast::flat_buffer(), std::move(address)),
          asio::detached);
    }
  }
};

json openai_error(int status, const std::string& message) {
  const char* type = status == 401   ? "invalid_request_error"
                     : status == 403 ? "permission_error"
                     : status == 429 ? "rate_limit_error"
                     : status >= 500 ? "server_error"
                                     : "invalid_request_error";
  json code = nullptr;
  if (status == 401) code = "invalid_api_key";
  if (status == 404) code = "model_not_found";
  if (status == 429) code = "rate_limit_exceeded";
  json error = json::object();
  error["message"] = message;
  error["type"] = type;
  error["param"] = nullptr;
  error["code"] = code;
  json out = json::object();
  out["error"] = std::move(error);
  return out;
}

std::string check_openai_body(const std::string& path, json& body, bool* rewritten) {
  if (rewritten) *rewritten = false;
  if (!body.is_object()) return "the body must be a JSON object";
  if (!body.contains("model") || !body["model"].is_string())
    return "'model' (a deployment name) must be a string";
  if (body.contains("stream") && body["stream"].is_null()) {
    body.erase("stream");  // OpenAI's default; llama-server would refuse a null
    if (rewritten) *rewritten = true;
  }
  if (body.contains("stream") && !body["stream"].is_boolean())
    return "'stream' must be true or false";
  if (body.contains("stream_options") && !body["stream_options"].is_object() &&
      !body["stream_options"].is_null())
    return "'stream_options' must be an object";
  const auto string_or_array = [&](const char* key) {
    return !body.contains(key) || body[key].is_string() || body[key].is_array();
  };
  if (path == "/v1/chat/completions" &&
      (!body.contains("messages") || !body["messages"].is_array()))
    return "'messages' must be an array";
  if (path == "/v1/completions" && (!body.contains("prompt") || !string_or_array("prompt")))
    return "'prompt' must be a string or an array";
  if (path == "/v1/embeddings" && (!body.contains("input") || !string_or_array("input")))
    return "'input' must be a string or an array";
  for (const char* key : {"max_tokens", "max_completion_tokens", "n", "temperature", "top_p",
                          "presence_penalty", "frequency_penalty", "seed", "top_logprobs"}) {
    if (body.contains(key) && !body[key].is_number() && !body[key].is_null())
      return std::string("'") + key + "' must be a number";
  }
  return "";
}

Gateway::Gateway(GatewayConfig config, GatewayHooks hooks)
    : impl_(std::make_shared<Impl>(std::move(config), std::move(hooks))) {}

Gateway::~Gateway() {
  stop();
}

namespace {

// Opens, binds and listens; throws std::runtime_error naming what could not be bound.
void listen_on(tcp::acceptor& a, const tcp::endpoint& at, const std::string& what) {
  beast::error_code ec;
  a.open(at.protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) a.bind(at, ec);
  if (!ec) a.listen(4096, ec);
  if (ec)
    throw std::runtime_error("cannot listen " + what + " on " + at.address().to_string() + ":" +
                             std::to_string(at.port()) + ": " + ec.message());
}

}  // namespace

int Gateway::start() {
  Impl& g = *impl_;
  beast::error_code ec;
  const asio::ip::address host = asio::ip::make_address(g.config.host, ec);
  if (ec) throw std::runtime_error("cannot listen on " + g.config.host + ": not an address");
  const bool with_tls = !g.config.tls_cert.empty() || !g.config.tls_key.empty();
  const asio::ip::address loopback = asio::ip::make_address("127.0.0.1");
  int port = 0;
  if (with_tls) {
    g.ssl.emplace(asio::ssl::context::tls_server);
    g.ssl->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                       asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                       asio::ssl::context::no_tlsv1_1);
    g.ssl->use_certificate_chain_file(g.config.tls_cert, ec);
    if (!ec) g.ssl->use_private_key_file(g.config.tls_key, asio::ssl::context::pem, ec);
    if (ec)
      throw std::runtime_error("cannot use TLS certificate " + g.config.tls_cert + " and key " +
                               g.config.tls_key + ": " + ec.message());
    g.tls_public.emplace(g.tls.io);
    listen_on(*g.tls_public, tcp::endpoint(host, static_cast<std::uint16_t>(g.config.port)),
              "(TLS)");
    port = g.tls_public->local_endpoint().port();
    listen_on(g.acceptor, tcp::endpoint(loopback, 0), "(behind TLS)");
    asio::co_spawn(g.tls.io, g.tls_accept_loop(*g.tls_public, g.acceptor.local_endpoint()),
                   asio::detached);
  } else {
    listen_on(g.acceptor, tcp::endpoint(host, static_cast<std::uint16_t>(g.config.port)), "");
    port = g.acceptor.local_endpoint().port();
  }
  asio::co_spawn(g.front.io, g.accept_loop(g.front, g.acceptor), asio::detached);
  if (g.config.worker_port >= 0) {
    const tcp::endpoint wat(host, static_cast<std::uint16_t>(g.config.worker_port));
    if (with_tls) {
      g.tls_workers.emplace(g.tls.io);
      listen_on(*g.tls_workers, wat, "for workers (TLS)");
      g.bound_worker_port = g.tls_workers->local_endpoint().port();
      listen_on(g.worker_acceptor, tcp::endpoint(loopback, 0), "for workers (behind TLS)");
      asio::co_spawn(g.tls.io,
                     g.tls_accept_loop(*g.tls_workers, g.worker_acceptor.local_endpoint()),
                     asio::detached);
    } else {
      listen_on(g.worker_acceptor, wat, "for workers");
      g.bound_worker_port = g.worker_acceptor.local_endpoint().port();
    }
    asio::co_spawn(g.workers.io, g.accept_loop(g.workers, g.worker_acceptor), asio::detached);
  }
  for (Impl::Loop* loop : {&g.front, &g.data, &g.workers, &g.tls}) {
    // Keeps running with nothing to do until stop().
    auto guard = std::make_shared<asio::executor_work_guard<asio::io_context::executor_type>>(
        loop->io.get_executor());
    loop->thread = std::thread([loop, guard] {
      for (;;) {
        try {
          loop->io.run();
          return;
        } catch (const std::exception&) {
          // A handler threw outside a session: keep serving the others.
        }
      }
    });
  }
  return port;
}

void Gateway::stop() {
  Impl& g = *impl_;
  if (g.stopped.exchange(true)) return;
  for (Impl::Loop* loop : {&g.front, &g.data, &g.workers, &g.tls}) {
    loop->io.stop();
    if (loop->thread.joinable()) loop->thread.join();
  }
  beast::error_code ec;
  g.acceptor.close(ec);  // (their loops have stopped: no other thread uses them)
  g.worker_acceptor.close(ec);
  if (g.tls_public) g.tls_public->close(ec);
  if (g.tls_workers) g.tls_workers->close(ec);
  g.helpers.join();
  // Close the kept-alive upstream connections now (the control server waits for them to end).
  for (Impl::Loop* loop : {&g.front, &g.data, &g.workers, &g.tls}) loop->idle_upstreams.clear();
}

void Gateway::board_changed() {
  Impl& g = *impl_;
  if (g.stopped) return;
  for (Impl::Loop* loop : {&g.front, &g.workers}) {
    // (Only the loop is captured: a handler that never runs dies with its io_context.)
    asio::post(loop->io, [loop] {
      for (const std::shared_ptr<Waiter>& w : loop->parked) w->timer.cancel();
    });
  }
}

int Gateway::worker_port() const {
  return impl_->bound_worker_port;
}

GatewayStats Gateway::stats() const {
  const Impl& g = *impl_;
  return {g.connections.load(),   g.proxied_in_flight.load(), g.queued.load(),
          g.rejected_busy.load(), g.evicted_pending.load(),   g.timed_out.load(),
          g.parked_polls.load()};
}

}  // namespace ggfleet::server
