// The score on synthetic evaluated layouts: the winner does not depend on the order the layouts
// were evaluated in, for both policies, and each point of the key decides where it should.
#include "plan/score.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "cluster/cluster.h"

namespace ggfleet::plan {
namespace {

struct Layouts {
  std::vector<cluster::Worker> workers;
  std::vector<Eval> evals;

  Layouts() {
    for (const char* name : {"w1", "w2", "w3", "w4"}) {
      cluster::Worker w;
      w.name = name;
      workers.push_back(w);
    }
  }
  const cluster::Worker* worker(const std::string& name) const {
    for (const cluster::Worker& w : workers) {
      if (w.name == name) return &w;
    }
    return nullptr;
  }
  // A layout with `gpus` devices of its main from GPU `first` on, `rpc` of them counted remote.
  void add(const std::string& main, double load, std::size_t gpus, std::uint32_t rpc, double tg,
           double pp, std::uint32_t first = 0) {
    Eval e;
    e.main = worker(main);
    for (std::uint32_t i = 0; i < gpus; ++i) {
      e.devs.push_back(evals.size() * 8 + i);
      e.places.push_back({main, first + i});
      e.layout.tensor_split.push_back(1);
    }
    e.layout.gpu_layers = static_cast<std::int32_t>(gpus);
    e.load = load;
    e.remote_devices = rpc;
    e.tg = tg;
    e.pp = pp;
    evals.push_back(e);
  }
};

// The winner's index for the layouts in many evaluation orders; fails when two orders disagree.
std::size_t winner_in_every_order(const Layouts& l, const Request& r) {
  std::vector<const Eval*> order;
  for (const Eval& e : l.evals) order.push_back(&e);
  std::mt19937 rng(20261201);
  const Eval* first = nullptr;
  for (int round = 0; round < 500; ++round) {
    if (round == 1) std::reverse(order.begin(), order.end());
    if (round > 1) std::shuffle(order.begin(), order.end(), rng);
    const Eval* w = pick_layout(order, r);
    if (first == nullptr) first = w;
    EXPECT_EQ(w, first) << "evaluation order " << round << " picks another layout";
  }
  return static_cast<std::size_t>(first - l.evals.data());
}

// A: the least loaded tie; B within the load band of A with fewer GPUs; C within the band of B
// but not of A, with fewer still. The pairwise rule this order replaces (a load difference over
// 0.02 decides, else fewer GPUs) picked C when A, B, C came in that order and A when they came
// C, B, A. Now the band is measured from the best load among the ties: A and B are in it, C is
// not, and B wins on fewer GPUs whatever the order.
Layouts three_loads_and_rivals() {
  Layouts l;
  l.add("w1", 0.100, 3, 0, 100.0, 1000);    // 0 A
  l.add("w2", 0.115, 2, 0, 99.5, 1000);     // 1 B: the spread winner
  l.add("w3", 0.130, 1, 0, 99.0, 1000);     // 2 C: the binpack winner
  l.add("w4", 0.050, 1, 0, 97.0, 5000);     // 3 not a tie: 97 * 1.02 < 100
  l.add("w1", 0.105, 2, 1, 99.8, 1200);     // 4 like B with an RPC server
  l.add("w3", 0.111, 2, 0, 99.9, 900);      // 5 like B with a slower prompt
  l.add("w2", 0.112, 2, 0, 98.5, 1000);     // 6 like B with a slower generation
  l.add("w2", 0.115, 2, 0, 99.5, 1000, 1);  // 7 B on later GPUs: the device list decides
  // 8: B with another main and a prompt speed one rounding step higher: not a real difference,
  // the main's name decides.
  l.add("w3", 0.115, 2, 0, 99.5, std::nextafter(1000.0, 2000.0));
  return l;
}

TEST(PlanScore, TheWinnerDoesNotDependOnTheEvaluationOrder) {
  const Layouts l = three_loads_and_rivals();
  Request r;
  r.policy = Policy::kSpread;
  EXPECT_EQ(winner_in_every_order(l, r), 1u);
  // Binpack: the band of the most loaded tie (C, 0.13) holds B, C and 5 to 8; C has one GPU.
  r.policy = Policy::kBinpack;
  EXPECT_EQ(winner_in_every_order(l, r), 2u);
  // No tolerance: only the fastest is a tie.
  r.tie_tolerance = 0;
  EXPECT_EQ(winner_in_every_order(l, r), 0u);
  EXPECT_EQ(pick_layout({}, r), nullptr);
}

TEST(PlanScore, EachPointOfTheKeyDecidesInItsTurn) {
  Request r;  // spread, tolerance 0.02
  auto winner = [&](const Layouts& l) { return winner_in_every_order(l, r); };
  Layouts fewer_gpus;
  fewer_gpus.add("w1", 0.10, 2, 0, 100, 1000);
  fewer_gpus.add("w2", 0.11, 1, 0, 99, 900);
  EXPECT_EQ(winner(fewer_gpus), 1u);
  Layouts fewer_rpc;
  fewer_rpc.add("w1", 0.10, 2, 1, 100, 1000);
  fewer_rpc.add("w2", 0.11, 2, 0, 99, 900);
  EXPECT_EQ(winner(fewer_rpc), 1u);
  Layouts faster_prompt;
  faster_prompt.add("w1", 0.10, 2, 0, 100, 1000);
  faster_prompt.add("w2", 0.11, 2, 0, 99, 1100);
  EXPECT_EQ(winner(faster_prompt), 1u);
  Layouts faster_generation;
  faster_generation.add("w1", 0.10, 2, 0, 99, 1000);
  faster_generation.add("w2", 0.11, 2, 0, 100, 1000);
  EXPECT_EQ(winner(faster_generation), 1u);
  // All else equal, the policy's load itself: spread the less loaded, binpack the more.
  Layouts load;
  load.add("w1", 0.11, 2, 0, 100, 1000);
  load.add("w2", 0.10, 2, 0, 100, 1000);
  EXPECT_EQ(winner(load), 1u);
  r.policy = Policy::kBinpack;
  EXPECT_EQ(winner(load), 0u);
  r.policy = Policy::kSpread;
  // A clear load difference (outside the band) beats fewer GPUs and a faster prompt.
  Layouts clear_load;
  clear_load.add("w1", 0.10, 3, 1, 99, 900);
  clear_load.add("w2", 0.15, 1, 0, 100, 1000);
  EXPECT_EQ(winner(clear_load), 0u);
  r.policy = Policy::kBinpack;
  EXPECT_EQ(winner(clear_load), 1u);
}

}  // namespace
}  // namespace ggfleet::plan
