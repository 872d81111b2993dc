#include "server/metrics.h"

#include "server/scheduler.h"

namespace ggfleet::server {

namespace {

// A Prometheus label value: backslash, double quote and newline escaped.
std::string label(const std::string& v) {
  std::string out;
  for (const char ch : v) {
    if (ch == '\\' || ch == '"') out += '\\';
    out += ch == '\n' ? std::string("\\n") : std::string(1, ch);
  }
  return out;
}

}  // namespace

std::string Metrics::render(store::Store& s) {
  std::ostringstream o;
  std::map<WorkerStatus, int> workers_by_state;
  std::size_t gpus = 0;
  double free_vram = 0;
  const std::vector<store::ClaimRow> claims = s.claims();
  const cluster::Cluster live = live_cluster(s.workers(), claims);
  for (const store::WorkerRow& w : s.workers()) ++workers_by_state[w.status];
  for (const cluster::Worker& w : live.workers) {
    gpus += w.gpus.size();
    for (std::size_t g = 0; g < w.gpus.size(); ++g)
      free_vram += static_cast<double>(w.free_vram_bytes(g));
  }
  const std::vector<store::KeyRow> keys = s.keys();
  std::map<InstanceState, int> instances_by_state;
  for (const store::InstanceRow& i : s.instances()) ++instances_by_state[i.state];
  o << "# HELP ggfleet_store_connections Store connections of this server: lent now, the most "
       "lent at once, the pool's bound.\n# TYPE ggfleet_store_connections gauge\n"
    << "ggfleet_store_connections{state=\"in_use\"} " << s.connections_in_use() << "\n"
    << "ggfleet_store_connections{state=\"peak\"} " << s.connections_peak() << "\n"
    << "ggfleet_store_connections{state=\"max\"} " << s.pool_size() << "\n";
  o << "# HELP ggfleet_workers Workers by state.\n# TYPE ggfleet_workers gauge\n";
  for (const WorkerStatus st : kWorkerStatuses) {
    o << "ggfleet_workers{state=\"" << name(st) << "\"} " << workers_by_state[st] << "\n";
  }
  o << "# HELP ggfleet_gpus GPUs of ready workers.\n# TYPE ggfleet_gpus gauge\nggfleet_gpus "
    << gpus << "\n";
  o << "# HELP ggfleet_gpu_free_bytes Free VRAM on ready workers after reservations and claims.\n"
       "# TYPE ggfleet_gpu_free_bytes gauge\nggfleet_gpu_free_bytes "
    << static_cast<std::uint64_t>(free_vram) << "\n";
  o << "# HELP ggfleet_instances Instances by state.\n# TYPE ggfleet_instances gauge\n";
  for (const InstanceState st : kStoredInstanceStates) {
    o << "ggfleet_instances{state=\"" << name(st) << "\"} " << instances_by_state[st] << "\n";
  }
  std::lock_guard<std::mutex> lock(mu_);
  o << "# HELP ggfleet_scheduling_duration_seconds Time of one scheduling pass.\n"
       "# TYPE ggfleet_scheduling_duration_seconds histogram\n";
  render_histogram(o, "ggfleet_scheduling_duration_seconds", "", scheduling_);
  o << "# HELP ggfleet_placements_total Instances placed by the scheduler.\n"
       "# TYPE ggfleet_placements_total counter\nggfleet_placements_total "
    << placements_ << "\n";
  o << "# HELP ggfleet_planning_seconds_total Time the scheduler spent in the planner.\n"
       "# TYPE ggfleet_planning_seconds_total counter\nggfleet_planning_seconds_total "
    << planning_s_ << "\n";
  o << "# HELP ggfleet_api_requests_total API requests.\n# TYPE ggfleet_api_requests_total "
       "counter\n";
  for (const auto& [key, n] : requests_) {
    o << "ggfleet_api_requests_total{route=\"" << std::get<0>(key) << "\",method=\""
      << std::get<1>(key) << "\",code=\"" << std::get<2>(key) << "\"} " << n << "\n";
  }
  o << "# HELP ggfleet_inference_requests_total Requests proxied to instances.\n"
       "# TYPE ggfleet_inference_requests_total counter\n";
  for (const auto& [key, n] : proxy_requests_) {
    o << "ggfleet_inference_requests_total{deployment=\"" << key.first << "\",code=\"" << key.second
      << "\"} " << n << "\n";
  }
  o << "# HELP ggfleet_inference_tokens_total Tokens through the proxy (streamed: one per "
       "chunk).\n"
       "# TYPE ggfleet_inference_tokens_total counter\n";
  for (const auto& [key, n] : proxy_tokens_) {
    o << "ggfleet_inference_tokens_total{deployment=\"" << key.first << "\",kind=\"" << key.second
      << "\"} " << n << "\n";
  }
  // Usage per key, named as the store names them now (a deleted key keeps its id).
  std::map<std::string, std::string> key_names;
  for (const store::KeyRow& k : keys) key_names[k.id] = k.name;
  o << "# HELP ggfleet_key_requests_total OpenAI requests per API key.\n"
       "# TYPE ggfleet_key_requests_total counter\n";
  for (const auto& [id, u] : key_usage_) {
    o << "ggfleet_key_requests_total{key=\"" << id << "\",name=\"" << label(key_names[id]) << "\"} "
      << u.requests << "\n";
  }
  o << "# HELP ggfleet_key_tokens_total Tokens per API key (streamed without usage: one per "
       "chunk).\n"
       "# TYPE ggfleet_key_tokens_total counter\n";
  for (const auto& [id, u] : key_usage_) {
    for (const auto& [kind, n] :
         {std::pair{"prompt", u.prompt_tokens}, std::pair{"completion", u.completion_tokens}}) {
      o << "ggfleet_key_tokens_total{key=\"" << id << "\",name=\"" << label(key_names[id])
        << "\",kind=\"" << kind << "\"} " << n << "\n";
    }
  }
  o << "# HELP ggfleet_api_request_duration_seconds API latency.\n"
       "# TYPE ggfleet_api_request_duration_seconds histogram\n";
  for (const auto& [route, h] : latency_) {
    render_histogram(o, "ggfleet_api_request_duration_seconds", "route=\"" + route + "\"", h);
  }
  return o.str();
}

std::string render_gateway(const GatewayStats& g) {
  std::ostringstream o;
  auto one = [&o](const char* name, const char* type, const char* help, std::uint64_t value) {
    o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n"
      << name << " " << value << "\n";
  };
  one("ggfleet_gateway_connections", "gauge", "Client connections open now.", g.connections);
  one("ggfleet_proxy_in_flight", "gauge", "Requests forwarded to instances now.",
      g.proxied_in_flight);
  one("ggfleet_proxy_queued", "gauge", "Requests waiting for a slot now.", g.queued);
  one("ggfleet_busy_rejections_total", "counter", "Requests answered 429.", g.rejected_busy);
  one("ggfleet_idle_connections_closed_total", "counter",
      "Connections closed for the per-address cap.", g.evicted_pending);
  one("ggfleet_connection_timeouts_total", "counter",
      "Connections closed for a header, body or write timeout.", g.timed_out);
  one("ggfleet_parked_long_polls", "gauge", "Workers' long polls waiting on the event loop now.",
      g.parked_polls);
  return o.str();
}

}  // namespace ggfleet::server
