// ggfleet-synth PRESET OUT_DIR [BLOCKS [TYPE]]: writes a sparse synthetic preset, prints its path.
// BLOCKS 0 keeps the preset's block count; TYPE overrides every quantized weight's type.
// The same models as `ggfleet synth`, from a static binary with no other dependencies.
#include <cstdlib>
#include <iostream>

#include "gguf/types.h"
#include "model/synth.h"

int main(int argc, char** argv) {
  if (argc < 3 || argc > 5) {
    std::cerr << "usage: ggfleet-synth PRESET OUT_DIR [BLOCKS [TYPE]]\n";
    return 2;
  }
  try {
    ggfleet::model::SynthOptions o;
    if (argc >= 4 && std::strtoul(argv[3], nullptr, 10) > 0) {
      o.blocks = static_cast<std::uint32_t>(std::strtoul(argv[3], nullptr, 10));
    }
    if (argc == 5) {
      o.type = ggfleet::gguf::type_from_name(argv[4]);
      if (!o.type) throw std::invalid_argument(std::string("unknown type ") + argv[4]);
    }
    std::cout << ggfleet::model::synth(argv[1], argv[2], o).front() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "ggfleet-synth: " << e.what() << "\n";
    return 1;
  }
}
