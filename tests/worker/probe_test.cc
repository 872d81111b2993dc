// ggfleet probe: the measurements are real (memory streamed, bytes sent over TCP), the output is a
// cluster-file fragment the cluster loader accepts, and failures name what failed.
#include "worker/probe.h"

#include <gtest/gtest.h>

#include <future>
#include <thread>

#include "cluster/cluster.h"
#include "test_util.h"

namespace ggfleet::worker {
namespace {

TEST(Probe, CpuBandwidthAndRamAreMeasured) {
  const CpuMeasurement m = measure_cpu(64ull << 20, 0, 0.2);
  EXPECT_GE(m.cores, 1u);
  EXPECT_EQ(m.threads_used, m.cores);
  EXPECT_GT(m.read_bandwidth_bytes_per_s, 1e8);  // even a busy VM streams more than 100 MB/s
  EXPECT_GT(m.ram_total_bytes, 0u);
  EXPECT_LE(m.ram_used_bytes, m.ram_total_bytes);
}

TEST(Probe, DeviceListOfLlamaCpp) {
  const std::string out =
      "Available devices:\n"
      "  CUDA0: NVIDIA H200 (143155 MiB, 142431 MiB free)\n"
      "  CUDA1: NVIDIA L40S (45596 MiB, 45000 MiB free)\n"
      "  RPC0: 10.0.0.2:50052 (45596 MiB, 45000 MiB free)\n"
      "  CPU: AMD EPYC (1000 MiB, 900 MiB free)\n";
  const std::vector<GpuMeasurement> gpus = parse_device_list(out);
  ASSERT_EQ(gpus.size(), 2u);
  EXPECT_EQ(gpus[0].device, "CUDA0");
  EXPECT_EQ(gpus[0].name, "NVIDIA H200");
  EXPECT_EQ(gpus[0].vram_bytes, 143155ull << 20);
  EXPECT_EQ(gpus[0].free_bytes, 142431ull << 20);
  EXPECT_EQ(gpus[1].name, "NVIDIA L40S");
  EXPECT_TRUE(parse_device_list("Available devices:\n  (none)\n").empty());
}

TEST(Probe, LinkToAPeerOverLoopback) {
  std::promise<void> listening;
  std::thread server(
      [&] { run_peer_server("127.0.0.1", 47411, 1, [&] { listening.set_value(); }); });
  listening.get_future().wait();
  const LinkMeasurement l = measure_peer("127.0.0.1:47411", 50, 8ull << 20);
  server.join();
  EXPECT_GT(l.latency_s, 0);
  EXPECT_LT(l.latency_s, 0.05);
  EXPECT_GT(l.bandwidth_bytes_per_s, 1e7);
}

TEST(Probe, UnreachablePeerIsAnError) {
  try {
    measure_peer("127.0.0.1:1", 1, 1);
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("peer 127.0.0.1:1: cannot connect"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(measure_peer("no-port", 1, 1), std::runtime_error);
  EXPECT_THROW(run_peer_server("not-an-ip", 47412, 1), std::runtime_error);
}

TEST(Probe, ReportIsAClusterFragment) {
  ProbeReport r;
  r.worker_name = "w1";
  r.cpu.cores = 16;
  r.cpu.read_bandwidth_bytes_per_s = 61.25e9;
  r.cpu.ram_total_bytes = 64ull << 30;
  r.cpu.ram_used_bytes = 1ull << 30;
  GpuMeasurement g;
  g.device = "CUDA0";
  g.name = "NVIDIA H200";
  g.vram_bytes = 143155ull << 20;
  g.free_bytes = 140000ull << 20;
  g.generation_tokens_per_s = 330;
  g.memory_bandwidth_bytes_per_s = 4.6e12;
  r.gpus.push_back(g);
  const cluster::Cluster c = cluster::parse_cluster(report_yaml(r), "probe");
  ASSERT_EQ(c.workers.size(), 1u);
  const cluster::Worker& w = c.workers[0];
  EXPECT_EQ(w.cpu.cores, 16u);
  EXPECT_NEAR(w.cpu.memory_bandwidth_bytes_per_s, 61.25e9, 1e6);
  EXPECT_EQ(w.ram_bytes, 64ull << 30);
  ASSERT_EQ(w.gpus.size(), 1u);
  EXPECT_NEAR(w.gpus[0].memory_bandwidth_bytes_per_s, 4.6e12, 1e9);
  EXPECT_EQ(w.gpus[0].used_bytes, (143155ull - 140000ull) << 20);
  EXPECT_GT(w.gpus[0].fp16_flops, 0);  // the rest from the catalog
}

TEST(Probe, CommandPrintsAFragmentTheLoaderAccepts) {
  const auto server = test::run_command(
      std::string(GGFLEET_BINARY) +
      " probe --serve 127.0.0.1:47413 --serve-count 1 > /dev/null & sleep 0.5; " + GGFLEET_BINARY +
      " probe --no-gpu --cpu-seconds 0.2 --buffer 64MiB --name w1" + " --peer 127.0.0.1:47413=w2");
  ASSERT_EQ(server.exit_code, 0) << server.output;
  const std::string& yaml = server.output;
  EXPECT_NE(yaml.find("between: [w1, w2]"), std::string::npos) << yaml;
  // The fragment plus the peer's own entry is a valid cluster file.
  const std::string with_peer =
      yaml.substr(0, yaml.find("network:")) + "  - name: w2\n" + yaml.substr(yaml.find("network:"));
  const cluster::Cluster c = cluster::parse_cluster(with_peer, "probe");
  EXPECT_EQ(c.workers.at(0).name, "w1");
  const cluster::Link l = c.link("w1", "w2");
  EXPECT_GT(l.bandwidth_bytes_per_s, 1e7);
  EXPECT_GT(l.latency_s, 0);
}

}  // namespace
}  // namespace ggfleet::worker
