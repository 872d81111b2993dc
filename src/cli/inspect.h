// `ggfleet inspect`: a model's summary as text for people and as stable JSON for tools.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "gguf/reader.h"
#include "model/profile.h"

namespace ggfleet::cli {

// The JSON document of `ggfleet inspect --json` (keys documented in README.md).
nlohmann::json inspect_json(const gguf::Model& model, const model::Profile& profile);

// The human-readable summary.
std::string inspect_text(const gguf::Model& model, const model::Profile& profile);

}  // namespace ggfleet::cli
