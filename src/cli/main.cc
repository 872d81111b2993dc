// ggfleet: one binary, `ggfleet <verb>`.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>

#include "cli/inspect.h"
#include "gguf/reader.h"
#include "model/profile.h"
#include "model/synth.h"

namespace {

using namespace ggfleet;

int run_inspect(const std::string& path, bool as_json) {
  const gguf::Model model = gguf::Model::open(path);
  const model::Profile p = model::profile(model);
  if (as_json) {
    std::cout << cli::inspect_json(model, p).dump(2, ' ', false,
                                                  nlohmann::json::error_handler_t::replace)
              << "\n";
  } else {
    std::cout << cli::inspect_text(model, p);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ggfleet: run GGUF models on a fleet of GPU machines with llama.cpp"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ggfleet 0.1.0");

  std::string inspect_path;
  bool inspect_as_json = false;
  CLI::App* inspect =
      app.add_subcommand("inspect", "Summarise a GGUF model (file, first shard or URL)");
  inspect
      ->add_option("model", inspect_path, "GGUF file, any shard of a split model, or http(s) URL")
      ->required();
  inspect->add_flag("--json", inspect_as_json, "Print stable JSON for tools");

  std::string preset;
  std::string out_dir;
  std::string fill = "sparse";
  std::string type_name;
  model::SynthOptions so;
  bool list_presets = false;
  CLI::App* synth =
      app.add_subcommand("synth", "Write a synthetic GGUF model with real shapes; prints its path");
  synth->add_option("preset", preset, "Preset name (see --list)");
  synth->add_option("--out", out_dir, "Directory to write into")->default_val(".");
  synth->add_flag("--list", list_presets, "List presets and exit");
  synth->add_option("--blocks", so.blocks, "Number of transformer blocks");
  synth->add_option("--embd", so.embedding, "Embedding width (multiple of 256)");
  synth->add_option("--vocab", so.vocab, "Vocabulary size");
  synth->add_option("--type", type_name, "One ggml type for every quantized weight (e.g. q4_0)");
  synth->add_option("--fill", fill, "Tensor data: zero | random | sparse")
      ->check(CLI::IsMember({"zero", "random", "sparse"}));
  synth->add_option("--shards", so.shards, "Split into this many files");
  synth->add_option("--seed", so.seed, "Seed for --fill random");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (inspect->parsed()) return run_inspect(inspect_path, inspect_as_json);
    if (synth->parsed()) {
      if (list_presets || preset.empty()) {
        for (const auto& p : model::presets()) std::cout << p.name << "\t" << p.description << "\n";
        return preset.empty() && !list_presets ? 2 : 0;
      }
      if (!type_name.empty()) {
        so.type = gguf::type_from_name(type_name);
        if (!so.type) {
          std::cerr << "ggfleet: unknown ggml type '" << type_name << "'\n";
          return 2;
        }
      }
      so.fill = fill == "zero"     ? gguf::Fill::kZero
                : fill == "random" ? gguf::Fill::kRandom
                                   : gguf::Fill::kSparse;
      const auto paths = model::synth(preset, out_dir, so);
      std::cout << paths.front() << "\n";
      return 0;
    }
  } catch (const std::exception& e) {
    std::cerr << "ggfleet: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
