// The score: which of the evaluated layouts a replica gets (internal to src/plan and its tests).
//
// Promises: a total order over the layouts, so the winner does not depend on the order they
// were evaluated in. best_tg is the best predicted generation speed among them; the ties are the
// layouts with tg * (1 + tie_tolerance) >= best_tg, and one of them wins. Among the ties, the
// first difference of this key decides:
//   0. a main whose download cache holds the model's files (Request::model_files) first: it
//      starts without a download;
//   1. the placement policy: spread prefers the least loaded layouts (load: the highest memory
//      utilisation among the workers a layout uses, after it), binpack the most loaded; loads
//      within kLoadBand of the best load among the ties count as equal, so that a load
//      difference decides only when it is clear (outside the band: by load, the policy's way);
//   2. fewer GPUs;
//   3. fewer RPC servers (a quicker start);
//   4. the higher prompt speed;
//   5. the higher generation speed;
//   6. the policy's load itself (spread: lower, binpack: higher), band or not;
//   7. the main worker's name, then the devices (worker and GPU, llama.cpp's order), the split
//      and -ngl: a deterministic last word between layouts that differ only there.
// Speeds and loads compare to about 9 significant digits, so that floating-point rounding does
// not decide. Layouts equal in all of these are the same layout.
#pragma once

#include <vector>

#include "plan/eval.h"
#include "plan/plan.h"

namespace ggfleet::plan {

// Loads (fractions of memory) this close to the best count as equal for the policy.
constexpr double kLoadBand = 0.02;

// The winner among `layouts`; nullptr when there are none.
const Eval* pick_layout(const std::vector<const Eval*>& layouts, const Request& request);

}  // namespace ggfleet::plan
