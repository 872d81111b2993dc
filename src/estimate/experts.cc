#include "estimate/experts.h"

#include <regex>
#include <stdexcept>

#include "estimate/estimate.h"

namespace ggfleet::estimate {
namespace {

// llama.cpp's LLM_FFN_EXPS_REGEX, which its --cpu-moe and --n-cpu-moe rules use (is_expert_tensor
// answers the same question for a name without a regex).
constexpr const char* kExpertsPattern = R"(\.ffn_(up|down|gate|gate_up)_(ch|)exps)";

struct Rule {
  std::string text;
  std::regex pattern;
  std::int32_t target = kExpertsOnHost;  // kExpertsOnHost or a device index
};

std::vector<Rule> parse_rules(const ExpertOverrides& o, const Layout& layout) {
  std::vector<Rule> rules;
  for (const std::string& value : o.rules) {
    std::size_t start = 0;
    while (start <= value.size()) {
      const std::size_t comma = value.find(',', start);
      const std::string one =
          value.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      start = comma == std::string::npos ? value.size() + 1 : comma + 1;
      const std::size_t eq = one.find('=');  // the first, as llama.cpp splits
      if (one.empty() || eq == std::string::npos || eq == 0 || eq + 1 == one.size())
        throw LayoutError("--override-tensor rule '" + one + "' is not PATTERN=BUFFER");
      Rule r;
      r.text = one;
      try {
        r.pattern = std::regex(one.substr(0, eq));
      } catch (const std::regex_error& e) {
        throw LayoutError("--override-tensor rule '" + one + "': bad pattern (" + e.what() + ")");
      }
      const std::string buffer = one.substr(eq + 1);
      if (buffer != "CPU") {
        r.target = -3;
        std::string names = "CPU";
        for (std::size_t d = 0; d < layout.devices.size(); ++d) {
          names += ", " + layout.devices[d].name;
          if (layout.devices[d].name == buffer) r.target = static_cast<std::int32_t>(d);
        }
        if (r.target == -3) {
          throw LayoutError("--override-tensor rule '" + one + "': no buffer " + buffer +
                            " (this layout has " + names + ")");
        }
      }
      rules.push_back(std::move(r));
    }
  }
  if (o.cpu_moe) {
    rules.push_back({"--cpu-moe", std::regex(kExpertsPattern), kExpertsOnHost});
  }
  for (std::uint32_t b = 0; b < o.n_cpu_moe; ++b) {
    rules.push_back({"--n-cpu-moe " + std::to_string(o.n_cpu_moe),
                     std::regex("blk\\." + std::to_string(b) + kExpertsPattern), kExpertsOnHost});
  }
  return rules;
}

}  // namespace

void place_experts(const ModelMemory& model, const ExpertOverrides& o, Layout& layout) {
  layout.experts.clear();
  if (o.empty()) return;
  const std::vector<Rule> rules = parse_rules(o, layout);
  layout.experts.assign(model.blocks(), kExpertsWithBlock);
  // Per block, where its first expert tensor went, to catch a block split apart.
  std::vector<std::string> first_expert(model.blocks());
  for (const TensorMemory& t : model.tensors) {
    const Rule* hit = nullptr;
    for (const Rule& r : rules) {
      if (std::regex_search(t.name, r.pattern)) {
        hit = &r;
        break;
      }
    }
    const bool block = t.layer >= 0 && static_cast<std::uint32_t>(t.layer) < model.blocks();
    if (hit && !(t.expert && block)) {
      throw LayoutError("'" + hit->text + "' would move " + t.name +
                        ": ggfleet estimates moves of routed-expert tensors (ffn_*_exps) only");
    }
    if (!t.expert || !block) continue;
    const auto b = static_cast<std::size_t>(t.layer);
    const std::int32_t where = hit ? hit->target : kExpertsWithBlock;
    if (first_expert[b].empty()) {
      first_expert[b] = t.name;
      layout.experts[b] = where;
    } else if (layout.experts[b] != where) {
      throw LayoutError("the rules put " + first_expert[b] + " and " + t.name +
                        " in different places: ggfleet estimates a block's experts together");
    }
  }
}

std::vector<std::uint32_t> host_expert_blocks(const Layout& layout) {
  std::vector<std::uint32_t> out;
  for (std::uint32_t b = 0; b < layout.experts.size(); ++b)
    if (layout.experts[b] == kExpertsOnHost) out.push_back(b);
  return out;
}

std::vector<std::string> host_expert_args(const std::vector<std::uint32_t>& blocks) {
  if (blocks.empty()) throw std::invalid_argument("host_expert_args: no blocks");
  if (blocks.back() + 1 == blocks.size()) return {"--n-cpu-moe", std::to_string(blocks.size())};
  std::string alternatives;
  for (std::uint32_t b : blocks)
    alternatives += (alternatives.empty() ? "" : "|") + std::to_string(b);
  return {"-ot", "blk\\.(" + alternatives + ")" + kExpertsPattern + "=CPU"};
}

}  // namespace ggfleet::estimate
