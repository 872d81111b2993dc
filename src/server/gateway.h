// The server's public front: one listener on an asynchronous I/O engine (Boost.Asio/Beast, one
// event-loop thread) that owns every client connection.
//
// Data plane: POST /v1/chat/completions, /v1/completions and /v1/embeddings are proxied here to
// the deployment's instances, streamed through as they arrive. Each instance takes at most
// `slots * slots_multiple` requests at once (its llama-server --parallel); the rest wait in a
// FIFO per deployment until a slot frees or `queue_timeout_s` passes, and a full queue or a
// deadline is answered 429 with Retry-After. A thousand open streams cost sockets, not threads.
//
// Control plane: every other request is read whole here (header and body timeouts, a size cap)
// and only then relayed to the control server (httplib, on a loopback port), so slow or idle
// clients never hold a control thread. Worker traffic (register, heartbeat, assignments) is
// never queued; other API calls share `api_concurrency` relays, so client load cannot take the
// threads heartbeats need. Connections still waiting for a request header are capped per client
// address (the oldest is closed beyond `max_pending_per_address`).
//
// TLS: with a certificate, each TLS connection is decrypted on a loop of its own and its bytes
// relayed to the front on a loopback listener (so the front sees those clients as 127.0.0.1).
//
// Thread safety: start() once, stop() from any thread (idempotent), stats() from any thread. The
// hooks are called from a small helper pool (never from the event loop) and may block.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "cluster/states.h"

namespace ggfleet::server {

struct GatewayConfig {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0 = any free port
  // A listener for workers only (register, heartbeat, assignments), on an event loop of its own
  // so that no client burst on the public port delays a heartbeat. -1: none; 0: any free port.
  // Workers learn it when they register and fall back to the public port if it is unreachable.
  int worker_port = 0;
  std::string control_host = "127.0.0.1";
  int control_port = 0;  // where the control server listens (set by the server)
  std::size_t max_body_bytes = 1 << 20;
  int header_timeout_s = 10;  // a new connection must send its request header within this
  int body_timeout_s = 30;
  int idle_timeout_s = 60;  // keep-alive connections with no request
  int max_pending_per_address = 256;
  double slots_multiple = 1.0;              // requests forwarded per instance slot
  std::size_t queue_per_deployment = 4096;  // waiting requests beyond the slots
  int queue_timeout_s = 120;                // longest wait for a slot
  int retry_after_s = 2;                    // Retry-After on 429
  int api_concurrency = 32;                 // control API calls relayed at once (not workers')
  int control_timeout_s = 120;              // longest control answer (long polls wait 30 s)
  // Idle kept-alive connections to the control server per event loop (each pins one of its
  // threads while idle; the server sets it to an eighth of its threads).
  int control_idle_max = 16;
  int upstream_connect_timeout_s = 5;
  int upstream_timeout_s = 600;  // longest silence from an instance (time to first token)
  int client_write_timeout_s = 60;
  int helper_threads = 4;
  // Both set: the public and worker ports speak TLS (terminated on a loop of its own and relayed
  // to the plaintext front on loopback).
  std::string tls_cert, tls_key;
};

// A running instance the proxy may use.
struct ProxyTarget {
  std::string id;
  std::string host;
  int port = 0;
  InstanceState state = InstanceState::kPending;  // only running ones are used
  std::string reason;                             // shown when none is running
  int slots = 1;                                  // llama-server --parallel
  std::string key;  // the instance's own API key (Bearer); empty: none
};

struct ProxyRoute {
  bool exists = false;  // the deployment exists
  std::vector<ProxyTarget> targets;
};

struct ProxyError {
  int status = 0;  // 0 = allowed
  std::string message;
  std::string key_id;  // when allowed: the key that was used (usage is counted per key)
};

// An error as OpenAI's API words it: {"error": {"message", "type", "code", "param"}}, the type
// and code following the status (400 invalid_request_error, 401 invalid_api_key, 404
// model_not_found, 429 rate_limit_exceeded, 5xx server_error), so the official SDKs raise the
// matching exception with the message.
nlohmann::json openai_error(int status, const std::string& message);

// What an OpenAI request body must be before it is relayed: an object whose "model" is a string,
// "stream" a boolean (null is dropped), "stream_options" an object, "messages" an array (chat),
// "prompt" a string or an array (completions), "input" a string or an array (embeddings), and
// numbers where OpenAI has numbers. Returns the problem, or "" when the body is fine; may rewrite
// `body` (a null "stream" removed), and then sets *rewritten.
std::string check_openai_body(const std::string& path, nlohmann::json& body,
                              bool* rewritten = nullptr);

// What llama-server's `timings` said about one answered request.
struct Timings {
  double prompt_tokens = 0;  // prompt tokens it processed (the cached ones not counted)
  double prompt_s = 0;
  double generated_tokens = 0;
  double generation_s = 0;
  bool alone = false;  // no other request ran on the instance at any time during this one
};

struct GatewayHooks {
  // The Authorization header of an OpenAI request: status 0 if it may use the proxy.
  std::function<ProxyError(const std::string& authorization)> authorize;
  // Where a deployment's instances listen now.
  std::function<ProxyRoute(const std::string& deployment)> route;
  // After each proxied request (status sent, tokens counted); also for 429 and 503 answers.
  // `key_id` is ProxyError::key_id of the request's authorization.
  std::function<void(const std::string& deployment, const std::string& key_id, int status,
                     std::uint64_t prompt_tokens, std::uint64_t completion_tokens)>
      proxied;
  // The same two answers when they are at hand without blocking (caches), else nullopt: the
  // proxy's hot path then skips the helper threads.
  std::function<std::optional<ProxyError>(const std::string& authorization)> authorize_cached;
  std::function<std::optional<ProxyRoute>(const std::string& deployment)> route_cached;
  // After each answered (200) request whose answer carried llama-server's timings.
  std::function<void(const std::string& instance, const Timings& timings)> measured;
  // An instance did not answer: routes should be read again.
  std::function<void()> upstream_failed;
  // Workers' long polls (GET /v1/workers/{name}/assignments?since=V&wait=S), answered from the
  // published board without blocking: nullopt when it cannot judge (the key is not a cached key
  // of that worker or an admin, no board as new as V yet): the poll is then relayed to the control
  // server as it came. "" when the board has nothing new for `worker` after `since` (never when
  // `now`): the poll is parked on the event loop (a socket and a timer, no thread) until
  // Gateway::board_changed() or the end of its wait. Else the JSON answer, sent as it is (with
  // `now`: the answer as the board stands, at the end of the wait).
  std::function<std::optional<std::string>(const std::string& authorization,
                                           const std::string& worker, std::int64_t since, bool now)>
      board_poll;
  // A worker's heartbeat that says nothing but "alive" (POST /v1/workers/{name}/heartbeat with
  // the body `{}`), answered without blocking when the server can (its key is cached and this
  // server wrote the worker's liveness recently): the JSON answer; nullopt: relayed as it came.
  std::function<std::optional<std::string>(const std::string& authorization,
                                           const std::string& worker)>
      quiet_heartbeat;
};

struct GatewayStats {
  std::uint64_t connections = 0;        // client connections open now
  std::uint64_t proxied_in_flight = 0;  // forwarded to instances now
  std::uint64_t queued = 0;             // waiting for a slot now
  std::uint64_t rejected_busy = 0;      // 429 answers so far
  std::uint64_t evicted_pending = 0;    // idle or slow connections closed for the per-address cap
  std::uint64_t timed_out = 0;          // connections closed for a header/body/write timeout
  std::uint64_t parked_polls = 0;       // workers' long polls parked now
};

class Gateway {
 public:
  Gateway(GatewayConfig config, GatewayHooks hooks);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Binds and starts the event loops. Returns the public port. Throws std::runtime_error if it
  // cannot bind.
  int start();
  int worker_port() const;  // after start(); -1 if none
  void stop();
  GatewayStats stats() const;
  // The board of assignments was published again: parked long polls ask board_poll again.
  // Thread-safe; a no-op before start() and after stop().
  void board_changed();

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace ggfleet::server
