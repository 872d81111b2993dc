// What a worker offers of its GPUs and cores: its own processes are not "used by others", a slice
// of a shared GPU is offered as the slice, and the cores are those its affinity allows.
#include "worker/discovery.h"

#include <gtest/gtest.h>
#include <sched.h>

namespace ggfleet::worker {
namespace {

constexpr std::uint64_t kGiB = 1ull << 30;

GpuInfo gpu(std::uint64_t vram_gib, std::uint64_t used_gib) {
  GpuInfo g;
  g.name = "NVIDIA H200";
  g.vram_bytes = vram_gib * kGiB;
  g.used_bytes = used_gib * kGiB;
  return g;
}

TEST(OfferedGpu, OwnProcessesAreNotUsedByOthers) {
  // 140 GiB, 30 used of which 20 by this worker's rpc-server and llama-server.
  const GpuInfo g = offered_gpu(gpu(140, 30), 20 * kGiB, 0);
  EXPECT_EQ(g.vram_bytes, 140 * kGiB);
  EXPECT_EQ(g.used_bytes, 10 * kGiB);
  // A measurement that lags the driver never makes "used" negative.
  EXPECT_EQ(offered_gpu(gpu(140, 5), 20 * kGiB, 0).used_bytes, 0u);
}

TEST(OfferedGpu, ASliceOfASharedGpu) {
  // Three workers share one 140 GiB GPU, 8 GiB each: the others' 16 GiB leave this slice whole.
  GpuInfo g = offered_gpu(gpu(140, 24), 8 * kGiB, 8 * kGiB);
  EXPECT_EQ(g.vram_bytes, 8 * kGiB);
  EXPECT_EQ(g.used_bytes, 0u);
  // Nearly full (136 used, none of it ours): only 4 GiB of the slice can still be had.
  g = offered_gpu(gpu(140, 136), 0, 8 * kGiB);
  EXPECT_EQ(g.used_bytes, 4 * kGiB);
  // A slice larger than the GPU is the GPU.
  EXPECT_EQ(offered_gpu(gpu(24, 0), 0, 48 * kGiB).vram_bytes, 24 * kGiB);
}

TEST(HostInfo, CoresFollowTheAffinity) {
  cpu_set_t all;
  ASSERT_EQ(sched_getaffinity(0, sizeof all, &all), 0);
  EXPECT_EQ(host_info().cores, static_cast<std::uint32_t>(CPU_COUNT(&all)));
  int first = 0;
  while (!CPU_ISSET(first, &all)) ++first;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  const std::uint32_t cores = host_info().cores;
  ASSERT_EQ(sched_setaffinity(0, sizeof all, &all), 0);
  EXPECT_EQ(cores, 1u);
}

}  // namespace
}  // namespace ggfleet::worker
