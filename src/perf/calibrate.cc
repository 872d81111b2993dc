#include "perf/calibrate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace ggfleet::perf {

double log_error2(double predicted, double measured) {
  const double e = std::log(predicted / measured);
  return e * e;
}

namespace {

std::vector<double> exp_all(const std::vector<double>& y) {
  std::vector<double> x(y.size());
  std::transform(y.begin(), y.end(), x.begin(), [](double v) { return std::exp(v); });
  return x;
}

// One Nelder–Mead run in log space from `y0` with initial steps of `step` (log units).
std::vector<double> nelder_mead(const std::function<double(const std::vector<double>&)>& f,
                                const std::vector<double>& y0, double step, int iterations) {
  const std::size_t n = y0.size();
  std::vector<std::vector<double>> simplex(n + 1, y0);
  for (std::size_t i = 0; i < n; ++i) simplex[i + 1][i] += step;
  std::vector<double> value(n + 1);
  for (std::size_t i = 0; i <= n; ++i) value[i] = f(exp_all(simplex[i]));
  std::vector<std::size_t> order(n + 1);
  for (int it = 0; it < iterations; ++it) {
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(),
              [&](std::size_t a, std::size_t b) { return value[a] < value[b]; });
    const std::size_t best = order.front(), worst = order.back(), second = order[n - 1];
    if (std::abs(value[worst] - value[best]) < 1e-12) break;
    std::vector<double> centroid(n, 0.0);
    for (std::size_t k = 0; k < n; ++k) {
      for (std::size_t i = 0; i <= n; ++i) {
        if (i != worst) centroid[k] += simplex[i][k] / static_cast<double>(n);
      }
    }
    auto along = [&](double t) {
      std::vector<double> y(n);
      for (std::size_t k = 0; k < n; ++k)
        y[k] = centroid[k] + t * (simplex[worst][k] - centroid[k]);
      return y;
    };
    const std::vector<double> reflected = along(-1.0);
    const double fr = f(exp_all(reflected));
    if (fr < value[best]) {
      const std::vector<double> expanded = along(-2.0);
      const double fe = f(exp_all(expanded));
      if (fe < fr) {
        simplex[worst] = expanded;
        value[worst] = fe;
      } else {
        simplex[worst] = reflected;
        value[worst] = fr;
      }
    } else if (fr < value[second]) {
      simplex[worst] = reflected;
      value[worst] = fr;
    } else {
      const std::vector<double> contracted = along(fr < value[worst] ? -0.5 : 0.5);
      const double fc = f(exp_all(contracted));
      if (fc < std::min(fr, value[worst])) {
        simplex[worst] = contracted;
        value[worst] = fc;
      } else {
        for (std::size_t i = 0; i <= n; ++i) {
          if (i == best) continue;
          for (std::size_t k = 0; k < n; ++k)
            simplex[i][k] = simplex[best][k] + 0.5 * (simplex[i][k] - simplex[best][k]);
          value[i] = f(exp_all(simplex[i]));
        }
      }
    }
  }
  const auto best = std::min_element(value.begin(), value.end()) - value.begin();
  return simplex[static_cast<std::size_t>(best)];
}

}  // namespace

std::vector<double> minimise_positive(const std::function<double(const std::vector<double>&)>& f,
                                      std::vector<double> start, int iterations, int restarts) {
  std::vector<double> y(start.size());
  std::transform(start.begin(), start.end(), y.begin(), [](double v) { return std::log(v); });
  double step = 0.7;
  for (int r = 0; r <= restarts; ++r) {
    y = nelder_mead(f, y, step, iterations);
    step *= 0.5;
  }
  return exp_all(y);
}

}  // namespace ggfleet::perf
