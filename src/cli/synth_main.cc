// ggfleet-synth PRESET OUT_DIR [BLOCKS]: writes a sparse synthetic preset and prints its path.
// The same models as `ggfleet synth`, from a static binary with no other dependencies.
#include <cstdlib>
#include <iostream>

#include "model/synth.h"

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::cerr << "usage: ggfleet-synth PRESET OUT_DIR [BLOCKS]\n";
    return 2;
  }
  try {
    ggfleet::model::SynthOptions o;
    if (argc == 4) o.blocks = static_cast<std::uint32_t>(std::strtoul(argv[3], nullptr, 10));
    std::cout << ggfleet::model::synth(argv[1], argv[2], o).front() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "ggfleet-synth: " << e.what() << "\n";
    return 1;
  }
}
