// Cluster files and the GPU catalog: the seed case parses with the right free memory, units are
// exact, and every bad input is an error naming the line and the field.
#include "cluster/cluster.h"

#include <gtest/gtest.h>

#include "cluster/catalog.h"
#include "cluster/units.h"

namespace ggfleet::cluster {
namespace {

TEST(Catalog, KnowsTheRequiredGpusByTheirReportedNames) {
  for (const char* name :
       {"Tesla T4", "NVIDIA L4", "NVIDIA A10", "NVIDIA L40S", "NVIDIA A40",
        "NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 4080", "NVIDIA GeForce RTX 4090",
        "NVIDIA GeForce RTX 5090", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-SXM4-80GB",
        "NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA B200",
        "AMD Instinct MI300X", "Apple M2 Ultra", "Apple M3 Ultra"}) {
    const auto spec = find_gpu(name);
    ASSERT_TRUE(spec) << name;
    EXPECT_GT(spec->memory_bandwidth_bytes_per_s, 2e11) << name;
    EXPECT_GT(spec->fp16_flops, 1e13) << name;
  }
  // Short model numbers match whole tokens only.
  EXPECT_EQ(find_gpu("NVIDIA L40S")->name, "NVIDIA L40S");
  EXPECT_EQ(find_gpu("NVIDIA L4")->name, "NVIDIA L4");
  EXPECT_EQ(find_gpu("NVIDIA A100-SXM4-40GB")->name, "NVIDIA A100 40GB");
  EXPECT_EQ(find_gpu("NVIDIA H100 80GB HBM3")->name, "NVIDIA H100 SXM");
  EXPECT_EQ(find_gpu("NVIDIA H200")->memory_bandwidth_bytes_per_s, 4.8e12);
  EXPECT_FALSE(find_gpu("NVIDIA Quantum 9000"));
}

TEST(Units, BandwidthAndDuration) {
  EXPECT_DOUBLE_EQ(parse_bandwidth("180GB/s"), 180e9);
  EXPECT_DOUBLE_EQ(parse_bandwidth("10Gbit/s"), 1.25e9);
  EXPECT_DOUBLE_EQ(parse_bandwidth("25 Gbps"), 3.125e9);
  EXPECT_DOUBLE_EQ(parse_bandwidth("1GiB/s"), 1073741824.0);
  EXPECT_DOUBLE_EQ(parse_duration("0.2ms"), 0.2e-3);
  EXPECT_DOUBLE_EQ(parse_duration("50us"), 50e-6);
  EXPECT_DOUBLE_EQ(parse_duration("1s"), 1.0);
  EXPECT_THROW(parse_bandwidth("10 furlongs/s"), UnitError);
  EXPECT_THROW(parse_bandwidth("-1GB/s"), UnitError);
  EXPECT_THROW(parse_duration("5"), UnitError);
}

TEST(Cluster, SeedCase) {
  const Cluster c =
      load_cluster(std::string(GGFLEET_SOURCE_DIR) + "/tests/fixtures/seed-cluster.yaml");
  ASSERT_EQ(c.workers.size(), 2u);
  const Worker& w1 = c.workers[0];
  EXPECT_EQ(w1.name, "worker1");
  ASSERT_EQ(w1.gpus.size(), 2u);
  EXPECT_EQ(w1.gpus[0].vram_bytes, 48ull << 30);  // from the catalog
  EXPECT_EQ(w1.free_vram_bytes(0), 47ull << 30);
  EXPECT_DOUBLE_EQ(w1.gpus[0].memory_bandwidth_bytes_per_s, 864e9);
  EXPECT_DOUBLE_EQ(w1.cpu.memory_bandwidth_bytes_per_s, 180e9);
  EXPECT_EQ(w1.free_ram_bytes(), (512ull - 16 - 2) << 30);
  EXPECT_EQ(c.find("worker2")->gpus.size(), 1u);
  EXPECT_DOUBLE_EQ(c.link("worker2", "worker1").bandwidth_bytes_per_s, 25e9 / 8);
  EXPECT_DOUBLE_EQ(c.link("worker1", "worker2").latency_s, 0.05e-3);
  EXPECT_EQ(c.find("nobody"), nullptr);
}

TEST(Cluster, ExplicitNumbersOverrideTheCatalog) {
  const Cluster c = parse_cluster(R"(
workers:
  - name: w
    gpus:
      - {name: NVIDIA L40S, vram: 46GiB, memory_bandwidth: 800GB/s}
      - {name: Custom Accelerator X, vram: 64GiB, memory_bandwidth: 2TB/s, fp16: 400TFLOPS}
)");
  EXPECT_EQ(c.workers[0].gpus[0].vram_bytes, 46ull << 30);
  EXPECT_DOUBLE_EQ(c.workers[0].gpus[0].memory_bandwidth_bytes_per_s, 800e9);
  EXPECT_DOUBLE_EQ(c.workers[0].gpus[0].fp16_flops, 362e12);
  EXPECT_DOUBLE_EQ(c.workers[0].gpus[1].fp16_flops, 400e12);
}

void expect_error(const std::string& yaml, const std::string& text) {
  try {
    parse_cluster(yaml, "c.yaml");
    ADD_FAILURE() << "no error for:\n" << yaml;
  } catch (const ClusterError& e) {
    EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind("c.yaml:", 0), 0u) << e.what();
  }
}

TEST(Cluster, BadInputIsAClearError) {
  expect_error("workers:\n  - name: w\n    gpus: [{name: NVIDIA Mystery 1}]\n",
               "not in the catalog");
  expect_error("workers:\n  - name: w\n  - name: w\n", "listed twice");
  expect_error("workers:\n  - name: w\n    gpus: [{name: NVIDIA L40S, vram: 48 parsecs}]\n",
               "unknown unit");
  expect_error("workers:\n  - name: w\n    gpus: [{name: NVIDIA L40S, vram: -48GiB}]\n",
               "negative");
  expect_error("workers:\n  - name: w\n    colour: blue\n", "unknown key 'colour'");
  expect_error("workers:\n  - name: w\nnetwork:\n  links: [{between: [w, x]}]\n",
               "unknown worker 'x'");
  expect_error("workers: []\n", "non-empty");
  expect_error("workers:\n  - name: w\n    cpu: {cores: -4}\n", "from 1 to 65536");
  // Numbers that would wrap or mean nothing: 2^32 + 1 cores, zero bandwidths.
  expect_error("workers:\n  - name: w\n    cpu: {cores: 4294967297}\n", "from 1 to 65536");
  expect_error("workers:\n  - name: w\n    cpu: {memory_bandwidth: 0GB/s}\n",
               "memory_bandwidth must be more than zero");
  expect_error(
      "workers:\n  - name: a\n  - name: b\nnetwork:\n  links:\n    - {between: [a, b], "
      "bandwidth: 0Gbit/s}\n",
      "bandwidth must be more than zero");
  expect_error(
      "workers:\n  - name: w\n    gpus: [{name: X, vram: 8GiB, memory_bandwidth: "
      "1TB/s, fp16: 0}]\n",
      "fp16 must be more than zero");
  expect_error("workers: [\n", "c.yaml:");
  expect_error("workers:\n  - name: w\n    gpus: [{name: NVIDIA L40S, used: 50GiB}]\n",
               "used exceeds vram");
}

}  // namespace
}  // namespace ggfleet::cluster

namespace ggfleet::cluster {
namespace {

TEST(Cluster, GpuAddresses) {
  const std::optional<GpuAddress> a = parse_gpu_address("worker1:3");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->worker, "worker1");
  EXPECT_EQ(a->gpu, 3u);
  const std::optional<GpuAddress> v6 = parse_gpu_address("fe80::1:0");  // the last colon splits
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->worker, "fe80::1");
  EXPECT_EQ(v6->gpu, 0u);
  for (const char* bad : {"", "worker1", ":0", "worker1:", "worker1:-1", "worker1:1x",
                          "worker1:100000", "worker1:99999999999999999999"})
    EXPECT_FALSE(parse_gpu_address(bad)) << bad;
}

// A worker's reported JSON and the same worker in a cluster file read alike (one parser).
TEST(Cluster, ReportedJsonReadsAsTheClusterFile) {
  const Cluster file = parse_cluster(R"(
workers:
  - name: w1
    address: 10.0.0.1
    labels: {zone: a}
    cpu: {cores: 16, memory_bandwidth: 80GB/s}
    ram: {total: 64GiB, used: 4GiB}
    reserved: {vram: 1GiB}
    gpus:
      - {name: NVIDIA L40S, used: 2GiB}
)");
  const nlohmann::json reported = nlohmann::json::parse(R"({
    "cpu": {"cores": 16, "memory_bandwidth": 80000000000},
    "ram": {"total": 68719476736, "used": 4294967296},
    "reserved": {"vram": 1073741824},
    "gpus": [{"name": "NVIDIA L40S", "vram": 48305799168, "used": 2147483648}],
    "simulated": false})");
  Worker live = worker_from_json("w1", "10.0.0.1", {{"zone", "a"}}, reported);
  const Worker& w = file.workers[0];
  EXPECT_EQ(live.cpu.cores, w.cpu.cores);
  EXPECT_DOUBLE_EQ(live.cpu.memory_bandwidth_bytes_per_s, w.cpu.memory_bandwidth_bytes_per_s);
  EXPECT_EQ(live.ram_bytes, w.ram_bytes);
  EXPECT_EQ(live.reserved_vram_bytes, w.reserved_vram_bytes);
  EXPECT_EQ(live.labels, w.labels);
  ASSERT_EQ(live.gpus.size(), 1u);
  EXPECT_EQ(live.gpus[0].used_bytes, w.gpus[0].used_bytes);
  EXPECT_DOUBLE_EQ(live.gpus[0].int8_ops, w.gpus[0].int8_ops);
  // What a cluster file refuses, a report is refused for, naming the worker and the field.
  try {
    worker_from_json("w2", "", nlohmann::json::object(),
                     nlohmann::json::parse(R"({"gpus": [{"name": "Mystery"}]})"));
    FAIL() << "an unknown GPU without numbers was accepted";
  } catch (const ClusterError& e) {
    EXPECT_NE(std::string(e.what()).find("worker w2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not in the catalog"), std::string::npos) << e.what();
  }
  EXPECT_THROW(worker_from_json("w3", "", {}, nlohmann::json::parse(R"({"gpu": []})")),
               ClusterError);
}

}  // namespace
}  // namespace ggfleet::cluster
