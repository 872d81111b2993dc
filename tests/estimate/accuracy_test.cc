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

// Calls `check(case, llama.cpp's buffers, ours)` for every case of `cases` with a log in
// bench/data/`data` (the matrix's 3-device cases were not run: the GPU machine had 2 GPUs);
// returns how many.
template <class Check>
std::size_t for_each_h200_log(const std::vector<Case>& cases, const std::string& data,
                              Check check) {
  test::TempDir dir;
  Models models;
  std::size_t logs = 0;
  for (const Case& c : cases) {
    const std::string log =
        read_all(std::string(GGFLEET_SOURCE_DIR) + "/bench/data/" + data + "/" + c.id() + ".log");
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
  const std::size_t checked = for_each_h200_log(
      cases(false), "cuda", [](const Case& c, const Measured& theirs, const Measured& ours) {
        expect_exact_components(c, theirs, ours);
      });
  EXPECT_GE(checked, 40u);
}

// Calls `check(case, row, verdict, llama.cpp's total, ours)` for the host and every device of
// every H200 case of `cases` with a log in `data` (a folder under bench/data); returns the rows.
template <class Check>
std::size_t for_each_h200_row(const std::vector<Case>& cases, const std::string& data,
                              Check check) {
  std::size_t rows = 0;
  for_each_h200_log(cases, data, [&](const Case& c, const Measured& theirs, const Measured& ours) {
    EXPECT_TRUE(theirs.ok) << c.id() << ": " << theirs.error;
    EXPECT_EQ(theirs.devices.size(), ours.devices.size()) << c.id();
    if (!theirs.ok || theirs.devices.size() != ours.devices.size()) return;
    auto one = [&](const std::string& name, const Usage& t, const Usage& o) {
      check(c, c.id() + " " + name, judge(o.total(), t.total()), t.total(), o.total());
      ++rows;
    };
    one("host", theirs.host, ours.host);
    for (std::size_t d = 0; d < ours.devices.size(); ++d)
      one(ours.device_names[d], theirs.devices[d], ours.devices[d]);
  });
  return rows;
}

// Every device of every H200 case meets the goal (max(2 %, 32 MiB), at most 1 % under). Fixed so
// far, each failing this test before: the device with the last block passes only the output rows
// (one per sequence) through that block's feed-forward part (llama3-8b's last of two GPUs was
// 11.8 % over, gemma3-27b's last of three 10.6 %); a device receives only the attention masks its
// own blocks read; the GPU that runs the CPU blocks' products (op offload) also runs their
// attention on copies of the host cache, and holds a copied expert tensor only during the
// feed-forward part (four sequences, 32k context: llama3-8b 4.2 % under, qwen3-30b-a3b 3.6 %
// over); with MLA the copies of the host cache go into the block the projected query freed when
// they fit (deepseek's CPU-only case was 10 % over), and a quantized latent cache needs no f16
// copy in the buffer. Then, read off ggml-alloc's traces (bench/data/cuda-alloc-trace): a dense
// CPU block's weights reach the GPU one product at a time above the hole of the attention output
// projection's copy (llama3 CPU-only 4.25 % under, gemma3 four sequences 1.09 % under); attention
// after an MoE block starts above its weighted expert outputs (qwen3 without flash attention
// 1.04 % under, with a quantized 32k cache 1.90 % under); MLA's flash attention on copies of a
// quantized cache holds their f16 forms in its output, above the query when it does not fit
// where the query parts were freed (deepseek 2.16 % under).
TEST(Accuracy, EveryDeviceMeetsTheGoalOnH200) {
  const std::size_t rows = for_each_h200_row(
      cases(false), "cuda",
      [](const Case& c, const std::string& row, const Verdict& v, double theirs, double ours) {
        if (c.n_cpu_moe > 0) return;  // ExpertsInHostRamOnH200
        EXPECT_TRUE(v.pass) << row << ": llama.cpp " << theirs << " MiB, ours " << ours << " MiB";
      });
  EXPECT_EQ(rows, 190u);  // bench/data/estimate_accuracy_cuda.txt: 140 dense, 50 expert rows
}

// Routed experts in host RAM (--n-cpu-moe) or on another GPU (-ot), one and two GPUs (two
// emulated on one H200 with GGML_CUDA_DEVICES=2, which reproduces the buffers of two real H200 in
// the three dense cases run both ways): every device meets the goal. Failed before: a GPU block
// whose experts a GPU runs from host copies (op offload) gets the down projection's weight and
// output right above the activation, not above all three products (qwen3 two GPUs 12 % over);
// where the GPU also runs whole CPU blocks their attention puts everything higher, as before.
TEST(Accuracy, ExpertsInHostRamOnH200) {
  std::size_t expert_rows = 0;
  for_each_h200_row(
      cases(false), "cuda",
      [&](const Case& c, const std::string& row, const Verdict& v, double theirs, double ours) {
        if (c.n_cpu_moe == 0) return;
        ++expert_rows;
        EXPECT_TRUE(v.pass) << row << ": llama.cpp " << theirs << " MiB, ours " << ours << " MiB";
      });
  EXPECT_EQ(expert_rows, 50u);  // 13 one-GPU cases (host, CUDA0), 8 two-GPU (host, CUDA0, CUDA1)
}

// Configurations none of the rules was read from (bench/data/cuda-held-out, other block counts,
// contexts, streams and offload levels): every row meets the goal but one, which the rules do not
// cover: dense CPU blocks with a quantized cache, where the rotation of the query for the quantized
// keys and flash attention's f16 copies leave a larger hole under the feed-forward part (12.6 MiB,
// 1.57 % under). It must stay that: if it passes, take it off; if it drifts further under, the
// rules got worse.
TEST(Accuracy, HeldOutCasesOnH200ButTheKnownMiss) {
  const std::string known_miss = "llama3-8b-q4_0_b6_c4096_q8_0_fa_np1_ngl3_d1 CUDA0";
  const std::size_t rows = for_each_h200_row(
      held_out_cases(), "cuda-held-out",
      [&](const Case&, const std::string& row, const Verdict& v, double theirs, double ours) {
        if (row == known_miss) {
          EXPECT_FALSE(v.pass) << row << " now meets the goal: take it off the known misses";
          EXPECT_GT(v.error_pct, -2.0) << row << ": further under than the 1.57 % measured";
          return;
        }
        EXPECT_TRUE(v.pass) << row << ": llama.cpp " << theirs << " MiB, ours " << ours << " MiB";
      });
  EXPECT_EQ(rows, 27u);
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
