// Prometheus metrics kept in memory (request counts and latencies, scheduling latencies, proxied
// requests and tokens); fleet gauges are read from the store when scraped.
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <tuple>

#include "server/gateway.h"
#include "store/store.h"

namespace ggfleet::server {

class Metrics {
 public:
  void request(const std::string& route, const std::string& method, int status, double seconds) {
    std::lock_guard<std::mutex> lock(mu_);
    ++requests_[{route, method, status}];
    observe(latency_[route], seconds);
  }
  // One proxied request of `deployment` made with the key `key_id`.
  void proxied(const std::string& deployment, const std::string& key_id, int status,
               std::uint64_t prompt_tokens, std::uint64_t completion_tokens) {
    std::lock_guard<std::mutex> lock(mu_);
    ++proxy_requests_[{deployment, status}];
    proxy_tokens_[{deployment, "prompt"}] += prompt_tokens;
    proxy_tokens_[{deployment, "completion"}] += completion_tokens;
    KeyUsage& k = key_usage_[key_id];
    ++k.requests;
    k.prompt_tokens += prompt_tokens;
    k.completion_tokens += completion_tokens;
  }
  // One scheduling pass: its duration, the instances it placed and the time it spent planning.
  void scheduling(double seconds, int placed, double planning_s) {
    std::lock_guard<std::mutex> lock(mu_);
    observe(scheduling_, seconds);
    placements_ += static_cast<std::uint64_t>(placed);
    planning_s_ += planning_s;
  }
  // The Prometheus text: these counters and histograms, and fleet gauges read from the store.
  std::string render(store::Store& s);

 private:
  static constexpr double kBounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25,  0.5,    1,     2.5,  5,     10};
  struct KeyUsage {
    std::uint64_t requests = 0, prompt_tokens = 0, completion_tokens = 0;
  };
  std::map<std::string, KeyUsage> key_usage_;  // by key id
  std::uint64_t placements_ = 0;
  double planning_s_ = 0;
  struct Histogram {
    std::uint64_t buckets[std::size(kBounds)] = {};
    std::uint64_t count = 0;
    double sum = 0;
  };
  static void observe(Histogram& h, double v) {
    for (std::size_t i = 0; i < std::size(kBounds); ++i) {
      if (v <= kBounds[i]) ++h.buckets[i];
    }
    ++h.count;
    h.sum += v;
  }
  static void render_histogram(std::ostringstream& o, const std::string& name,
                               const std::string& labels, const Histogram& h) {
    const std::string sep = labels.empty() ? "" : ",";
    for (std::size_t i = 0; i < std::size(kBounds); ++i) {
      o << name << "_bucket{" << labels << sep << "le=\"" << kBounds[i] << "\"} " << h.buckets[i]
        << "\n";
    }
    o << name << "_bucket{" << labels << sep << "le=\"+Inf\"} " << h.count << "\n";
    o << name << "_sum" << (labels.empty() ? "" : "{" + labels + "}") << " " << h.sum << "\n";
    o << name << "_count" << (labels.empty() ? "" : "{" + labels + "}") << " " << h.count << "\n";
  }
  std::mutex mu_;
  std::map<std::tuple<std::string, std::string, int>, std::uint64_t> requests_;
  std::map<std::string, Histogram> latency_;
  Histogram scheduling_;
  std::map<std::pair<std::string, int>, std::uint64_t> proxy_requests_;
  std::map<std::pair<std::string, std::string>, std::uint64_t> proxy_tokens_;
};

// The gateway's gauges and counters (connections, in flight, queued, 429s, evictions,
// timeouts) in Prometheus text.
std::string render_gateway(const GatewayStats& g);

}  // namespace ggfleet::server
