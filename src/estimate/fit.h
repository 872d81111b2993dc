// Fit helpers for the planner, which calls them thousands of times: no file I/O, only the
// estimate's own small allocations.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "estimate/estimate.h"

namespace ggfleet::estimate {

// The largest -ngl (0 .. blocks + 1) for which every device of `layout` fits its free memory,
// keeping layout.tensor_split. 0 when nothing fits. Throws LayoutError like estimate().
std::int32_t max_gpu_layers(const ModelMemory& model, const Layout& layout);

// A tensor split (one weight per device, llama.cpp's order) that offloads every layer onto the
// layout's devices within their free memory, filling devices in order, or nullopt when the
// devices cannot hold the whole model. The result is checked with estimate().
std::optional<std::vector<double>> fit_tensor_split(const ModelMemory& model, const Layout& layout);

}  // namespace ggfleet::estimate
