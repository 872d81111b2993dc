#include "estimate/fit.h"

namespace ggfleet::estimate {

std::int32_t max_gpu_layers(const ModelMemory& model, const Layout& layout) {
  if (layout.devices.empty()) return 0;
  Layout l = layout;
  // More offloaded layers never shrink any device's total, so the fitting counts are a prefix.
  std::int32_t lo = 0;
  std::int32_t hi = static_cast<std::int32_t>(model.blocks()) + 1;
  l.gpu_layers = hi;
  if (estimate(model, l).fits) return hi;
  while (hi - lo > 1) {
    const std::int32_t mid = lo + (hi - lo) / 2;
    l.gpu_layers = mid;
    (estimate(model, l).fits ? lo : hi) = mid;
  }
  return lo;
}

std::optional<std::vector<double>> fit_tensor_split(const ModelMemory& model,
                                                    const Layout& layout) {
  const std::size_t n_dev = layout.devices.size();
  if (n_dev == 0) return std::nullopt;
  const std::uint32_t layers = model.blocks() + 1;
  Layout l = layout;
  l.gpu_layers = -1;
  // Start from an even split to learn each device's fixed costs (compute buffer) and the bytes of
  // each layer on it, then fill devices in order with as many layers as their memory allows.
  std::vector<double> counts(n_dev, 0);
  std::uint32_t next = 0;
  for (std::size_t d = 0; d < n_dev && next < layers; ++d) {
    const Backend b = layout.devices[d].backend;
    std::uint64_t used = 0;
    std::uint32_t taken = 0;
    // Reserve a compute buffer like the one the device would get with its share of blocks.
    Layout probe = layout;
    probe.tensor_split.assign(n_dev, 0);
    probe.tensor_split[d] = 1;
    const Estimate alone = estimate(model, probe);
    const std::uint64_t fixed = alone.devices[d].compute_bytes;
    const std::uint64_t budget =
        layout.devices[d].free_bytes > fixed ? layout.devices[d].free_bytes - fixed : 0;
    while (next < layers) {
      const LayerMemory& lm = model.layers[next];
      std::uint64_t bytes = b == Backend::kCuda ? lm.cuda_bytes : lm.cpu_bytes;
      if (next < model.blocks()) {
        // KV of this block on this device, from the single-device probe (same per block).
        bytes += alone.devices[d].kv_bytes / std::max<std::uint32_t>(1, model.blocks());
      } else if (model.profile.output_tied) {
        bytes += b == Backend::kCuda ? model.tied_output_cuda_bytes : model.tied_output_cpu_bytes;
      }
      if (used + bytes > budget) break;
      used += bytes;
      ++taken;
      ++next;
    }
    counts[d] = taken;
  }
  if (next < layers) return std::nullopt;
  l.tensor_split = counts;
  if (!estimate(model, l).fits) return std::nullopt;
  return counts;
}

}  // namespace ggfleet::estimate
