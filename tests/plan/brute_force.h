// The exhaustive search of the planner's space for small fleets, as the oracle the planner's
// quality tests compare against (tests/plan/plan_test.cc). Not part of the library.
#pragma once

#include <optional>

#include "cluster/cluster.h"
#include "estimate/model_memory.h"
#include "perf/perf.h"
#include "plan/plan.h"

namespace ggfleet::plan {

// Every main, every number of blocks on every usable GPU and the CPU, every choice of the device
// holding the output, each layout checked and predicted as the planner does; the fastest
// predicted generation. For small fleets (at most 6 usable GPUs). Returns nullopt when nothing
// fits. Throws PlanError above 6 GPUs and for the requests make_plan refuses.
std::optional<Candidate> brute_force(
    const estimate::ModelMemory& model, const cluster::Cluster& cluster, const Request& request,
    const perf::Constants& constants = perf::calibrated_constants());

}  // namespace ggfleet::plan
