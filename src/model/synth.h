// Synthetic GGUF models with the real tensor shapes, types and metadata of published models, and a
// small SentencePiece-style tokenizer that llama.cpp accepts, so llama-server and llama-bench load
// them. The machines here cannot download models: these stand in for them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/writer.h"

namespace ggfleet::model {

struct SynthOptions {
  std::optional<std::uint32_t> blocks;     // fewer (or more) transformer blocks
  std::optional<std::uint64_t> embedding;  // other embedding width (heads scale with it)
  std::optional<gguf::GgmlType> type;      // one type for every quantized weight
  std::optional<std::uint32_t> shards;     // split into this many files
  std::optional<std::uint64_t> vocab;      // other vocabulary size
  gguf::Fill fill = gguf::Fill::kSparse;
  std::uint64_t seed = 1;
};

struct PresetInfo {
  std::string name;
  std::string description;
};

// The presets, e.g. "llama3-8b-q4_0", "deepseek-r1-ud-iq2_xxs".
std::vector<PresetInfo> presets();

// The GGUF content of `preset` with `options` applied (no file I/O).
// Throws std::invalid_argument for an unknown preset or impossible overrides.
gguf::GgufSpec synth_spec(std::string_view preset, const SynthOptions& options);

// Writes `preset` under `out_dir` (created if missing) as "<preset>.gguf", or its shards.
// Returns the paths written; the first is what llama.cpp's -m takes.
std::vector<std::string> synth(std::string_view preset, const std::string& out_dir,
                               const SynthOptions& options);

}  // namespace ggfleet::model
