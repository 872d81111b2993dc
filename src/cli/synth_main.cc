// ggfleet-synth PRESET OUT_DIR [BLOCKS [TYPE [FILL]]]: writes a synthetic preset, prints its path.
// BLOCKS 0 keeps the preset's block count; TYPE ("-": the preset's) overrides every quantized
// weight's type; FILL is sparse (default), zero or random (speed runs: zeros route every token to
// the same experts).
// The same models as `ggfleet synth`, from a static binary with no other dependencies.
#include <cstdlib>
#include <iostream>
#include <string>

#include "gguf/types.h"
#include "model/synth.h"

int main(int argc, char** argv) {
  if (argc < 3 || argc > 6) {
    std::cerr << "usage: ggfleet-synth PRESET OUT_DIR [BLOCKS [TYPE [FILL]]]\n";
    return 2;
  }
  try {
    ggfleet::model::SynthOptions o;
    if (argc >= 4 && std::strtoul(argv[3], nullptr, 10) > 0) {
      o.blocks = static_cast<std::uint32_t>(std::strtoul(argv[3], nullptr, 10));
    }
    if (argc >= 5 && std::string(argv[4]) != "-") {
      o.type = ggfleet::gguf::type_from_name(argv[4]);
      if (!o.type) throw std::invalid_argument(std::string("unknown type ") + argv[4]);
    }
    if (argc == 6) {
      const std::string fill = argv[5];
      if (fill == "zero") {
        o.fill = ggfleet::gguf::Fill::kZero;
      } else if (fill == "random") {
        o.fill = ggfleet::gguf::Fill::kRandom;
      } else if (fill != "sparse") {
        throw std::invalid_argument("unknown fill " + fill + " (sparse, zero or random)");
      }
    }
    std::cout << ggfleet::model::synth(argv[1], argv[2], o).front() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "ggfleet-synth: " << e.what() << "\n";
    return 1;
  }
}
