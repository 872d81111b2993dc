// The estimate against the real llama.cpp. Weights, KV cache and output buffers must equal what
// llama.cpp logs (to its 0.01 MiB print precision) on every device; compute buffers come from a
// fitted model, and their error is printed (bench/estimate_accuracy prints the whole table).
//  - CUDA: logs of llama-server runs on two H200s, kept in bench/data/cuda.
//  - CPU: a small part of the matrix, run live with CPU-backed RPC servers on 127.0.0.1.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <set>

#include "accuracy_cases.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"
#include "test_util.h"

namespace ggfleet::accuracy {
namespace {

// Below Linux's ephemeral range (32768+), so that other tests' outgoing connections never hold
// it; apart from every other test's ports. bench/estimate_accuracy uses 53090 by default.
constexpr int kPortBase = 30090;

void expect_exact_components(const Case& c, const Measured& theirs, const Measured& ours) {
  SCOPED_TRACE(c.id());
  ASSERT_TRUE(theirs.ok) << theirs.error;
  auto same = [](const Usage& t, const Usage& o, const std::string& who) {
    EXPECT_NEAR(o.weights_mib, t.weights_mib, 0.011) << who << " weights";
    EXPECT_NEAR(o.kv_mib, t.kv_mib, 0.011) << who << " KV";
    EXPECT_NEAR(o.output_mib, t.output_mib, 0.011) << who << " output";
    std::printf("  %-60s %-6s compute llama.cpp %8.2f ours %8.2f MiB\n", "", who.c_str(),
                t.compute_mib, o.compute_mib);
  };
  same(theirs.host, ours.host, "host");
  ASSERT_EQ(theirs.devices.size(), ours.devices.size());
  for (std::size_t d = 0; d < ours.devices.size(); ++d)
    same(theirs.devices[d], ours.devices[d], ours.device_names[d]);
}

class Models {
 public:
  const estimate::ModelMemory& get(const Case& c, const test::TempDir& dir) {
    const std::string key = c.preset + "-b" + std::to_string(c.blocks);
    auto it = memories_.find(key);
    if (it == memories_.end()) {
      model::SynthOptions o;
      o.blocks = c.blocks;
      paths_[key] = model::synth(c.preset, (dir.path() / key).string(), o).front();
      const gguf::Model m = gguf::Model::open(paths_[key]);
      it = memories_.emplace(key, estimate::ModelMemory::from(m, model::profile(m))).first;
    }
    return it->second;
  }
  const std::string& path(const Case& c) {
    return paths_.at(c.preset + "-b" + std::to_string(c.blocks));
  }

 private:
  std::map<std::string, estimate::ModelMemory> memories_;
  std::map<std::string, std::string> paths_;
};

// Calls `check(case, llama.cpp's buffers, ours)` for every case with a log in bench/data/cuda
// (the 3-device cases were not run: the GPU machine had 2 GPUs); returns how many.
template <class Check>
std::size_t for_each_h200_log(Check check) {
  const std::string data = std::string(GGFLEET_SOURCE_DIR) + "/bench/data/cuda";
  test::TempDir dir;
  Models models;
  std::size_t logs = 0;
  for (const Case& c : cases(false)) {
    const std::string log = read_all(data + "/" + c.id() + ".log");
    if (log.empty()) continue;
    const Measured theirs = parse_log(log, {}, std::max<std::uint32_t>(c.devices, 1));
    const Measured ours =
        predicted(estimate::estimate(models.get(c, dir), layout_for(c, true, 24ull << 30)));
    check(c, theirs, ours);
    ++logs;
  }
  return logs;
}

TEST(Accuracy, CudaLogsFromH200) {
  const std::size_t checked =
      for_each_h200_log([](const Case& c, const Measured& theirs, const Measured& ours) {
        expect_exact_components(c, theirs, ours);
      });
  EXPECT_GE(checked, 40u);
}

// Every device of every H200 case meets the goal (max(2 %, 32 MiB), at most 1 % under) except
// the rows named below, the known misses (the aim is at most five). Fixed so far, each failing
// this test before: the device with the last block passes only the output rows (one per
// sequence) through that block's feed-forward part (llama3-8b's last of two GPUs was 11.8 % over,
// gemma3-27b's last of three 10.6 %); a device receives only the attention masks its own blocks
// read; the GPU that runs the CPU blocks' products (op offload) also runs their attention on
// copies of the host cache, and holds a copied expert tensor only during the feed-forward part
// (four sequences, 32k context: llama3-8b 4.2 % under, qwen3-30b-a3b 3.6 % over); with MLA the
// copies of the host cache go into the block the projected query freed when they fit (deepseek's
// CPU-only case was 10 % over), and a quantized latent cache needs no f16 copy in the buffer.
TEST(Accuracy, EveryDeviceMeetsTheGoalOnH200ButTheKnownMisses) {
  const std::set<std::string> known_misses = {
      // Fragmentation of the compute buffer around the offloaded FFN (ggml-alloc's holes).
      "llama3-8b-q4_0_b4_c8192_f16_fa_np1_nglall_d0 CUDA0",
      "gemma3-27b-q4_k_m_b7_c32768_f16_fa_np4_ngl7_d2_2_1 CUDA0",
      // Without flash attention, and the f16 copies of a quantized 32k cache: holes again.
      "qwen3-30b-a3b-q4_k_m_b4_c8192_f16_nofa_np1_nglall_d1 CUDA0",
      "qwen3-30b-a3b-q4_k_m_b4_c32768_q8_0_fa_np1_nglall_d1 CUDA0",
      // MLA with a quantized 32k cache and four sequences, op offload of a CPU block: holes.
      "deepseek-r1-ud-iq2_xxs_b4_c32768_q8_0_fa_np4_ngl4_d2_2_1 CUDA0",
  };
  std::size_t checked = 0;
  for_each_h200_log([&](const Case& c, const Measured& theirs, const Measured& ours) {
    if (c.n_cpu_moe > 0) return;  // ExpertsInHostRamOnH200
    ASSERT_TRUE(theirs.ok) << c.id() << ": " << theirs.error;
    ASSERT_EQ(theirs.devices.size(), ours.devices.size()) << c.id();
    auto check = [&](const std::string& name, const Usage& t, const Usage& o) {
      const std::string row = c.id() + " " + name;
      const Verdict v = judge(o.total(), t.total());
      if (known_misses.count(row) > 0) {
        if (v.pass) std::printf("  known miss now meets the goal: %s\n", row.c_str());
        return;
      }
      EXPECT_TRUE(v.pass) << row << ": llama.cpp " << t.total() << " MiB, ours " << o.total()
                          << " MiB";
      ++checked;
    };
    check("host", theirs.host, ours.host);
    for (std::size_t d = 0; d < ours.devices.size(); ++d)
      check(ours.device_names[d], theirs.devices[d], ours.devices[d]);
  });
  EXPECT_EQ(checked + known_misses.size(), 140u);  // bench/data/estimate_accuracy_cuda.txt
}

// Routed experts in host RAM (--n-cpu-moe) or on another GPU (-ot), one and two GPUs (two
// emulated on one H200 with GGML_CUDA_DEVICES=2, which reproduces the buffers of two real H200 in
// the three dense cases run both ways): every device meets the goal but the row named below.
TEST(Accuracy, ExpertsInHostRamOnH200ButTheKnownMisses) {
  const std::set<std::string> known_misses = {
      // Over, not under (35 MiB, 12 %): the first of two GPUs runs every block's host experts
      // (op offload); ggml-alloc frees the gate and up outputs before the largest (down) tensor
      // arrives here, but not where the same GPU also holds whole CPU blocks.
      "qwen3-30b-a3b-q4_k_m_b4_c8192_f16_fa_np1_nglall_d2_1_1_cmoe4 CUDA0",
  };
  std::size_t checked = 0;
  for_each_h200_log([&](const Case& c, const Measured& theirs, const Measured& ours) {
    if (c.n_cpu_moe == 0) return;
    ASSERT_TRUE(theirs.ok) << c.id() << ": " << theirs.error;
    auto check = [&](const std::string& name, const Usage& t, const Usage& o) {
      const std::string row = c.id() + " " + name;
      const Verdict v = judge(o.total(), t.total());
      ++checked;
      if (known_misses.count(row) > 0) {
        EXPECT_GT(v.error_mib, 0) << row << ": a known miss is an over-estimate";
        return;
      }
      EXPECT_TRUE(v.pass) << row << ": llama.cpp " << t.total() << " MiB, ours " << o.total()
                          << " MiB";
    };
    check("host", theirs.host, ours.host);
    for (std::size_t d = 0; d < ours.devices.size(); ++d)
      check(ours.device_names[d], theirs.devices[d], ours.devices[d]);
  });
  EXPECT_EQ(checked, 50u);  // 13 one-GPU cases (host, CUDA0), 8 two-GPU cases (host, CUDA0, CUDA1)
}

TEST(Accuracy, CpuWithRpcServers) {
  const std::string bin = test::llama_cpp_dir() + "/bin";
  GGFLEET_REQUIRE_PATH(bin + "/llama-server");
  test::TempDir dir;
  Models models;
  for (const Case& c : cases(true)) {
    const estimate::ModelMemory& memory = models.get(c, dir);
    const std::string log =
        run_case(c, bin, models.path(c), (dir.path() / (c.id() + ".log")).string(), kPortBase);
    const Measured theirs = parse_log(log, rpc_endpoints(c, kPortBase), 0);
    const Measured ours = predicted(estimate::estimate(memory, layout_for(c, false, 24ull << 30)));
    expect_exact_components(c, theirs, ours);
    if (c.n_cpu_moe == 0) continue;
    // Experts in host RAM: the totals meet the goal too (the matrix is in bench/estimate_accuracy).
    for (std::size_t d = 0; d <= ours.devices.size() && d <= theirs.devices.size(); ++d) {
      const Usage& t = d == 0 ? theirs.host : theirs.devices[d - 1];
      const Usage& o = d == 0 ? ours.host : ours.devices[d - 1];
      EXPECT_TRUE(judge(o.total(), t.total()).pass)
          << c.id() << " " << (d == 0 ? "host" : ours.device_names[d - 1]) << ": llama.cpp "
          << t.total() << " MiB, ours " << o.total() << " MiB";
    }
  }
}

}  // namespace
}  // namespace ggfleet::accuracy
