// Peak heap measurement for benchmarks: linking heap_counter.cc replaces operator new/delete in
// the benchmark binary with counting wrappers around malloc/free.
#pragma once

#include <cstdint>
#include <functional>

namespace ggfleet::bench {

// The most heap bytes live at once while `work` runs, above what was live before it.
std::int64_t measure_peak_heap(const std::function<void()>& work);

}  // namespace ggfleet::bench
