#include "plan/score.h"

#include <algorithm>
#include <cmath>
#include <tuple>

namespace ggfleet::plan {
namespace {

// Lexicographic order of the devices: worker name, then GPU index.
bool places_before(const std::vector<perf::DevicePlace>& a,
                   const std::vector<perf::DevicePlace>& b) {
  return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(),
                                      [](const perf::DevicePlace& x, const perf::DevicePlace& y) {
                                        return std::tie(x.worker, x.gpu) <
                                               std::tie(y.worker, y.gpu);
                                      });
}

// `x` to 30 bits of mantissa (about 9 significant digits): predictions that differ only by
// floating-point rounding (the same layout reached by another way) compare equal. Unlike a
// tolerance, this keeps the order transitive.
double rounded(double x) {
  int exponent = 0;
  const double mantissa = std::frexp(x, &exponent);
  return std::ldexp(std::nearbyint(std::ldexp(mantissa, 30)), exponent - 30);
}

}  // namespace

const Eval* pick_layout(const std::vector<const Eval*>& layouts, const Request& r) {
  if (layouts.empty()) return nullptr;
  double best_tg = 0;
  for (const Eval* e : layouts) best_tg = std::max(best_tg, e->tg);
  std::vector<const Eval*> ties;
  for (const Eval* e : layouts) {
    if (e->tg * (1.0 + r.tie_tolerance) >= best_tg) ties.push_back(e);
  }
  const bool spread = r.policy == Policy::kSpread;
  // The policy's load, smaller is better: spread the load, binpack the load negated.
  auto policy_load = [&](const Eval* e) { return spread ? e->load : -e->load; };
  double best_load = policy_load(ties.front());
  for (const Eval* e : ties) best_load = std::min(best_load, policy_load(e));
  // Points 0 to 6 of the key (score.h), smaller first.
  auto key = [&](const Eval* e) {
    const double load = policy_load(e);
    const bool in_band = load <= best_load + kLoadBand;
    return std::make_tuple(!holds_model(*e->main, r), !in_band, in_band ? 0.0 : rounded(load),
                           e->devs.size(), e->remote_devices, -rounded(e->pp), -rounded(e->tg),
                           rounded(load));
  };
  auto before = [&](const Eval* a, const Eval* b) {
    const auto ka = key(a), kb = key(b);
    if (ka != kb) return ka < kb;
    if (a->main->name != b->main->name) return a->main->name < b->main->name;
    if (places_before(a->places, b->places)) return true;
    if (places_before(b->places, a->places)) return false;
    if (a->layout.tensor_split != b->layout.tensor_split)
      return a->layout.tensor_split < b->layout.tensor_split;
    return a->layout.gpu_layers < b->layout.gpu_layers;
  };
  return *std::min_element(ties.begin(), ties.end(), before);
}

}  // namespace ggfleet::plan
