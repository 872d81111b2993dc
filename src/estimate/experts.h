// Where routed-expert tensors go, from llama.cpp's own options: --cpu-moe, --n-cpu-moe N and
// --override-tensor (-ot) rules, turned into Layout::experts (one entry per block).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "estimate/layout.h"
#include "estimate/model_memory.h"

namespace ggfleet::estimate {

struct ExpertOverrides {
  bool cpu_moe = false;         // --cpu-moe: every block's experts in host RAM
  std::uint32_t n_cpu_moe = 0;  // --n-cpu-moe N: the experts of blocks 0..N-1 in host RAM
  // -ot values, "PATTERN=BUFFER[,PATTERN=BUFFER...]", checked before --cpu-moe / --n-cpu-moe (as
  // if given first on llama.cpp's command line); per tensor the first matching rule wins.
  std::vector<std::string> rules;
  bool empty() const { return !cpu_moe && n_cpu_moe == 0 && rules.empty(); }
};

// Sets layout.experts from `o` (layout.devices must be set; left empty when `o` is empty). A rule's
// PATTERN is an ECMAScript regex searched in tensor names, as llama.cpp does; BUFFER is "CPU" or
// one of the layout's device names ("CUDA0", "RPC1"). Throws LayoutError naming the rule for a
// malformed rule or regex, an unknown buffer, a rule that would move a tensor other than a routed
// expert (ggfleet models those moves only), or a block whose experts would be split apart.
void place_experts(const ModelMemory& model, const ExpertOverrides& o, Layout& layout);

// The blocks whose experts `layout.experts` keeps in host RAM, ascending.
std::vector<std::uint32_t> host_expert_blocks(const Layout& layout);

// llama.cpp options that keep the experts of `blocks` (ascending, not empty) in host RAM:
// {"--n-cpu-moe", "N"} when they are blocks 0..N-1, else one -ot rule
// {"-ot", "blk\.(3|4|9)\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU"}. place_experts() reads
// either back to the same Layout::experts.
std::vector<std::string> host_expert_args(const std::vector<std::uint32_t>& blocks);

}  // namespace ggfleet::estimate
