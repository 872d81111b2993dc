// Fitting the speed model's constants to measurements: a derivative-free minimiser over
// positive parameters (Nelder–Mead on their logarithms) and the error measure it minimises.
#pragma once

#include <functional>
#include <vector>

namespace ggfleet::perf {

// Squared log error of a prediction: symmetric in over/under, scale free.
double log_error2(double predicted, double measured);

// Minimises `f` over strictly positive x, starting at `start` (all > 0), by Nelder–Mead on
// log(x) with `restarts` restarts from the best point. Deterministic. Returns the best x found.
std::vector<double> minimise_positive(const std::function<double(const std::vector<double>&)>& f,
                                      std::vector<double> start, int iterations = 3000,
                                      int restarts = 4);

}  // namespace ggfleet::perf
