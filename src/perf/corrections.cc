#include "perf/corrections.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

namespace ggfleet::perf {
namespace {

using nlohmann::json;

constexpr const char* kFormat = "ggfleet-calibration-1";

double number_at(const json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end() || !it->is_number())
    throw std::runtime_error(std::string("'") + key + "' must be a number");
  const double v = it->get<double>();
  if (!std::isfinite(v)) throw std::runtime_error(std::string("'") + key + "' is not finite");
  return v;
}

json basis_part_json(const Basis& b) {
  return {{"parts_s", b.parts_s}, {"rest_s", b.rest_s}};
}

Basis basis_part_from(const json& j) {
  if (!j.is_object()) throw std::runtime_error("a basis must be an object");
  Basis b;
  b.rest_s = number_at(j, "rest_s");
  const json parts = j.value("parts_s", json::object());
  if (!parts.is_object()) throw std::runtime_error("'parts_s' must be an object");
  for (const auto& [key, v] : parts.items()) {
    if (!v.is_number()) throw std::runtime_error("part '" + key + "' must be a number");
    b.parts_s[key] = v.get<double>();
  }
  return b;
}

bool valid_key(const std::string& key) {
  if (key.rfind("gpu:", 0) == 0 || key.rfind("cpu:", 0) == 0) return key.size() > 4;
  if (key.rfind("link:", 0) == 0) {
    const auto bar = key.find('|', 5);
    return bar != std::string::npos && bar > 5 && bar + 1 < key.size();
  }
  return false;
}

double weight(double samples, std::int64_t updated_ms, std::int64_t now_ms, const LearnOptions& o) {
  const double age_s = std::max<double>(0, static_cast<double>(now_ms - updated_ms) / 1000.0);
  return samples * std::exp2(-age_s / o.half_life_s);
}

// One kind (generation or prompt) of the fit.
struct Row {
  const Basis* basis;
  double measured_s;
  double weight;
};

// `fixed`: factors already known (the links' from generation, for the prompt fit): their parts
// are not fitted but counted at that value.
std::map<std::string, Factor> fit(const std::vector<Row>& rows, const LearnOptions& o,
                                  const std::map<std::string, double>& fixed = {}) {
  // Evidence per key: the weight of the rows in which its parts are a real share.
  std::map<std::string, double> evidence;
  for (const Row& r : rows) {
    const double predicted = r.basis->seconds({});
    for (const auto& [key, s] : r.basis->parts_s) {
      if (predicted > 0 && s >= o.min_share * predicted && !fixed.count(key))
        evidence[key] += r.weight;
    }
  }
  std::vector<std::string> keys;
  for (const auto& [key, w] : evidence) {
    if (w >= o.min_samples) keys.push_back(key);
  }
  std::map<std::string, Factor> out;
  if (keys.empty()) return out;
  const std::size_t n = keys.size();
  std::map<std::string, std::size_t> index;
  for (std::size_t k = 0; k < n; ++k) index[keys[k]] = k;
  // Normal equations of sum_i w_i ((y_i - r_i - sum_k g_k x_ik) / y_i)^2
  //                      + sum_k lambda_k (g_k - 1)^2.
  std::vector<std::vector<double>> a(n, std::vector<double>(n + 1, 0.0));
  std::vector<double> share_sq(n, 0.0), share_w(n, 0.0);
  for (const Row& r : rows) {
    std::vector<std::pair<std::size_t, double>> x;
    double rest = r.basis->rest_s;
    for (const auto& [key, s] : r.basis->parts_s) {
      const auto it = index.find(key);
      if (it == index.end()) {
        const auto known = fixed.find(key);
        rest += s * (known == fixed.end() ? 1.0 : known->second);  // else without evidence: 1
      } else {
        x.emplace_back(it->second, s / r.measured_s);
      }
    }
    const double target = (r.measured_s - rest) / r.measured_s;
    for (const auto& [k, xk] : x) {
      for (const auto& [l, xl] : x) a[k][l] += r.weight * xk * xl;
      a[k][n] += r.weight * xk * target;
      share_sq[k] += r.weight * xk * xk;
      share_w[k] += r.weight;
    }
  }
  for (std::size_t k = 0; k < n; ++k) {
    const double lambda = share_w[k] > 0 ? o.prior_samples * share_sq[k] / share_w[k] : 1.0;
    a[k][k] += lambda;
    a[k][n] += lambda;
  }
  // Gaussian elimination with partial pivoting (n is a handful).
  for (std::size_t c = 0; c < n; ++c) {
    std::size_t pivot = c;
    for (std::size_t r = c + 1; r < n; ++r) {
      if (std::abs(a[r][c]) > std::abs(a[pivot][c])) pivot = r;
    }
    std::swap(a[c], a[pivot]);
    if (std::abs(a[c][c]) < 1e-300) continue;
    for (std::size_t r = 0; r < n; ++r) {
      if (r == c) continue;
      const double f = a[r][c] / a[c][c];
      for (std::size_t k = c; k <= n; ++k) a[r][k] -= f * a[c][k];
    }
  }
  for (std::size_t k = 0; k < n; ++k) {
    const double g = std::abs(a[k][k]) < 1e-300 ? 1.0 : a[k][n] / a[k][k];
    out[keys[k]] = {std::clamp(std::isfinite(g) ? g : 1.0, o.min_factor, o.max_factor),
                    evidence[keys[k]]};
  }
  return out;
}

std::map<std::string, double> values(const std::map<std::string, Factor>& m) {
  std::map<std::string, double> out;
  for (const auto& [key, f] : m) out[key] = f.value;
  return out;
}

double value_or_one(const std::map<std::string, Factor>& m, const std::string& key) {
  const auto it = m.find(key);
  return it == m.end() ? 1.0 : it->second.value;
}

}  // namespace

double Basis::seconds(const std::map<std::string, double>& factors) const {
  double s = rest_s;
  for (const auto& [key, part_s] : parts_s) {
    const auto it = factors.find(key);
    s += part_s * (it == factors.end() ? 1.0 : it->second);
  }
  return s;
}

PredictionBasis basis_of(const Prediction& p, std::uint32_t prompt_tokens) {
  PredictionBasis b;
  const double n = std::max(1u, prompt_tokens);
  double gen_total = 0, prompt_total = 0;
  for (const PartTime& part : p.parts) {
    gen_total += part.generation_s;
    prompt_total += part.prompt_s;
    if (part.factor.empty()) continue;
    b.generation.parts_s[part.factor] += part.scaled_generation_s;
    b.generation.rest_s -= part.scaled_generation_s * part.generation_factor;
    b.prompt.parts_s[part.factor] += part.scaled_prompt_s / n;
    b.prompt.rest_s -= part.scaled_prompt_s * part.prompt_factor / n;
  }
  // The rest is whatever the factors do not scale: the totals less the scaled shares (the totals
  // of the prediction, which hold every part).
  b.generation.rest_s += p.generation_token_s > 0 ? p.generation_token_s : gen_total;
  b.prompt.rest_s += (p.prompt_s > 0 ? p.prompt_s : prompt_total) / n;
  b.generation.rest_s = std::max(0.0, b.generation.rest_s);
  b.prompt.rest_s = std::max(0.0, b.prompt.rest_s);
  return b;
}

json basis_json(const PredictionBasis& b) {
  return {{"generation", basis_part_json(b.generation)}, {"prompt", basis_part_json(b.prompt)}};
}

PredictionBasis basis_from_json(const json& j) {
  if (!j.is_object()) throw std::runtime_error("a prediction basis must be an object");
  PredictionBasis b;
  b.generation = basis_part_from(j.value("generation", json()));
  b.prompt = basis_part_from(j.value("prompt", json()));
  return b;
}

json observation_json(const Observation& o) {
  return {{"id", o.id},
          {"updated_ms", o.updated_ms},
          {"basis", basis_json(o.basis)},
          {"measured_generation_s", o.measured_generation_s},
          {"generation_samples", o.generation_samples},
          {"measured_prompt_s", o.measured_prompt_s},
          {"prompt_samples", o.prompt_samples}};
}

Observation observation_from_json(const json& j) {
  if (!j.is_object()) throw std::runtime_error("an observation must be an object");
  Observation o;
  o.id = j.value("id", "");
  o.updated_ms = static_cast<std::int64_t>(number_at(j, "updated_ms"));
  o.basis = basis_from_json(j.value("basis", json()));
  o.measured_generation_s = number_at(j, "measured_generation_s");
  o.generation_samples = number_at(j, "generation_samples");
  o.measured_prompt_s = number_at(j, "measured_prompt_s");
  o.prompt_samples = number_at(j, "prompt_samples");
  return o;
}

std::map<std::string, double> Corrections::generation_values() const {
  return values(generation);
}

std::map<std::string, double> Corrections::prompt_values() const {
  std::map<std::string, double> out = values(prompt);
  for (const auto& [key, f] : generation) {
    if (key.rfind("link:", 0) == 0) out[key] = f.value;
  }
  return out;
}

json corrections_json(const Corrections& c) {
  json factors = json::array();
  for (const auto& [kind, map] : {std::pair{"generation", &c.generation}, {"prompt", &c.prompt}}) {
    for (const auto& [key, f] : *map)
      factors.push_back({{"key", key}, {"kind", kind}, {"value", f.value}, {"samples", f.samples}});
  }
  return {{"format", kFormat}, {"updated_ms", c.updated_ms}, {"factors", factors}};
}

Corrections corrections_from_json(const json& j) {
  if (!j.is_object() || j.value("format", "") != kFormat)
    throw std::runtime_error(std::string("not a calibration: \"format\" must be \"") + kFormat +
                             "\"");
  Corrections c;
  c.updated_ms =
      j.contains("updated_ms") ? static_cast<std::int64_t>(number_at(j, "updated_ms")) : 0;
  const json factors = j.value("factors", json::array());
  if (!factors.is_array()) throw std::runtime_error("'factors' must be a list");
  for (std::size_t i = 0; i < factors.size(); ++i) {
    const json& f = factors[i];
    const std::string where = "factors[" + std::to_string(i) + "]: ";
    if (!f.is_object()) throw std::runtime_error(where + "must be an object");
    const std::string key = f.value("key", "");
    if (!valid_key(key))
      throw std::runtime_error(where + "key '" + key +
                               "' must be gpu:MODEL, cpu:WORKER or link:WORKER|WORKER");
    const std::string kind = f.value("kind", "");
    if (kind != "generation" && kind != "prompt")
      throw std::runtime_error(where + "kind must be generation or prompt");
    Factor factor;
    try {
      factor.value = number_at(f, "value");
      factor.samples = f.contains("samples") ? number_at(f, "samples") : 0;
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(where + e.what());
    }
    if (factor.value <= 0) throw std::runtime_error(where + "value must be positive");
    (kind == "generation" ? c.generation : c.prompt)[key] = factor;
  }
  return c;
}

Corrections learn(const std::vector<Observation>& observations, std::int64_t now_ms,
                  const LearnOptions& options) {
  std::vector<Row> gen, prompt;
  for (const Observation& o : observations) {
    if (o.measured_generation_s > 0 && o.generation_samples > 0) {
      gen.push_back({&o.basis.generation, o.measured_generation_s,
                     weight(o.generation_samples, o.updated_ms, now_ms, options)});
    }
    if (o.measured_prompt_s > 0 && o.prompt_samples > 0) {
      prompt.push_back({&o.basis.prompt, o.measured_prompt_s,
                        weight(o.prompt_samples, o.updated_ms, now_ms, options)});
    }
  }
  Corrections c;
  c.generation = fit(gen, options);
  // Links have one factor, learned from generation; prompts count every link at it (or at 1).
  std::map<std::string, double> links;
  for (const Row& r : prompt) {
    for (const auto& [key, s] : r.basis->parts_s) {
      if (key.rfind("link:", 0) == 0) links[key] = value_or_one(c.generation, key);
    }
  }
  c.prompt = fit(prompt, options, links);
  c.updated_ms = now_ms;
  return c;
}

std::vector<Observation> retained(std::vector<Observation> observations, std::int64_t now_ms,
                                  std::size_t limit, const LearnOptions& options) {
  std::erase_if(observations, [&](const Observation& o) {
    const double samples = std::max(o.generation_samples, o.prompt_samples);
    return samples <= 0 || weight(samples, o.updated_ms, now_ms, options) < 0.01 * samples;
  });
  std::stable_sort(
      observations.begin(), observations.end(),
      [](const Observation& a, const Observation& b) { return a.updated_ms > b.updated_ms; });
  if (observations.size() > limit) observations.resize(limit);
  return observations;
}

cluster::Cluster corrected(cluster::Cluster cl, const Corrections& c) {
  if (c.empty()) return cl;
  for (cluster::Worker& w : cl.workers) {
    w.cpu.generation_time_factor = value_or_one(c.generation, "cpu:" + w.name);
    w.cpu.prompt_time_factor = value_or_one(c.prompt, "cpu:" + w.name);
    for (cluster::Gpu& g : w.gpus) {
      g.generation_time_factor = value_or_one(c.generation, "gpu:" + g.name);
      g.prompt_time_factor = value_or_one(c.prompt, "gpu:" + g.name);
    }
  }
  std::set<std::string> names;
  for (const cluster::Worker& w : cl.workers) names.insert(w.name);
  for (const auto& [key, f] : c.generation) {
    if (key.rfind("link:", 0) != 0) continue;
    const auto bar = key.find('|', 5);
    const std::string a = key.substr(5, bar - 5), b = key.substr(bar + 1);
    if (!names.count(a) || !names.count(b)) continue;
    const std::pair<std::string, std::string> pair = a < b ? std::pair{a, b} : std::pair{b, a};
    auto it = cl.links.find(pair);
    if (it == cl.links.end()) it = cl.links.emplace(pair, cl.default_link).first;
    it->second.call_time_factor = f.value;
  }
  return cl;
}

std::string describe_factor(const std::string& key, const std::string& kind, const Factor& f) {
  char buf[96];
  std::snprintf(buf, sizeof buf, ": %.2fx the predicted time (%.0f requests)", f.value, f.samples);
  return key + " " + kind + buf;
}

std::vector<std::string> describe(const Corrections& c) {
  std::vector<std::string> out;
  for (const auto& [kind, map] : {std::pair{"generation", &c.generation}, {"prompt", &c.prompt}}) {
    for (const auto& [key, f] : *map) out.push_back(describe_factor(key, kind, f));
  }
  return out;
}

}  // namespace ggfleet::perf
